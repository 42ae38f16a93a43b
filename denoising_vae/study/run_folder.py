"""The run folder: its lock, its configuration, its results file, the data it was made on, progress lines.

Everything a run keeps goes under ``--out``: ``config.json`` (the settings),
``results.json`` (every finished model), ``.lock`` (held while a run uses
the folder). Running the same command again resumes; a folder made with
other settings or other data is refused with one line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..core import files
from ..core.checks import UsageError
from ..data import input_read
from .config import StudyConfig
from .messages import warn
from .resources import check_memory




def prepare_out(out: Path, config: StudyConfig):
    """Create or reuse the run folder; refuse one made with another configuration."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--out {out} is not a writable folder ({error.strerror or error}); "
                         "choose another --out") from None
    stored_path = out / "config.json"
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as JSON lists, as stored
    defaults = json.loads(json.dumps(dataclasses.asdict(StudyConfig())))
    if stored_path.is_file():
        stored = files.read_json_object(stored_path)
        if stored is None:
            raise UsageError(f"--out {out} holds an unreadable config.json; choose another --out")
        # Asking for fewer or more models than last time is fine: results are per model; other
        # classical denoisers are measured again. A setting missing from an older config.json had its
        # default then.
        differing = [key for key in current if key not in ("models", "baselines")
                     and stored.get(key, defaults[key]) != current[key]]
        if differing:
            key = differing[0]
            raise UsageError(f"--out {out} holds a run made with {key}={stored.get(key, defaults[key])!r}, "
                             f"not {current[key]!r}; "
                             "choose another --out or repeat the original flags")
        current["models"] = list(dict.fromkeys(stored.get("models", []) + current["models"]))
    files.write_json(stored_path, current)


def read_results(path: Path):
    """The JSON object in ``path``; ``{}`` if it is absent. A damaged file is set aside as
    ``<name>.damaged`` (never deleted) with a warning, and ``{}`` returned: the caller rebuilds it."""
    if not path.exists():
        return {}
    data = files.read_json_object(path)
    if data is not None:
        return data
    kept = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, kept)
    except OSError:
        kept = path
    warn(f"{path} is unreadable (not a JSON object); kept as {kept.name} and rebuilt from the finished models")
    return {}


def data_description(source, train_images, test_images):
    """The data's entry in results.json: source, description, path, counts, the archive's verification,
    and ``digest``, SHA-256 of the images (16 hex digits) as the models saw them."""
    digest = hashlib.sha256()
    for images in (train_images, test_images):
        digest.update(np.ascontiguousarray(images).data)
    info = {"source": source.kind, "description": source.describe(), "path": source.path,
            "train": len(train_images), "test": len(test_images), "digest": digest.hexdigest()[:16]}
    if source.kind == "emnist":
        info.update(verified=source.verified, md5=source.md5)
    return info


def check_same_data(out, stored, current):
    """Refuse to join results on ``stored`` data (None: no results yet) with results on ``current`` data.

    Same source, path and counts are not enough: the images themselves must
    be the same (a changed synthetic generator or a replaced archive draws
    others under the same name). Results from before the digest was kept are
    accepted on the rest.
    """
    if stored is None:
        return
    if any(stored.get(key) != current.get(key) for key in ("source", "path", "train", "test")):
        raise UsageError(f"--out {out} holds results on other data ({stored.get('description')}); "
                         "choose another --out")
    if stored.get("digest", current["digest"]) != current["digest"]:
        raise UsageError(f"--out {out} holds results on other images of the same source "
                         f"({stored.get('description')}; the generator or the archive changed since); "
                         "choose another --out")


class OutLock:
    """An exclusive lock on ``out/.lock`` for as long as this run uses the folder.

    A second run on the same ``--out`` is refused at once. The lock is the
    operating system's (``flock``): it goes with the process, so a run that
    was killed (SIGKILL, power cut) never blocks the next one.
    """

    def __init__(self, out: Path):
        self.out, self.file = out, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not guarded
            return self
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.file = open(self.out / ".lock", "a+")
        except OSError as error:
            raise UsageError(f"--out {self.out} is not a writable folder ({error.strerror or error}); "
                             "choose another --out") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UsageError(f"--out {self.out} is in use by another run ({holder}); wait for it to finish "
                             "or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # releases the lock


def open_run(config, out: Path, processes):
    """Check memory, prepare the folder ``out`` (removing the temporary files of killed writers), read the
    data and the results so far.

    Returns ``(loaded, results, data_info)``: ``data_prepro.input_read``'s
    value, ``results.json``'s content (``{}`` at first) and the data's entry
    for it, checked against the data of the results already there.
    """
    check_memory(config, processes=processes)
    prepare_out(out, config)
    files.remove_partial_files(out)  # a killed run's half-written temporary files; this run holds the lock
    loaded = input_read(config.data, train_size=config.train_size, test_size=config.test_size, seed=config.seed)
    (x_train, _), (x_test, _) = loaded
    data_info = data_description(loaded.source, x_train, x_test)
    results = read_results(out / "results.json")
    check_same_data(out, results.get("data"), data_info)
    return loaded, results, data_info


def finish_run(out: Path, results, report_text, progress):
    """Add this run's time to ``results``, write ``results.json`` and ``report.md`` (each whole or not at all).

    Every model and cell is done by now: a worker killed while it wrote left a temporary file, removed here.
    """
    files.remove_partial_files(out)
    results["total_seconds"] = round(results.get("total_seconds", 0.0) + progress.elapsed(), 1)
    files.write_json(out / "results.json", results)
    files.write_text(out / "report.md", report_text(results))
    progress(f"done: {out / 'report.md'}")
    return results

