"""How a model trains fastest here: its precision and batch shards, decided by timing and cached.

* **Batch shards** (:func:`default_shards`): a batch split into slices that
  run on separate cores; the per-image losses are concatenated before the
  mean, so the gradient is the whole batch's. Tested against one shard.
* **Precision** (:func:`resolve_precision`): float32 or mixed bfloat16.

Which precision and how many shards are fastest depends on the chip, so
:func:`choose_path` decides by timing a few dozen training steps of the real
model per candidate (as ``torch.backends.cudnn.benchmark`` does for
convolution algorithms) and caches the decision per machine, TensorFlow
version and model. It knows nothing of the study's architectures or
training: the caller passes the timer (``training.step_timing``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..core import files
from ..core.caches import caching_disabled, package_cache_dir

LOGGER = logging.getLogger(__name__)


def default_shards():
    """Slices per batch: one per core this process may use (at most 4) on a CPU, 1 where a GPU is visible.

    Batch-100 steps of these small models are made of ops too small to keep
    several cores busy each; independent slices on single-threaded ops do
    (see ``TF_NUM_INTRAOP_THREADS`` at the top of this module). The cores are
    ``TF_NUM_INTEROP_THREADS``, which a sweep worker sets to its share.
    """
    if tf.config.list_physical_devices("GPU"):
        return 1
    return max(1, min(4, _cores()))


def _cores():
    try:
        return max(1, int(os.environ.get("TF_NUM_INTEROP_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def resolve_precision(precision="auto"):
    """The dtype policy to build a model with: ``"float32"`` or ``"mixed_bfloat16"`` as given;
    ``"auto"`` -> ``"float32"`` (``choose_path`` decides ``auto`` by measuring first).

    Mixed bfloat16 computes layers in bfloat16 and keeps weights, losses and
    optimizer state in float32 (Kalamkar et al. 2019).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Expected precision to be one of {PRECISIONS}. Received: precision={precision!r}")
    return "float32" if precision == "auto" else precision


@dataclasses.dataclass(frozen=True)
class PathChoice:
    """How a model trains here: its precision and batch shards, and why.

    Attributes:
        precision: ``"float32"`` or ``"mixed_bfloat16"``.
        shards: batch slices per step (>= 1).
        source: ``"measured"`` (timed now), ``"cached"`` (timed before on
            this machine and TensorFlow) or ``"given"`` (nothing to choose).
        step_ms: milliseconds per training step of each candidate timed,
            keyed ``"precision/shards"``; empty for ``"given"``.
        decide_seconds: time spent deciding in this process.
    """

    precision: str
    shards: int
    source: str
    step_ms: dict = dataclasses.field(default_factory=dict)
    decide_seconds: float = 0.0

    def describe(self):
        """One line for the log, e.g. ``float32, 2 shards (measured: float32/2 4.1 ms, ...)``."""
        timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.step_ms.items())
        return f"{self.precision}, {self.shards} shard{'s' * (self.shards != 1)} ({self.source}" \
               f"{': ' + timings if timings else ''})"


def candidate_paths(precision="auto", shards=None):
    """The ``(precision, shards)`` pairs worth timing for these settings.

    ``precision="auto"`` times float32 and, where the hardware computes
    bfloat16 natively (a GPU, or a CPU with AVX512-BF16 or AMX; elsewhere it
    is emulated and slow), mixed bfloat16. ``shards=None`` times one shard
    and one per core. Explicit values are never overridden.
    """
    resolve_precision(precision)  # validates
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1):
        raise ValueError(f"Expected shards to be an integer >= 1 or None. Received: shards={shards!r}")
    if precision != "auto":
        precisions = [precision]
    else:
        precisions = ["float32"] + ["mixed_bfloat16"] * _native_bfloat16()
    counts = [int(shards)] if shards is not None else sorted({1, default_shards()})
    return [(p, n) for p in precisions for n in counts]


def _native_bfloat16():
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_name(cpuinfo):
    """"<model name> (family F, model M, stepping S)" of the first processor in the text of
    /proc/cpuinfo, or ``None`` where it names no model. Virtual machines name different CPUs
    alike ("Intel(R) Xeon(R) Processor"): the numbers tell them apart."""
    first = cpuinfo.split("\n\n")[0]
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    if "model name" not in info:
        return None
    return (f"{info['model name']} (family {info.get('cpu family')}, model {info.get('model')}, "
            f"stepping {info.get('stepping')})")


def machine_key():
    """What a timing depends on besides the model: CPU model, cores in use, GPUs, TensorFlow."""
    try:
        cpu = cpu_name(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = None
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": _cores(), "gpus": gpus,
            "tensorflow": tf.__version__}


TIMING_BLOCKS = 5

