"""A full disk while the run writes results.json, sweep.csv, the report or a figure.

The disk fills in the middle of the write: ``open`` is replaced, for the one
file, by a file whose ``write`` fails with ENOSPC after a few bytes, as a full
file system does. (``test_faults.py`` fills a real file-size limit while a
checkpoint is written.) Each case: one line naming the file and the cause,
exit status 1, the file as it was before, no partial file left, every
finished model or cell intact, and the same command finishing without
training again.
"""
import builtins
import errno
import io
import json
import os

import pytest

from denoising_vae.models import vae
from denoising_vae.study import cli

TINY = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "1", "--precision", "float32",
        "--workers", "1", "--baselines", "median"]


class FullDisk:
    """Makes the ``nth`` write of a file named ``name`` (counting from 1) fail with ENOSPC halfway."""

    def __init__(self, monkeypatch, name, nth=1):
        self.name, self.nth, self.seen, self.failed, self.before = name, nth, 0, False, None
        real_open = builtins.open

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            base = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
            if "w" in mode and base.startswith(f".{self.name}.") and ".part" in base:
                self.seen += 1
                if self.seen == self.nth:
                    target = os.path.join(os.path.dirname(os.fspath(file)), self.name)
                    if os.path.exists(target):  # the file as it was, which the failed write must leave
                        with real_open(target, "rb") as kept:
                            self.before = kept.read()
                    self.failed = True
                    return _FillingFile(handle)
            return handle

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)


class _FillingFile:
    """A file that takes 16 bytes, then fails every write as a full disk does."""

    def __init__(self, handle):
        self._handle, self._room = handle, 16

    def write(self, data):
        if len(data) > self._room:
            self._handle.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)


def one_line(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def no_partial_files(out):
    return not [path for path in out.rglob("*.part*")]


@pytest.mark.slow
@pytest.mark.parametrize("name, nth", [("results.json", 3), ("report.md", 1), ("comparison.png", 1)])
def test_a_full_disk_while_a_study_writes_its_results_report_or_a_figure(tmp_path, monkeypatch, capsys, name, nth):
    out = tmp_path / "run"
    # Two models when results.json fails after the first: the first must stay recorded.
    flags = TINY + ["--models", "arch3,ae" if name == "results.json" else "ae", "--out", str(out)]
    disk = FullDisk(monkeypatch, name, nth)
    status = cli.main(flags)
    lines = one_line(capsys)
    assert disk.failed and status == 1, lines
    assert lines == [f"assignment_5.py: error writing {out / name}: No space left on device; finished models are "
                     f"kept, and the same command resumes from {out}"]
    if name == "results.json":  # its earlier version, with the first model, is left as it was
        assert disk.before and (out / name).read_bytes() == disk.before
    else:
        assert not (out / name).exists()
    assert no_partial_files(out)
    finished = json.loads((out / "results.json").read_text())["models"]
    for model in finished:
        assert vae.load_model(out / f"{model}.keras").architecture == model
    monkeypatch.undo()  # space is back
    assert cli.main(flags) == 0
    again = capsys.readouterr().out
    for model in finished:
        assert f"{model}: already finished" in again
    assert "Epoch 1/1" not in again  # Keras trained no epoch again
    assert (out / "report.md").is_file() and (out / "comparison.png").stat().st_size > 0


@pytest.mark.slow
def test_a_full_disk_while_a_sweep_writes_sweep_csv(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    flags = TINY + ["--models", "ae", "--seeds", "2", "--out", str(out)]
    disk = FullDisk(monkeypatch, "sweep.csv")
    status = cli.main(flags)
    lines = one_line(capsys)
    assert disk.failed and status == 1, lines
    assert lines[0].startswith(f"assignment_5.py: error writing {out / 'sweep.csv'}: No space left on device")
    assert len(lines) == 1 and not (out / "sweep.csv").exists() and no_partial_files(out)
    cells = sorted(path.parent.name for path in out.glob("cells/*/cell.json"))
    assert cells == ["ae-latent2-noise0.5-beta1-seed0", "ae-latent2-noise0.5-beta1-seed1"]
    models = {path: path.stat().st_mtime for path in out.glob("cells/*/model.keras")}
    monkeypatch.undo()
    assert cli.main(flags) == 0
    assert {path: path.stat().st_mtime for path in out.glob("cells/*/model.keras")} == models  # none trained again
    assert len((out / "sweep.csv").read_text().splitlines()) == 3
