"""The command line: ``python assignment_5.py``, ``denoising-vae`` and ``python -m denoising_vae``.

    python assignment_5.py                 # the default study
    python assignment_5.py --quick         # everything on a small subset
    python assignment_5.py --help          # every flag with its default

Bad flags end in one line on stderr and exit status 2; Ctrl-C in one line
and status 130, after which the same command resumes.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from ..core import stopping
from ..core.checks import RunInterrupted, UsageError, first_line
from ..core.constants import ARCHITECTURES, BASELINES
from .config import QUICK, StudyConfig
from . import messages
from .resources import available_memory, memory_needed, processes_holding_data
from .run_folder import OutLock
from .study import run_study
from .sweep import run_sweep


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv, prog="assignment_5.py"):
    parser = OneLineParser(
        prog=prog,
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
    parser.add_argument("--baselines", default=",".join(defaults.baselines),
                        help="classical denoisers measured beside the models: a comma-separated subset of "
                             f"{','.join(BASELINES)}, all, or none (bm3d is hundreds of times slower than "
                             "the others)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log each model's epochs for TensorBoard under OUT/tensorboard")
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
    baselines = parse_baselines(parser, args.baselines)
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
                         precision=args.precision, quick=args.quick, seeds=given["seeds"][0],
                         baselines=baselines)
    return config


def parse_baselines(parser, text):
    """``--baselines``: ``"median,tv"`` -> ``("median", "tv")``; ``all``; ``none`` -> ``()``; bad text exits."""
    text = text.strip()
    if text in ("all", "none"):
        return BASELINES if text == "all" else ()
    names = tuple(name.strip() for name in text.split(","))
    if not names or any(name not in BASELINES for name in names) or len(set(names)) != len(names):
        parser.error(f"argument --baselines: expected all, none or a comma-separated subset of "
                     f"{','.join(BASELINES)} (each once), got {text!r}")
    return names


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


def main(argv=None, prog="assignment_5.py") -> int:
    """Command-line entry point; returns the exit status. ``prog`` names the program in its messages."""
    args, parser = parse_args(argv, prog)
    config = config_from_args(args, parser)
    workers, scheduler = placement_from_args(args, parser, config)
    out = Path(args.out).expanduser()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow starts, after the checks
    # The package's warnings (synthetic letters, an unverified archive) as one line each.
    plain_format, plain_program = warnings.formatwarning, messages.PROGRAM
    warnings.formatwarning = lambda message, *rest, **kw: f"{prog}: warning: {message}\n"
    messages.PROGRAM = prog
    stops = StopSignals()
    try:
        with stops:
            try:
                return _run(config, out, workers, scheduler, prog, args.tensorboard)
            except Exception:
                stops.raise_if_received()
                raise
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        print(f"{prog}: error: {first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume from {out}", file=sys.stderr)
        return 130
    except RunInterrupted as error:
        print(f"{prog}: {error}; run the same command again to resume from {out}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{prog}: terminated; run the same command again to resume from {out}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as error:  # a full disk, a file system gone: after the checks, so not the user's flags
        where = f" writing {error.filename}" if error.filename else ""
        print(f"{prog}: error{where}: {error.strerror or first_line(error)}; finished models are kept, "
              f"and the same command resumes from {out}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning, messages.PROGRAM = plain_format, plain_program


class Terminated(BaseException):
    """SIGTERM arrived (a job manager or ``kill`` stopping the run): stop as Ctrl-C does."""


class StopSignals:
    """``with StopSignals() as stops``: in the block, Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM
    ``Terminated``, and the first of them is kept in ``stops.received``.

    The exception is raised wherever the main thread is, and code in C++ that
    calls back into Python (TensorFlow tracing a function) can turn it into
    another error, or print it and go on; :meth:`raise_if_received` puts the
    stop back, and ``core.stopping`` raises it again at safe points. Ctrl-C
    ignored when the run started (a background job of a script) stays
    ignored. Outside the main thread, where Python sets no handlers, nothing
    changes. On leaving, the handlers before the block are restored.
    """

    def __init__(self):
        self.received, self.previous, self.excepthook = None, {}, None

    def __enter__(self):
        # Such code prints the exception it swallowed through sys.excepthook (PyErr_Print): once a
        # stop came, that is noise, and the run ends with the package's one line.
        self.excepthook = sys.excepthook
        sys.excepthook = self._quiet_after_a_stop
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                if number == signal.SIGINT and signal.getsignal(number) is not signal.default_int_handler:
                    continue
                self.previous[number] = signal.signal(number, self._stop)
        return self

    def _stop(self, number, frame):
        if self.received is None:
            self.received = number
            stopping.request(self.raise_if_received)  # raised again at safe points if swallowed
        self.raise_if_received()

    def raise_if_received(self):
        """Raise the stop's exception if a stop signal came; do nothing otherwise."""
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received == signal.SIGTERM:
            raise Terminated

    def _quiet_after_a_stop(self, *exc_info):
        if self.received is None:
            self.excepthook(*exc_info)

    def __exit__(self, *exc):
        stopping.clear()
        sys.excepthook = self.excepthook
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _run(config, out, workers, scheduler, prog, tensorboard):
    with OutLock(out):
        if not (config.is_sweep or scheduler is not None):
            run_study(config, out, workers=workers, tensorboard=tensorboard)
            return 0
        results = run_sweep(config, out, workers=workers, scheduler=scheduler, tensorboard=tensorboard)
    interrupted = [cell for cell in results["cells"] if cell.get("status") == "interrupted"]
    failed = [cell for cell in results["cells"] if cell.get("status") == "failed"]
    if interrupted and not failed:
        raise RunInterrupted(f"{len(interrupted)} of {len(results['cells'])} cells were interrupted, first "
                             f"{interrupted[0]['name']}: {interrupted[0]['error']}")
    if failed:
        print(f"{prog}: error: {len(failed)} of {len(results['cells'])} cells failed, "
              f"first {failed[0]['name']}: {failed[0].get('error')}", file=sys.stderr)
        return 1
    return 0


def console():
    """The ``denoising-vae`` command."""
    sys.exit(main(prog="denoising-vae"))
