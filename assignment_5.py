"""The whole study: data, the four models, test metrics, figures and a report.

    python assignment_5.py                 # the default study (about 5.5 min on 2 cores, 2 models at a time)
    python assignment_5.py --quick         # everything on a small subset in about 35-50 s
    python assignment_5.py --help          # every flag with its default

Everything goes under ``--out``. Each model's results are written as soon as
it finishes; running the same command again skips finished models and
resumes an interrupted one from its last finished epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import atomic_files
import data_prepro

ARCHITECTURES = ("arch1", "arch2", "arch3", "ae")
ROBUSTNESS_STDS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
QUICK = {"train_size": 2600, "test_size": 520, "epochs": 2}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Every setting that shapes the results; saved as config.json in the run folder."""

    data: str = "auto"              # auto, emnist, synthetic or a path to NIST's gzip.zip
    models: tuple = ARCHITECTURES   # which of arch1, arch2, arch3, ae to train
    epochs: int = 20                # epochs per model
    batch_size: int = 100           # images per step, as in the report
    latent_dim: int | tuple = 2     # size of the latent space, as in the report (a tuple: swept)
    noise_std: float | tuple = 0.5  # std of the Gaussian noise added to the inputs (a tuple: swept)
    beta: float | tuple = 1.0       # weight of the KL term (a tuple: swept)
    learning_rate: float = 1e-3     # Adam's step size
    train_size: int | None = None   # None: all 62,400 training images
    test_size: int | None = None    # None: all 10,400 test images
    seed: int = 0                   # seeds data subsets, noise, initial weights
    precision: str = "auto"         # auto, float32 or mixed_bfloat16 (training only)
    quick: bool = False
    seeds: int = 1                  # replicates: --seed, --seed + 1, ...

    def values(self, setting):
        """The list of values of ``latent_dim``, ``noise_std`` or ``beta``."""
        value = getattr(self, setting)
        return list(value) if isinstance(value, tuple) else [value]

    @property
    def is_sweep(self):
        """Several seeds or several values of a setting."""
        return self.seeds > 1 or any(len(self.values(s)) > 1 for s in ("latent_dim", "noise_std", "beta"))