# A precision more than this much slower than the other at one shard is not
# timed at more shards: in the decisions recorded in benchmarks/results, such a
# precision never won with more shards (benchmarks/results/intel-xeon-167/README.md).
PRECISION_MARGIN = 1.3


def choose_path(model_key, prepare_timer, precision="auto", shards=None, cache_file=None, blocks=TIMING_BLOCKS):
    """Choose precision and shards by timing each candidate, or from an earlier timing.

    Args:
        model_key: dict naming the model (architecture, latent size, batch
            size...), part of the cache key with :func:`machine_key`.
        prepare_timer: ``prepare_timer(precision, shards)`` -> ``timer``, where
            ``timer()`` runs a short block of training steps of the real model
            and returns seconds per step (``training.step_timing.training_step_timer``).
        precision, shards: as :func:`candidate_paths`; explicit values are kept.
        cache_file: JSON file of earlier decisions (default
            ``core.caches.package_cache_dir() / "fast_path.json"``); ``False`` for none, as
            ``DENOISING_VAE_NO_CACHE=1`` makes the default.
        blocks: timed blocks per candidate kept to the end (``blocks // 2`` in
            the first round, at least one, and the rest in the second).

    Preparing a candidate (tracing its step) costs far more than timing it,
    so this goes in two rounds. First every precision at its fewest shards:
    prepared, then ``blocks // 2`` blocks in turn (A B A B). A precision
    more than ``PRECISION_MARGIN`` times slower than the fastest is dropped.
    Then the kept precisions' other shard counts are prepared, and every
    kept candidate runs the remaining blocks in turn (A C D A C D ...). Each
    keeps its fastest block of that round, and the fastest candidate wins:
    a slow spell of the machine costs every candidate alike, or only one
    block of one.

    Returns:
        :class:`PathChoice`, the fastest candidate timed; its ``step_ms``
        names the candidates timed (their fastest block of the last round
        they ran in). A decision cached for the
        same model on the same machine and TensorFlow is reused; a cache
        made elsewhere is ignored, a damaged one rebuilt, an unwritable one
        skipped with a warning.
    """
    candidates = candidate_paths(precision, shards)
    if len(candidates) == 1:
        return PathChoice(*candidates[0], source="given")
    key = json.dumps({**machine_key(), **model_key, "candidates": candidates}, sort_keys=True)
    if cache_file is None and caching_disabled():
        cache_file = False
    path = None if cache_file is False else Path(cache_file) if cache_file else package_cache_dir() / "fast_path.json"
    entries = _read_cache(path)
    if key in entries:
        entry = entries[key]
        return PathChoice(entry["precision"], int(entry["shards"]), "cached", dict(entry["step_ms"]))
    started = time.perf_counter()
    fewest = min(count for _, count in candidates)
    first_round = [(p, n) for p, n in candidates if n == fewest]
    timers = {candidate: prepare_timer(*candidate) for candidate in first_round}

    def run_blocks(count, timed):
        seconds = {candidate: [] for candidate in timed}
        for _ in range(count):
            for candidate in timed:
                seconds[candidate].append(float(timers[candidate]()))
        return {candidate: min(values) for candidate, values in seconds.items()}

    first = run_blocks(max(1, blocks // 2), first_round)
    kept = {p for (p, _), best in first.items() if best <= PRECISION_MARGIN * min(first.values())}
    second_round = [(p, n) for p, n in candidates if p in kept]
    for candidate in second_round:
        if candidate not in timers:
            timers[candidate] = prepare_timer(*candidate)
    # The choice compares second-round blocks only: the same number for every
    # candidate, taken in turn. A first-round block from a quieter moment
    # would otherwise favour the candidates timed in both rounds.
    second = run_blocks(max(1, blocks - blocks // 2), second_round)
    fastest = {**first, **second}
    step_ms = {f"{p}/{n}": 1000 * fastest[(p, n)] for p, n in candidates if (p, n) in fastest}
    best = min(second, key=second.get)
    choice = PathChoice(*best, source="measured", step_ms={k: round(v, 3) for k, v in step_ms.items()},
                        decide_seconds=round(time.perf_counter() - started, 2))
    if path is not None:
        entries[key] = {"precision": choice.precision, "shards": choice.shards, "step_ms": choice.step_ms}
        _write_cache(path, entries)
    return choice


def _read_cache(path):
    if path is None or not path.is_file():
        return {}
    entries = (files.read_json_object(path) or {}).get("entries")
    if not isinstance(entries, dict):
        LOGGER.warning("fast-path cache %s is unreadable; measuring again", path)
        return {}
    return entries


def _write_cache(path, entries):
    try:
        files.write_json(path, {"entries": entries}, indent=1)
    except OSError as error:
        LOGGER.warning("could not write the fast-path cache %s (%s); the next run measures again", path, error)