class UsageError(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv):
    parser = OneLineParser(
        prog="assignment_5.py",
        description="Denoising VAEs on handwritten capital letters: train, evaluate, plot, report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = StudyConfig()
    parser.add_argument("--data", default=defaults.data,
                        help="auto (real EMNIST if present or downloadable, else synthetic), emnist, "
                             "synthetic, or a path to NIST's gzip.zip")
    parser.add_argument("--models", default=",".join(defaults.models),
                        help="comma-separated subset of " + ",".join(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per model")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    parser.add_argument("--latent-dim", default=str(defaults.latent_dim),
                        help="latent dimensions; a comma list (2,4,8) sweeps them")
    parser.add_argument("--noise-std", default=str(defaults.noise_std),
                        help="std of the input noise; a comma list sweeps it")
    parser.add_argument("--beta", default=str(defaults.beta), help="weight of the KL term; a comma list sweeps it")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="Adam step size")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images, balanced over letters (None: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images, balanced over letters (None: all)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--seeds", default="1", help="replicates per model and setting: --seed, --seed + 1, ...")
    parser.add_argument("--workers", default="auto",
                        help="worker processes of a Dask LocalCluster on this machine that train models (or "
                             "sweep cells) side by side; auto: one per core, at most one per model or cell, "
                             "as many as the memory holds; 1: everything in this process")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (tcp://HOST:8786) to run the cells on; "
                             "--out must then be storage every worker sees")
    parser.add_argument("--precision", default=defaults.precision,
                        choices=("auto", "float32", "mixed_bfloat16"),
                        help="training arithmetic; auto = whichever trains faster here, timed once per "
                             "machine and model and cached")
    parser.add_argument("--out", default="runs/study", help="run folder")
    parser.add_argument("--quick", action="store_true",
                        help=f"small balanced subset and few epochs ({QUICK['train_size']} train, "
                             f"{QUICK['test_size']} test images, {QUICK['epochs']} epochs) unless set explicitly")
    args = parser.parse_args(argv)
    return args, parser


def config_from_args(args, parser):
    """Validate flags and build the StudyConfig; bad values exit via parser.error (status 2)."""
    names = tuple(name.strip() for name in args.models.split(",") if name.strip())
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        parser.error(f"argument --models: expected a comma-separated subset of {','.join(ARCHITECTURES)}, "
                     f"got {args.models!r}")
    if len(set(names)) != len(names):
        parser.error(f"argument --models: each model once, got {args.models!r}")
    given = {key: value for key, value in vars(args).items()}
    if args.quick:
        for key, value in QUICK.items():
            if given[key] is None or given[key] == parser.get_default(key):
                given[key] = value
    for key in ("latent_dim", "noise_std", "beta", "seeds"):
        given[key] = parse_list(parser, key, given[key])
    for flag, key, low in (("--epochs", "epochs", 1), ("--batch-size", "batch_size", 1),
                           ("--train-size", "train_size", 1), ("--test-size", "test_size", 1), ("--seed", "seed", 0)):
        value = given[key]
        if value is not None and value < low:
            parser.error(f"argument {flag}: expected an integer >= {low}, got {value}")
    learning_rate = given["learning_rate"]
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        parser.error(f"argument --learning-rate: expected a finite number > 0, got {learning_rate}")
    one_or_tuple = lambda values: values[0] if len(values) == 1 else tuple(values)  # noqa: E731
    config = StudyConfig(data=args.data, models=names, epochs=given["epochs"], batch_size=given["batch_size"],
                         latent_dim=one_or_tuple(given["latent_dim"]), noise_std=one_or_tuple(given["noise_std"]),
                         beta=one_or_tuple(given["beta"]), learning_rate=given["learning_rate"],
                         train_size=given["train_size"], test_size=given["test_size"], seed=given["seed"],
                         precision=args.precision, quick=args.quick, seeds=given["seeds"][0])
    return config


# Bytes per image held at once (float32 28x28 = 3,136 B): training images as
# float32, their TensorFlow-resident copy and the uint8 cache; test images as
# float32, the noisy test copy, the fixed noisy validation copy, its resident
# pair and the uint8 cache. Measured against /usr/bin/time's peak: the
# default study (62,400 + 10,400 images) peaks near 2.3 GiB with everything.
TRAIN_BYTES_PER_IMAGE = 784 * (4 + 4 + 1)
TEST_BYTES_PER_IMAGE = 784 * (4 + 4 + 4 + 8 + 1)
BASE_BYTES = 1.5 * 2 ** 30  # TensorFlow, the models, evaluation buffers, figures


def processes_holding_data(workers):
    """Processes that each hold a copy of the data: this one, plus its workers when there are several."""
    return workers + 1 if workers > 1 else 1


def memory_needed(train_size, test_size, processes=1):
    """Estimated peak bytes of a run: the data (each process holds its own) plus a fixed base."""
    train = train_size or data_prepro.EMNIST_TRAIN_CAPITALS
    test = test_size or data_prepro.EMNIST_TEST_CAPITALS
    return processes * (BASE_BYTES + train * TRAIN_BYTES_PER_IMAGE + test * TEST_BYTES_PER_IMAGE)


def available_memory():
    """Bytes the system can give without swapping (MemAvailable), or ``None`` where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(config, processes=1):
    """Refuse, before anything large is allocated, sizes whose data cannot fit in this machine's memory."""
    available = available_memory()
    need = memory_needed(config.train_size, config.test_size, processes)
    if available is None or need <= available:
        return
    test = config.test_size or data_prepro.EMNIST_TEST_CAPITALS
    train = config.train_size or data_prepro.EMNIST_TRAIN_CAPITALS
    flag, size, per_image = (("--train-size", train, TRAIN_BYTES_PER_IMAGE)
                             if train * TRAIN_BYTES_PER_IMAGE >= test * TEST_BYTES_PER_IMAGE
                             else ("--test-size", test, TEST_BYTES_PER_IMAGE))
    room = available / processes - (need / processes - size * per_image)
    largest = max(0, int(room // per_image))
    raise UsageError(f"{flag} {size:,} needs about {need / 2 ** 30:.1f} GiB of memory"
                     f"{f' over {processes} workers' if processes > 1 else ''}, and this machine has "
                     f"{available / 2 ** 30:.1f} GiB available; the largest {flag} that fits is about {largest:,}")


def check_caches():
    """Run uncached, with one warning, when a cache folder of the package cannot be written.

    The folders are ``~/.cache/emnist`` (data) and ``$XDG_CACHE_HOME/denoising_vae``
    (timings); ``DENOISING_VAE_NO_CACHE=1``, inherited by sweep workers, turns
    every cache off.
    """
    if data_prepro.caching_disabled():
        return
    for folder in (data_prepro.default_cache_dir(), data_prepro.package_cache_dir()):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            warn(f"no writable cache folder ({folder}: {error.strerror or error}); running without caches, "
                 "so data are prepared and timings measured again on every run")
            os.environ["DENOISING_VAE_NO_CACHE"] = "1"
            return


def placement_from_args(args, parser, config):
    """``(workers, scheduler)``: where the models or cells train; bad values exit via parser.error (status 2).

    ``--workers auto`` (the default): one worker process per core, at most
    one per model of a study or cell of a sweep, and no more than the memory
    holds (each process keeps its own copy of the data); 1 runs everything
    in this process.
    """
    cores = os.cpu_count() or 1
    if args.workers == "auto":
        if args.scheduler is not None:
            return 1, args.scheduler
        tasks = len(config.models) * config.seeds * math.prod(
            len(config.values(setting)) for setting in ("latent_dim", "noise_std", "beta"))
        workers = min(cores, tasks)
        available = available_memory()
        while workers > 1 and available is not None and \
                memory_needed(config.train_size, config.test_size, processes_holding_data(workers)) > available:
            workers -= 1
        return workers, None
    try:
        workers = int(args.workers)
    except ValueError:
        workers = 0
    if workers < 1:
        parser.error(f"argument --workers: expected auto or an integer >= 1, got {args.workers!r}")
    if workers > cores:
        parser.error(f"argument --workers: expected at most {cores} (this machine's cores), got {workers}")
    if args.scheduler is not None and workers != 1:
        parser.error("argument --workers: the workers of --scheduler are the cluster's; leave --workers out")
    return workers, args.scheduler


# flag -> (parse one value, lowest allowed, whether a list is allowed)
_LISTS = {"latent_dim": (int, 1, True), "noise_std": (float, 0.0, True), "beta": (float, 0.0, True),
          "seeds": (int, 1, False)}


def parse_list(parser, key, text):
    """``"2,4,8"`` -> ``[2, 4, 8]`` for a list flag; one value for the others; bad text exits (status 2)."""
    kind, low, many = _LISTS[key]
    flag = "--" + key.replace("_", "-")
    what = f"{'a comma list of ' if many else ''}{'integers' if kind is int else 'finite numbers'} >= {low:g}"
    parts = str(text).split(",") if many else [str(text)]
    values = []
    for part in parts:
        try:
            value = kind(part.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low:
            parser.error(f"argument {flag}: expected {what}, got {text!r}")
        values.append(value)
    if len(set(values)) != len(values):
        parser.error(f"argument {flag}: each value once, got {text!r}")
    return values


# --------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------

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
        try:
            stored = json.loads(stored_path.read_text())
        except ValueError:
            raise UsageError(f"--out {out} holds an unreadable config.json; choose another --out") from None
        # Asking for fewer or more models than last time is fine: results are per model.
        # A setting missing from an older config.json had its default then.
        differing = [key for key in current if key != "models" and stored.get(key, defaults[key]) != current[key]]
        if differing:
            key = differing[0]
            raise UsageError(f"--out {out} holds a run made with {key}={stored.get(key, defaults[key])!r}, "
                             f"not {current[key]!r}; "
                             "choose another --out or repeat the original flags")
        current["models"] = list(dict.fromkeys(stored.get("models", []) + current["models"]))
    write_json(stored_path, current)


def write_json(path: Path, data):
    """Write JSON atomically: a killed run never leaves half a file."""
    atomic_files.write_json(path, data, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path, default):
    """The JSON object in ``path``; ``default`` if it is absent. A damaged file is set aside as
    ``<name>.damaged`` (never deleted) with a warning, and ``default`` returned: the caller rebuilds it."""
    if not path.exists():
        return default
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
        raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        kept = path.with_name(path.name + ".damaged")
        try:
            os.replace(path, kept)
        except OSError:
            kept = path
        warn(f"{path} is unreadable ({str(error).splitlines()[0][:80]}); kept as {kept.name} and rebuilt "
             "from the finished models")
        return default


def warn(message):
    """One warning line on stderr."""
    print(f"assignment_5.py: warning: {message}", file=sys.stderr, flush=True)


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


class Progress:
    """One status line per phase with the elapsed time since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def __call__(self, message):
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)


# --------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------

def run_study(config: StudyConfig, out: Path, verbose=None, workers=1):
    """Run (or resume) the study into ``out``; return the results dict.

    ``workers`` > 1 trains that many models side by side, each in a worker
    process of a Dask LocalCluster on its share of the cores
    (:func:`_train_on_workers`); the run folder and results are the same
    as with one, and a run can resume with another number.

    ``verbose`` is Keras' ``fit`` verbosity; by default a progress bar on a
    terminal and one line per epoch when stdout goes to a file.
    """
    if verbose is None:
        verbose = "auto" if sys.stdout.isatty() else 2
    progress = Progress()
    check_memory(config, processes=processes_holding_data(workers))
    prepare_out(out, config)
    check_caches()
    loaded = data_prepro.input_read(config.data, train_size=config.train_size, test_size=config.test_size,
                                    seed=config.seed)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow starts here, once the flags, folder and data are known to be good.
    import startup

    startup.start_tensorflow()
    import evaluation
    import models
    import plots
    import training
    (x_train, y_train), (x_test, y_test) = loaded
    source = loaded.source
    progress(f"data: {source.describe()}; {len(x_train)} train and {len(x_test)} test images")
    x_test_noisy = data_prepro.noisy_test_copy(x_test, config.noise_std, config.seed)

    results_path = out / "results.json"
    results = read_json(results_path, {})
    data_info = data_description(source, x_train, x_test)
    check_same_data(out, results.get("data"), data_info)
    results["data"] = data_info
    results.setdefault("models", {})
    write_json(results_path, results)

    trained, pending = {}, []
    for index, name in enumerate(config.models):
        final_path = out / f"{name}.keras"
        if name in results["models"] and final_path.is_file():
            try:
                trained[name] = models.load_model(final_path)
                progress(f"{name}: already finished, loaded {final_path.name}")
                continue
            except Exception as error:  # a damaged file: evaluate again from the last checkpoint
                warn(f"{final_path} is unreadable ({str(error).splitlines()[0][:80]}); evaluating {name} again "
                     "from its last checkpoint")
                results["models"].pop(name)
        pending.append((index, name))

    workers = min(workers, len(pending))
    if pending:
        results["workers"] = workers  # models trained at a time, each on its share of the cores
    if workers > 1:
        data_name = source.path if source.kind == "emnist" else "synthetic"
        finishing = _train_on_workers(pending, config, out, data_name, workers, progress)
    else:
        finishing = (train_and_test(name, index, config, out, (x_train, x_test, x_test_noisy), progress, verbose)
                     + (0,) for index, name in pending)
    # Each model's own figures are made in this process once a core is free of
    # training: drawn beside two training workers on two cores, they would slow
    # both. With workers, that is when the first chain of models has ended.
    made, waiting = {}, []
    try:
        for name, entry, model, still_training in finishing:
            results["models"][name] = entry
            write_json(results_path, results)
            if model is not None:
                trained[name] = model
            waiting.append(name)
            while waiting and still_training < workers:
                drawn = waiting.pop(0)
                if drawn not in trained:
                    trained[drawn] = models.load_model(out / f"{drawn}.keras")
                made[drawn] = model_figures(out, config, drawn, trained[drawn], x_test, y_test, x_test_noisy,
                                            evaluation, plots)
    except training.NonFiniteLossError as error:
        raise UsageError(f"{error.model}: training diverged in epoch {error.epoch} (the loss became NaN or "
                         f"infinite); lower --learning-rate (now {config.learning_rate:g}); "
                         f"{len(results['models'])} finished models are kept in {results_path}") from None
    for name in waiting:  # their figures are made with the others' below
        if name not in trained:
            trained[name] = models.load_model(out / f"{name}.keras")
    # Config order, whatever order the models finished in.
    results["models"] = {name: results["models"][name] for name in config.models}
    trained = {name: trained[name] for name in config.models}

    progress("figures")
    figures = make_figures(out, config, trained, results["models"], x_test, y_test, x_test_noisy, evaluation,
                           plots, made)
    results["figures"] = figures
    results["total_seconds"] = round(results.get("total_seconds", 0.0) + progress.elapsed(), 1)
    write_json(results_path, results)
    (out / "report.md").write_text(render_report(config, results, figures))
    progress(f"done: {out / 'report.md'}")
    return results


def train_and_test(name, index, config, out, data, progress, verbose):
    """Train (or resume) one model of the study, test it and save it as ``out/NAME.keras``.

    Args:
        name, index: the model and its position in ``config.models`` (its seed is ``config.seed + index``).
        data: ``(x_train, x_test, x_test_noisy)``, float32 in [0, 1].
        progress: called with one status line at a time.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        ``(name, entry, model)``: the model's ``results.json`` entry and the trained model.

    Raises:
        training.NonFiniteLossError: the loss diverged; its ``model`` attribute names the model.
    """
    import evaluation
    import models
    import training

    x_train, x_test, x_test_noisy = data
    path = training.choose_fast_path(name, config.latent_dim, beta=config.beta, batch_size=config.batch_size,
                                     precision=config.precision)
    progress(f"{name}: fast path {path.describe()}"
             + (f", decided in {path.decide_seconds:.1f} s" if path.source == "measured" else ""))
    model = models.build_model(name, config.latent_dim, beta=config.beta, seed=config.seed + index,
                               precision=path.precision)
    progress(f"{name}: training {config.epochs} epochs ({models.precision_of(model)}, "
             f"{models.parameter_counts(model)['total']:,} parameters)")
    try:
        fitted = training.train_model(model, x_train, x_test, run_dir=out / "checkpoints" / name,
                                      epochs=config.epochs, batch_size=config.batch_size,
                                      noise_std=config.noise_std, seed=config.seed + index,
                                      learning_rate=config.learning_rate, shards=path.shards, verbose=verbose)
    except training.NonFiniteLossError as error:
        error.model = name
        raise
    model = fitted.model
    if fitted.resumed_from:
        progress(f"{name}: resumed after epoch {fitted.resumed_from}")
    progress(f"{name}: trained in {fitted.train_seconds:.1f} s; evaluating")
    test = evaluation.evaluate(model, x_test_noisy, x_test, seed=config.seed)
    models.save_model(model, out / f"{name}.keras")
    entry = {"params": models.parameter_counts(model), "precision": models.precision_of(model),
             "fast_path": dataclasses.asdict(path), "epochs": fitted.epochs,
             "train_seconds": round(fitted.train_seconds, 2), "history": fitted.history, "test": test}
    progress(f"{name}: test loss {test['loss']:.2f}, PSNR {test['psnr_noisy']:.2f} -> "
             f"{test['psnr_reconstructed']:.2f} dB")
    return name, entry, model


# Relative training time of each model on one core (the default study in two
# workers on the Xeon of the README's Speed section: arch3 215 s, ae 160 s,
# arch1 141 s, arch2 110 s). It only splits the models into balanced chains.
TRAINING_COST = {"arch3": 3, "arch1": 2, "ae": 2, "arch2": 1}
EPOCH_POLL_SECONDS = 3.0


def balanced_chains(pending, workers):
    """``pending`` ``(index, name)`` models split into ``workers`` lists, each trained in order
    on one worker: the costliest model first, each to the list with the least
    :data:`TRAINING_COST` so far (longest processing time first, Graham 1969)."""
    chains, loads = [[] for _ in range(workers)], [0] * workers
    for index, name in sorted(pending, key=lambda item: -TRAINING_COST.get(item[1], 1)):
        lightest = loads.index(min(loads))
        chains[lightest].append((index, name))
        loads[lightest] += TRAINING_COST.get(name, 1)
    return chains


def train_in_worker(name, index, config_fields, out, data_name, after=None):
    """:func:`train_and_test` in a Dask worker process: reads the data itself and
    returns ``{"entry": ..., "lines": [...]}`` or ``{"diverged": message, "epoch": N, "lines": [...]}``.

    ``after`` is the outcome of the model trained before this one in its
    chain (unused: passing it makes Dask run the two in order)."""
    import startup

    startup.start_tensorflow()
    import training

    config = StudyConfig(**config_fields)
    with warnings.catch_warnings():  # the main process has warned about the data already
        warnings.simplefilter("ignore")
        (x_train, _), (x_test, _) = data_prepro.input_read(data_name, train_size=config.train_size,
                                                           test_size=config.test_size, seed=config.seed)
    x_test_noisy = data_prepro.noisy_test_copy(x_test, config.noise_std, config.seed)
    lines = []
    try:
        _, entry, _ = train_and_test(name, index, config, Path(out), (x_train, x_test, x_test_noisy), lines.append,
                                     verbose=0)
    except training.NonFiniteLossError as error:
        return {"diverged": str(error), "epoch": error.epoch, "lines": lines}
    return {"entry": entry, "lines": lines}


def _train_on_workers(pending, config, out, data_name, workers, progress):
    """Train the ``pending`` ``(index, name)`` models side by side in ``workers`` worker processes of a
    Dask LocalCluster; yield ``(name, entry, None, still_training)`` as each finishes (its model is
    saved in ``out``), ``still_training`` the models then training (one per unfinished chain).

    Each model's epochs are reported as they end (from its ``history.csv``). Dask
    reruns a model whose worker died, and the rerun resumes from its checkpoint.
    """
    import importlib
    import uuid

    import sweep
    import training
    from dask.distributed import wait

    task = importlib.import_module("assignment_5").train_in_worker  # by module name, also when run as a script
    fields = dataclasses.asdict(config)
    # Epochs reported so far: those of an earlier, interrupted run are not repeated.
    shown = {name: len(training.read_history(out / "checkpoints" / name)) for _, name in pending}

    def show_epochs(name):
        for row in training.read_history(out / "checkpoints" / name):
            if row["epoch"] > shown[name]:
                shown[name] = row["epoch"]
                progress(f"{name}: epoch {row['epoch']}/{config.epochs}, loss {row['loss']:.2f}, "
                         f"val_loss {row['val_loss']:.2f}")

    chains = balanced_chains(pending, workers)
    with sweep.dask_client(workers, None) as client:
        futures, chain_of = {}, {}
        for chain_index, chain in enumerate(chains):
            previous = None
            for index, name in chain:
                previous = client.submit(task, name, index, fields, str(out), data_name, previous, pure=False,
                                         retries=1, key=f"study-{name}-{uuid.uuid4().hex[:8]}")
                futures[previous] = name
                chain_of[previous] = chain_index
        cores = sweep.cores_per_worker(workers)
        order = "; ".join(" then ".join(name for _, name in chain) for chain in chains)
        progress(f"training side by side in {workers} worker processes (a Dask LocalCluster, "
                 f"{cores} core{'s' * (cores != 1)} each): {order}")
        running = set(futures)
        while running:
            try:
                wait(running, timeout=EPOCH_POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished in that time
                pass
            done = {future for future in running if future.done()}
            running -= done
            for future in running:
                show_epochs(futures[future])
            for future in done:
                name = futures[future]
                show_epochs(name)
                outcome = future.result()
                for line in outcome["lines"]:
                    progress(line)
                if "diverged" in outcome:
                    error = training.NonFiniteLossError(outcome["diverged"], epoch=outcome["epoch"])
                    error.model = name
                    raise error
                yield name, outcome["entry"], None, len({chain_of[other] for other in running})


def run_sweep(config: StudyConfig, out: Path, *, workers=1, scheduler=None):
    """Run (or resume) every cell of a sweep into ``out``; return the results dict.

    Cells are models x settings x seeds (``sweep.expand_cells``), each trained
    in ``out/cells/<name>/`` by ``sweep.run_cells``: in this process, on a Dask
    LocalCluster of ``workers`` processes, or on the Dask scheduler at
    ``scheduler``. Then ``sweep.csv``, the summary with 95 % intervals, the
    figures and ``report.md``.
    """
    import sweep

    progress = Progress()
    if scheduler is not None:
        try:
            sweep.connect_check(scheduler)
        except OSError as error:
            raise UsageError(str(error)) from None
    # Each worker process holds its own copy of the data, and so does this one.
    check_memory(config, processes=1 if scheduler else processes_holding_data(workers))
    prepare_out(out, config)
    check_caches()
    loaded = data_prepro.input_read(config.data, train_size=config.train_size, test_size=config.test_size,
                                    seed=config.seed)
    (_, _), (x_test, y_test) = loaded
    source = loaded.source
    data_info = data_description(source, loaded[0][0], x_test)
    progress(f"data: {source.describe()}; {data_info['train']} train and {data_info['test']} test images")
    results_path = out / "results.json"
    results = read_json(results_path, {})
    check_same_data(out, results.get("data"), data_info)
    cells = sweep.expand_cells(config.models, config.values("latent_dim"), config.values("noise_std"),
                               config.values("beta"), config.seed, config.seeds)
    where = (f"the Dask scheduler at {scheduler}" if scheduler else
             f"a Dask LocalCluster of {workers} workers" if workers > 1 else "this process")
    progress(f"sweep: {len(cells)} cells ({len(config.models)} models x {len(cells) // len(config.models) // config.seeds}"
             f" settings x {config.seeds} seeds), {config.epochs} epochs each, on {where}")
    job = sweep.CellJob(out=str(out.resolve()), data=source.path if source.kind == "emnist" else "synthetic",
                        train_size=config.train_size, test_size=config.test_size, data_seed=config.seed,
                        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                        precision=config.precision)
    try:
        cell_results = list(sweep.run_cells(cells, job, workers=workers, scheduler=scheduler,
                                            progress=progress).values())
    except OSError as error:
        raise UsageError(str(error).splitlines()[0]) from None
    summary = sweep.summarise(cell_results)
    sweep.write_sweep_csv(out / "sweep.csv", cell_results)
    results.update(data=data_info, cells=cell_results, summary=summary, sweep={
        "models": list(config.models), **{s: config.values(s) for s in sweep.SWEPT}, "seeds": config.seeds,
        "workers": workers, "scheduler": scheduler, "interval": "95 % confidence, Student's t, n - 1 d.o.f."})
    write_json(results_path, results)

    # Today's per-model figures and results from the first seed of each model's first setting.
    import startup

    startup.start_tensorflow()
    import evaluation
    import models
    import plots

    first = {}
    for cell, result in zip(cells, cell_results):
        if cell.model not in first and result.get("status") == "done":
            first[cell.model] = (cell, result)
    results["models"] = {name: {key: result[key] for key in ("epochs", "train_seconds", "history", "test",
                                                              "precision", "fast_path", "folder")}
                         for name, (_, result) in first.items()}
    figures = {}
    if first:
        progress("figures")
        noise_std = config.values("noise_std")[0]
        x_test_noisy = data_prepro.noisy_test_copy(x_test, noise_std, config.seed)
        trained = {name: models.load_model(Path(result["folder"]) / "model.keras")
                   for name, (_, result) in first.items()}
        figures = make_figures(out, config, trained, results["models"], x_test, y_test, x_test_noisy,
                               evaluation, plots)
        figures.update(sweep_figures(out, config, cells, cell_results, summary, plots))
    results["figures"] = figures
    results["total_seconds"] = round(results.get("total_seconds", 0.0) + progress.elapsed(), 1)
    write_json(results_path, results)
    (out / "report.md").write_text(render_sweep_report(config, results, figures))
    progress(f"done: {out / 'report.md'}")
    return results


_SWEEP_METRICS = (("loss", "test loss (nats)"), ("psnr_reconstructed", "PSNR reconstructed (dB)"),
                  ("ssim_reconstructed", "SSIM reconstructed"), ("log_likelihood", "log p(x) (nats)"))


def sweep_figures(out, config, cells, cell_results, summary, plots):
    """The sweep's own figures: curves with a band across seeds, and each metric against each swept setting."""
    figures = {}
    firsts = {s: config.values(s)[0] for s in ("latent_dim", "noise_std", "beta")}
    histories = {}
    for cell, result in zip(cells, cell_results):
        if result.get("status") == "done" and all(getattr(cell, s) == v for s, v in firsts.items()):
            histories.setdefault(cell.model, []).append(result["history"])
    if histories:
        figures["learning_curves_seeds"] = "learning_curves_seeds.png"
        plots.plot_learning_curve_bands(histories, "loss", path=out / figures["learning_curves_seeds"])
    first_rows = [row for row in summary if all(row[s] == v for s, v in firsts.items()) and row["n"]]
    if first_rows:
        figures["comparison_seeds"] = "comparison_seeds.png"
        plots.plot_comparison_across_seeds(first_rows, _SWEEP_METRICS, path=out / figures["comparison_seeds"])
    for setting in ("latent_dim", "noise_std", "beta"):
        if len(config.values(setting)) < 2:
            continue
        fixed = {s: v for s, v in firsts.items() if s != setting}
        figures[f"against_{setting}"] = f"against_{setting}.png"
        plots.plot_metric_against_setting(summary, setting, _SWEEP_METRICS, fixed=fixed,
                                          path=out / figures[f"against_{setting}"])
    return figures


def summary_table(summary):
    """The sweep summary as a Markdown table: mean +- std (n) per model and setting."""
    lines = ["| model | latent | noise | beta | " + " | ".join(label for _, label in _SWEEP_METRICS) + " |",
             "|---" * (4 + len(_SWEEP_METRICS)) + "|"]
    for row in summary:
        cells = []
        for key, _ in _SWEEP_METRICS:
            stats = row["metrics"].get(key)
            if stats is None:
                cells.append("n/a")
                continue
            spread = f" +- {stats['std']:.3g}" if stats["std"] is not None else ""
            cells.append(f"{stats['mean']:.4g}{spread} ({stats['n']})")
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(f"| {row['model']}{failed} | {row['latent_dim']} | {row['noise_std']:g} | {row['beta']:g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_sweep_report(config, results, figures):
    """report.md of a sweep: data, settings, the summary table and every figure."""
    data = results["data"]
    failed = [cell for cell in results["cells"] if cell.get("status") != "done"]
    sections = [
        "# Denoising VAEs on handwritten capital letters: sweep", "",
        f"**Data:** {data['description']}: {data['train']:,} training and {data['test']:,} test images.", "",
        f"**Cells:** {len(results['cells'])} ({len(failed)} failed): models {', '.join(config.models)}; "
        f"latent {config.values('latent_dim')}, noise std {config.values('noise_std')}, "
        f"beta {config.values('beta')}; {config.seeds} seeds from {config.seed}; {config.epochs} epochs, "
        f"batch {config.batch_size}, Adam {config.learning_rate}.", "",
        "## Summary", "",
        "Mean +- sample standard deviation (number of seeds) of each test metric; `results.json` also holds "
        "95 % confidence intervals (Student's t, n - 1 degrees of freedom) and `sweep.csv` every cell. "
        "A difference smaller than the seed-to-seed spread is not a finding.", "",
        summary_table(results["summary"]), "",
    ]
    for key, title in (("learning_curves_seeds", "Learning curves across seeds"),
                       ("comparison_seeds", "Comparison across seeds (first setting)"),
                       ("against_latent_dim", "Against the latent size"), ("against_noise_std", "Against the noise"),
                       ("against_beta", "Against beta"), ("comparison", "Comparison (first seed)"),
                       ("learning_curves", "Learning curves (first seed)")):
        if key in figures:
            sections += [f"## {title}", "", f"![{title}]({figures[key]})", ""]
    for name in results.get("models", {}):
        if f"reconstructions_{name}" in figures:
            sections += [f"## {name} (first seed, first setting)", "",
                         f"![{name} reconstructions]({figures[f'reconstructions_{name}']})"]
            if f"latent_sweep_{name}" in figures:
                sections.append(f"![{name} latent sweep]({figures[f'latent_sweep_{name}']})")
            sections += [f"![{name} latent map]({figures[f'latent_map_{name}']})", ""]
    sections += [f"Total time: {results['total_seconds']:.0f} s.", ""]
    return "\n".join(sections)


def make_figures(out, config, trained, finished, x_test, y_test, x_test_noisy, evaluation, plots, made=None):
    """Every figure as PNG under ``out``; returns ``{key: file name}``.

    ``made``: ``{name: model_figures(...)}`` of models whose own figures were
    made already (in :func:`run_study`, once a core was free of training); the others' are made here.
    """
    made = dict(made or {})
    for name, model in trained.items():
        if name not in made:
            made[name] = model_figures(out, config, name, model, x_test, y_test, x_test_noisy, evaluation, plots)
    figures = {"learning_curves": "learning_curves.png"}
    plots.plot_learning_curves({name: finished[name]["history"] for name in trained},
                               path=out / figures["learning_curves"])
    clean, noisy_levels = _robustness_inputs(config, x_test)
    robustness = {"noise_std": list(ROBUSTNESS_STDS),
                  "noisy": [float(np.mean(evaluation.psnr(clean, noisy))) for noisy in noisy_levels]}
    for name in trained:
        own_figures, robustness[name] = made[name]
        figures.update(own_figures)
    figures["comparison"] = "comparison.png"
    plots.plot_comparison({name: finished[name]["test"] for name in trained}, robustness,
                          path=out / figures["comparison"])
    write_json(out / "robustness.json", robustness)
    return figures


def _robustness_inputs(config, x_test):
    """The first (up to) 1,000 test letters and their noisy copies at each of ``ROBUSTNESS_STDS``."""
    clean = x_test[:min(len(x_test), 1000)]
    return clean, [data_prepro.noise_addition(clean, float(std), seed=config.seed + 11) for std in ROBUSTNESS_STDS]


def model_figures(out, config, name, model, x_test, y_test, x_test_noisy, evaluation, plots):
    """One model's own figures under ``out`` (reconstructions, its latent map and, for a VAE, a
    decoded latent grid) and its robustness curve.

    Returns ``({key: file name}, [mean PSNR of its reconstructions at each of ROBUSTNESS_STDS])``.
    """
    chosen = plots.distinct_letter_indices(y_test, 10, seed=config.seed)
    figures = {f"reconstructions_{name}": f"reconstructions_{name}.png"}
    reconstructed = evaluation.reconstruct(model, x_test_noisy[chosen])
    plots.plot_reconstructions(x_test[chosen], x_test_noisy[chosen], reconstructed, y_test[chosen], title=name,
                               path=out / figures[f"reconstructions_{name}"])
    if model.variational:
        figures[f"latent_sweep_{name}"] = f"latent_sweep_{name}.png"
        plots.plot_latent_sweep(lambda z: evaluation.decode(model, z), model.latent_dim, n=15,
                                title=f"{name}: decoded latent grid", path=out / figures[f"latent_sweep_{name}"])
    figures[f"latent_map_{name}"] = f"latent_map_{name}.png"
    plots.plot_latent_map(evaluation.encode_mean(model, x_test_noisy), y_test,
                          title=f"{name}: test set in latent space", path=out / figures[f"latent_map_{name}"])
    clean, noisy_levels = _robustness_inputs(config, x_test)
    robustness = [float(np.mean(evaluation.psnr(clean, evaluation.reconstruct(model, noisy))))
                  for noisy in noisy_levels]
    return figures, robustness


_TABLE = (("loss", "test loss", "{:.2f}"), ("reconstruction", "reconstruction", "{:.2f}"), ("kl", "KL", "{:.2f}"),
          ("accuracy", "pixel accuracy", "{:.4f}"), ("psnr_noisy", "PSNR noisy (dB)", "{:.2f}"),
          ("psnr_reconstructed", "PSNR reconstructed (dB)", "{:.2f}"), ("ssim_noisy", "SSIM noisy", "{:.3f}"),
          ("ssim_reconstructed", "SSIM reconstructed", "{:.3f}"), ("log_likelihood", "log p(x) (nats)", "{:.2f}"))


def metrics_table(results):
    """The test metrics of every finished model as a Markdown table."""
    names = list(results["models"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label, fmt in _TABLE:
        cells = []
        for name in names:
            value = results["models"][name]["test"].get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| parameters | " + " | ".join(f"{results['models'][n]['params']['total']:,}" for n in names) + " |")
    lines.append("| epochs | " + " | ".join(str(results["models"][n]["epochs"]) for n in names) + " |")
    lines.append("| training time (s) | " + " | ".join(f"{results['models'][n]['train_seconds']:.0f}"
                                                        for n in names) + " |")
    return "\n".join(lines)


def render_report(config, results, figures):
    """report.md: the data, a table of test metrics, every figure, the total time."""
    data = results["data"]
    iw = {results["models"][n]["test"].get("iw_samples") for n in results["models"]} - {None}
    sections = [
        "# Denoising VAEs on handwritten capital letters",
        "",
        f"**Data:** {data['description']}: {data['train']:,} training and {data['test']:,} test images "
        f"(28x28, values in [0, 1]).",
        "",
        f"**Task:** reconstruct the clean letter from a copy with Gaussian noise of std {config.noise_std} added "
        f"and clipped to [0, 1]. Training draws fresh noise every epoch; the test set has one fixed noisy copy.",
        "",
        f"**Settings:** {config.epochs} epochs, batch {config.batch_size}, latent dimensions {config.latent_dim}, "
        f"beta {config.beta}, Adam {config.learning_rate}, seed {config.seed}, precision {config.precision}"
        + (f"; {results['workers']} models trained at a time, each in a worker process on its share of the cores "
           "(training times are per model)" if results.get("workers", 1) > 1 else "") + ".",
        "",
        "## Test metrics",
        "",
        metrics_table(results),
        "",
        "Loss, reconstruction and KL are nats per image with z sampled from q(z|noisy); PSNR and SSIM compare the "
        "clean image with the noisy input and with the deterministic reconstruction decoder(encoder mean); "
        "pixel accuracy is the fraction of pixels on the same side of 0.5 as the clean image. "
        "log p(x) is an importance-weighted estimate (Burda et al. 2016) with "
        f"K = {', '.join(map(str, sorted(iw))) or 'n/a'} "
        "samples; the autoencoder has no KL or likelihood.",
        "",
        "## Learning curves",
        "",
        f"![learning curves]({figures['learning_curves']})",
        "",
        "## Comparison and robustness to noise",
        "",
        f"![comparison]({figures['comparison']})",
        "",
    ]
    for name in results["models"]:
        if f"reconstructions_{name}" not in figures:
            continue
        sections += [f"## {name}", "", f"![{name} reconstructions]({figures[f'reconstructions_{name}']})"]
        if f"latent_sweep_{name}" in figures:
            sections.append(f"![{name} latent sweep]({figures[f'latent_sweep_{name}']})")
        sections += [f"![{name} latent map]({figures[f'latent_map_{name}']})", ""]
    sections += [f"Total time: {results['total_seconds']:.0f} s.", ""]
    return "\n".join(sections)


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    args, parser = parse_args(argv)
    config = config_from_args(args, parser)
    workers, scheduler = placement_from_args(args, parser, config)
    out = Path(args.out).expanduser()
    # The package's warnings (synthetic letters, an unverified archive) as one line each.
    plain_format = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kw: f"assignment_5.py: warning: {message}\n"
    try:
        with OutLock(out):
            if config.is_sweep or scheduler is not None:
                results = run_sweep(config, out, workers=workers, scheduler=scheduler)
                failed = [cell for cell in results["cells"] if cell.get("status") != "done"]
                if failed:
                    print(f"assignment_5.py: error: {len(failed)} of {len(results['cells'])} cells failed, "
                          f"first {failed[0]['name']}: {failed[0].get('error')}", file=sys.stderr)
                    return 1
            else:
                run_study(config, out, workers=workers)
    except UsageError as error:
        print(f"assignment_5.py: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"assignment_5.py: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"assignment_5.py: interrupted; run the same command again to resume from {out}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain_format
    return 0


if __name__ == "__main__":
    sys.exit(main())
