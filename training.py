"""Training: fit a model to turn noisy letters into clean ones, resumably, into a run folder.

* :func:`train_model` trains with Keras' ``fit`` and writes ``history.csv``,
  ``progress.json`` and a checkpoint after every epoch; called again on the
  same folder it continues from the last finished epoch.
* :class:`ResidentData` and :func:`index_dataset`: the training arrays stay in
  TensorFlow and batches arrive as shuffled indices, gathered (and, by
  default, corrupted with fresh noise from a :class:`NoiseRing`) inside the
  compiled step.
* A NaN or infinite loss stops training with :class:`NonFiniteLossError`.

The models and their loss are ``models.py``'s, the faster equivalent
computations ``fastpath.py``'s, test metrics ``evaluation.py``'s.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import atomic_files
import fastpath
import models
from data_prepro import (IMAGE_SIZE, as_model_input, check_images, check_noise_std, check_positive_int,
                         noise_addition)
from fastpath import FusedAdam
from models import DenoisingVAE, build_model, load_model, save_model

LOGGER = logging.getLogger("training")


@dataclasses.dataclass
class TrainingResult:
    """What :func:`train_model` returns.

    Attributes:
        model: the trained model (loaded from the run folder when resumed).
        history: per epoch lists: ``loss``, ``reconstruction``, ``kl``,
            ``accuracy`` and the same with ``val_`` for validation.
        epochs: epochs finished in total (previous runs included).
        train_seconds: training time summed over all runs of this folder.
        resumed_from: epochs found finished when this call started.
        stopped_early: whether early stopping ended training.
    """

    model: DenoisingVAE
    history: dict
    epochs: int
    train_seconds: float
    resumed_from: int = 0
    stopped_early: bool = False


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; ``epoch`` is the epoch it happened in."""

    def __init__(self, message, epoch=None):
        super().__init__(message)
        self.epoch = epoch


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (optimizer state included) and the history after every epoch.

    Order matters for a kill at any instant: the history row is written
    first, then ``checkpoint-epochN.keras`` (atomically), then older
    checkpoints are removed. On resume the newest loadable checkpoint decides
    the epoch, and history rows after it are dropped.
    """

    def __init__(self, run_dir, history, seconds_before, metadata):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.history = history
        self.seconds_before = seconds_before
        self.metadata = metadata
        self.started = None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        bad = [key for key, value in logs.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLossError(
                f"training diverged: {bad[0]} became {logs[bad[0]]} in epoch {epoch + 1}; "
                f"the run folder keeps epoch {epoch}; lower the learning rate or check the data", epoch=epoch + 1)
        seconds = self.seconds_before + time.perf_counter() - self.started
        row = {"epoch": epoch + 1, **logs, "seconds": seconds}
        self.history.append(row)
        _write_history(self.run_dir / "history.csv", self.history)
        path = self.run_dir / f"checkpoint-epoch{epoch + 1}.keras"
        save_model(self.model, path)
        atomic_files.write_json(self.run_dir / "progress.json",
                                {**self.metadata, "epochs_done": epoch + 1, "train_seconds": seconds})
        for old in self.run_dir.glob("checkpoint-epoch*.keras"):
            if old != path:
                old.unlink(missing_ok=True)


class _StopOnNonFiniteBatch(keras.callbacks.Callback):
    """Raises as soon as a batch's running loss is NaN or infinite, naming the epoch and batch."""

    def __init__(self, learning_rate):
        super().__init__()
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training diverged: loss became {loss} in epoch {self.epoch + 1} at batch {batch + 1}; "
                f"lower the learning rate (now {self.learning_rate:g}) or check the data", epoch=self.epoch + 1)


def _write_history(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_files.replacing(path) as partial, open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_history(run_dir):
    """Rows of ``history.csv`` as a list of dicts of floats (epoch as int); [] if absent."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                parsed = {key: float(value) for key, value in row.items()}
                parsed["epoch"] = int(parsed["epoch"])
                rows.append(parsed)
    except (OSError, ValueError, TypeError, csv.Error) as error:  # a damaged row: keep the rows before it
        LOGGER.warning("%s is damaged after %d rows (%s); the checkpoints decide where training resumes",
                       path, len(rows), str(error).splitlines()[0][:80])
    return rows


def _latest_checkpoint(run_dir):
    """``(epoch, model)`` of the newest loadable checkpoint, or ``(0, None)``."""
    found = []
    for path in Path(run_dir).glob("checkpoint-epoch*.keras"):
        try:
            found.append((int(path.stem.removeprefix("checkpoint-epoch")), path))
        except ValueError:
            continue
    for epoch, path in sorted(found, reverse=True):
        try:
            return epoch, load_model(path)
        except Exception as error:  # a damaged checkpoint is skipped, never trusted
            LOGGER.warning("checkpoint %s is unreadable (%s); removing it", path, str(error).splitlines()[0:1])
            path.unlink(missing_ok=True)
    return 0, None


def _quiet_options():
    """tf.data options for a 2-core machine: one pipeline thread, no autotuning.

    The pipelines below only shuffle and batch indices; extra threads would
    compete with the training step for the cores (measured in benchmarks/).
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    return options


def index_dataset(count, batch_size, shuffle_seed=None):
    """Batches of int64 indices 0..count-1, reshuffled every epoch when seeded."""
    indices = tf.data.Dataset.range(count)
    if shuffle_seed is not None:
        indices = indices.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size).with_options(_quiet_options())


def standard_normal(shape, seed):
    """Standard-normal float32 values of ``shape`` (an even number of them), from a
    stateless ``seed`` (two int64s): Box-Muller (Box & Muller 1958) on TensorFlow's
    Philox uniforms, z = sqrt(-2 ln u1) * (cos, sin)(2 pi u2).

    The same method as ``tf.random.stateless_normal``, which computes it one
    value at a time (about 12 ns per value on one core); as whole-tensor ops it
    costs about half. u1 lies in [2**-24, 1], so |z| <= 5.77 (TensorFlow's own
    bound is 5.68): a normal passes 5.77 once in 10**8 draws.
    """
    count = math.prod(shape)
    if count % 2:
        raise ValueError(f"Expected shape to hold an even number of values. Received: shape={shape!r}")
    uniforms = tf.random.stateless_uniform((2, count // 2), seed=seed, minval=2.0 ** -24, maxval=1.0)
    radius = tf.sqrt(-2.0 * tf.math.log(uniforms[0]))
    angle = (2 * math.pi) * uniforms[1]
    return tf.reshape(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0), shape)


class NoiseRing:
    """Fresh Gaussian noise for every training image at about a third of the cost of drawing every value.

    Drawing 784 normal values per image in every step (TensorFlow's Philox
    with Box-Muller) costs about 12 ns per value on one core of the Xeon in
    ``benchmarks/results/intel-xeon-207``, 10-25 % of a training step of these
    small models. The ring instead holds ``rows`` rows of 784 standard-normal
    values (:func:`standard_normal`). Each step first replaces the
    ``ceil(batch_size / reuse)`` oldest rows with new draws, then gives image i
    of the batch ring row r_i,
    cyclically shifted by the step's shift s and multiplied by a random sign.
    The rows of one step are distinct (a random start and an odd stride over
    a power-of-two ring), and s = (97 * step + offset) mod 784 differs for any
    two steps less than 784 apart, which is longer than a row lives.

    What this keeps exactly: every field is 784 independent N(0, 1) values
    (a shift only permutes a row's independent values, and the normal is
    symmetric), and no field is ever repeated: a row's uses differ in their
    shift. What it gives up: a row lives ``rows / ceil(batch_size / reuse)``
    steps and serves about ``reuse`` images in that time, each a different
    permutation of the same 784 values.

    Call :meth:`noisy` inside the compiled training step (``ResidentData(clean,
    noise_std=...)`` does); the state is two variables.

    Args:
        noise_std: std of the noise, >= 0.
        batch_size: the largest batch :meth:`fields` is asked for (>= 1).
        seed: int seeding the ring's first fill and every step's draws.
        reuse: average images per drawn row, 1 to 64 (1: every value new).
    """

    PIXELS = IMAGE_SIZE * IMAGE_SIZE
    SHIFT_STRIDE = 97  # coprime with 784 = 2**4 * 7**2

    def __init__(self, noise_std, batch_size, seed=0, reuse=8):
        self.noise_std = check_noise_std(noise_std)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.reuse = check_positive_int("reuse", reuse)
        if self.reuse > 64:  # keeps a batch of distinct rows within a ring whose rows live < 784 steps
            raise ValueError(f"Expected reuse to be at most 64. Received: reuse={reuse!r}")
        self.seed = int(seed)
        self.renewed = -(-self.batch_size // self.reuse)
        # The largest power of two up to 4,096 rows (12.8 MB) whose rows live at
        # most 784 steps, and at least one batch of distinct rows.
        self.rows = max(1 << (self.batch_size - 1).bit_length(),
                        1 << (min(4096, self.PIXELS * self.renewed).bit_length() - 1))
        first_fill = standard_normal((self.rows, self.PIXELS), tf.constant([self.seed, -1], tf.int64))
        self.ring = tf.Variable(first_fill, trainable=False, name="noise_ring")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="noise_ring_steps")

    def _scaled_fields(self, count, scale):
        """:meth:`fields` times ``scale``, the scale folded into the per-image signs."""
        if isinstance(count, int) and count > self.batch_size:
            raise ValueError(f"Expected count to be at most batch_size={self.batch_size}. Received: count={count!r}")
        step = self.steps.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        positions = (step * self.renewed + tf.range(self.renewed, dtype=tf.int64)) % self.rows
        self.ring.scatter_nd_update(positions[:, None], standard_normal((self.renewed, self.PIXELS), seed))
        # The step's rows: a random start and an odd stride over the power-of-two
        # ring, so distinct. Full-range integers reduced modulo small counts:
        # the bias is below 1e-15.
        count = tf.cast(count, tf.int64)
        picks = tf.random.stateless_uniform(tf.reshape(count + 2, (1,)), seed=seed + [0, 1 << 40],
                                            minval=None, maxval=None, dtype=tf.int64)
        start, stride = picks[0] % self.rows, 2 * (picks[1] % max(1, self.rows // 2)) + 1
        rows = (start + stride * tf.range(count, dtype=tf.int64)) % self.rows
        shift = (self.SHIFT_STRIDE * step + self.seed) % self.PIXELS
        signs = tf.cast(1 - 2 * (picks[2:] % 2), tf.float32)
        # sparse_read gathers the rows only; reading the whole ring could copy it in every step.
        values = tf.roll(self.ring.sparse_read(rows), shift, axis=1) * (scale * signs)[:, None]
        return tf.reshape(values, (-1, IMAGE_SIZE, IMAGE_SIZE, 1))

    def fields(self, count):
        """``count`` noise fields, (count, 28, 28, 1) float32, N(0, 1) per pixel.

        ``count``: an int or int scalar tensor (a batch's size, known only when
        the step runs), at most ``batch_size``; larger would repeat rows.
        """
        return self._scaled_fields(count, 1.0)

    def noisy(self, clean):
        """``clip(clean + noise_std * fields, 0, 1)`` for a batch (B, 28, 28, 1), B <= ``batch_size``."""
        # The std rides on the per-image signs: one pass over the batch fewer.
        noise = self._scaled_fields(tf.shape(clean)[0], self.noise_std)
        return tf.clip_by_value(clean + tf.cast(noise, clean.dtype), 0.0, 1.0)


class ResidentData:
    """Training arrays kept as TensorFlow tensors, gathered by index inside the compiled step.

    Holding the data in TensorFlow and feeding only index batches keeps the
    input pipeline off the cores that train. Attach with
    ``model.resident_data = ResidentData(clean, noise_std=0.5, batch_size=100, seed=0)``
    (fresh noise from a :class:`NoiseRing` in every step),
    ``ResidentData(noisy, clean)`` or ``ResidentData(clean)``.
    """

    def __init__(self, *arrays, noise_std=None, batch_size=100, seed=0):
        self.tensors = tuple(tf.constant(as_model_input(a)) for a in arrays)
        if noise_std is not None and len(arrays) != 1:
            raise ValueError(f"Expected one array (the clean images) with noise_std. Received: {len(arrays)} arrays")
        self.noise = None if noise_std is None else NoiseRing(noise_std, batch_size, seed=seed)

    def __len__(self):
        return int(self.tensors[0].shape[0])

    def gather(self, index):
        """The batch at ``index``: clean images, ``(noisy, clean)`` pairs, or with
        ``noise_std`` the clean images and a freshly noised copy as ``(noisy, clean)``."""
        picked = tuple(tf.gather(t, index) for t in self.tensors)
        if self.noise is not None:
            return self.noise.noisy(picked[0]), picked[0]
        return picked if len(picked) > 1 else picked[0]


def _dataset(arrays, batch_size, shuffle_seed=None):
    """Batches of ``arrays`` (equally long), gathered along :func:`index_dataset` outside the step."""
    data = ResidentData(*arrays)
    return index_dataset(len(data), batch_size, shuffle_seed).map(data.gather)


def default_steps_per_execution(batches_per_epoch):
    """Steps run per compiled call: many, to amortise Python overhead, but at most an epoch.

    Up to 50, preferring a divisor of the epoch's batches from 25 to 50: Keras
    counts every call as a full one, so a shorter last call would make the
    progress bar overshoot (650/624).
    """
    if batches_per_epoch <= 50:
        return max(1, batches_per_epoch)
    return next((steps for steps in range(50, 24, -1) if batches_per_epoch % steps == 0), 50)


def train_model(model, x_train, x_val, *, run_dir, epochs=20, batch_size=100, noise_std=0.5,
                fresh_noise=True, seed=0, learning_rate=1e-3, early_stopping_patience=None,
                steps_per_execution=None, jit_compile=False, shards=None, callbacks=(), verbose="auto"):
    """Train ``model`` to turn noisy images into clean ones, resumably, into ``run_dir``.

    Validation uses one fixed noisy copy of ``x_val`` (seeded), so curves are
    comparable across epochs and runs. Training noise is fresh every epoch
    (drawn inside the compiled step) or, with ``fresh_noise=False``, one fixed
    noisy copy as in the report.

    ``run_dir`` receives ``history.csv``, ``progress.json`` and
    ``checkpoint-epochN.keras`` after every epoch; calling again with the same
    folder continues from the last finished epoch up to ``epochs`` in total
    (the passed ``model`` is then replaced by the checkpoint's).

    Args:
        model: a :class:`DenoisingVAE` (from :func:`build_model`).
        x_train, x_val: clean images (N, 28, 28[, 1]) in [0, 1].
        epochs: total epochs, >= 1. batch_size: >= 1 (the report: 100).
        noise_std: std of the Gaussian noise, >= 0. seed: seeds everything.
        learning_rate: Adam's step size.
        early_stopping_patience: ``None`` (off) or epochs without a better
            ``val_loss`` before stopping; the best weights are then restored.
        steps_per_execution: training steps per compiled call (default:
            :func:`default_steps_per_execution`).
        jit_compile: compile the steps with XLA (slower on CPU; see benchmarks).
        shards: batch slices per step (``None``: the model's own, see
            :func:`choose_fast_path`); also applied to a resumed checkpoint.
        callbacks: extra Keras callbacks for ``fit``.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        :class:`TrainingResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    x_train = as_model_input(check_images(x_train, "x_train"))
    x_val = as_model_input(check_images(x_val, "x_val"))
    if early_stopping_patience is not None:
        check_positive_int("early_stopping_patience", early_stopping_patience)
    if shards is not None:
        shards = check_positive_int("shards", shards)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    metadata = {"architecture": model.architecture, "latent_dim": model.latent_dim, "beta": model.beta,
                "batch_size": batch_size, "noise_std": float(noise_std), "fresh_noise": bool(fresh_noise),
                "seed": seed, "learning_rate": float(learning_rate)}
    _check_same_run(run_dir, metadata)
    done, restored = _latest_checkpoint(run_dir)
    history = [row for row in read_history(run_dir) if row["epoch"] <= done]
    seconds_before = history[-1]["seconds"] if history else 0.0
    if restored is not None:
        model = restored
    if shards is not None:
        model.shards = shards
    if done >= epochs:
        return TrainingResult(model, _columns(history), done, seconds_before, resumed_from=done)

    keras.utils.set_random_seed(seed + done)
    val_noisy = noise_addition(x_val, noise_std, seed=seed + 1_000_003)
    if fresh_noise:
        model.train_noise_std = float(noise_std)  # the record; the ring below draws it
        model.resident_data = ResidentData(x_train, noise_std=noise_std, batch_size=batch_size,
                                           seed=seed + done)
    else:
        model.train_noise_std = 0.0
        model.resident_data = ResidentData(noise_addition(x_train, noise_std, seed=seed + 2_000_003), x_train)
    train_data = index_dataset(len(x_train), batch_size, shuffle_seed=seed)
    val_data = _dataset((val_noisy, x_val), batch_size)
    batches = math.ceil(len(x_train) / batch_size)
    if restored is None:
        model.compile(optimizer=FusedAdam(learning_rate),
                      steps_per_execution=steps_per_execution or default_steps_per_execution(batches),
                      jit_compile=jit_compile)
    callbacks = [_StopOnNonFiniteBatch(learning_rate), _EpochCheckpoint(run_dir, history, seconds_before, metadata),
                 *callbacks]
    early = None
    if early_stopping_patience is not None:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping_patience,
                                              restore_best_weights=True)
        callbacks.append(early)
    try:
        model.fit(train_data, validation_data=val_data, epochs=epochs, initial_epoch=done,
                  callbacks=callbacks, shuffle=False, verbose=verbose)
    finally:
        # The compiled step captured the training arrays; drop both so they can be freed.
        model.resident_data = None
        model.train_function = None
    stopped = bool(early is not None and early.stopped_epoch > 0)
    if stopped:
        save_model(model, run_dir / "best.keras")
    total_seconds = history[-1]["seconds"] if history else seconds_before
    return TrainingResult(model, _columns(history), len(history), total_seconds, resumed_from=done,
                          stopped_early=stopped)


def _check_same_run(run_dir, metadata):
    """Refuse to resume a run folder that was started with other settings."""
    path = Path(run_dir) / "progress.json"
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable progress: the checkpoints decide
    differing = [key for key, value in metadata.items() if key in stored and stored[key] != value]
    if differing:
        key = differing[0]
        raise ValueError(f"run_dir {str(run_dir)!r} holds a run with {key}={stored[key]!r}, "
                         f"not {metadata[key]!r}: use another run_dir or the same settings")


def _columns(rows):
    names = [key for key in (rows[0] if rows else {}) if key not in ("epoch", "seconds")]
    return {name: [row[name] for row in rows] for name in names}


# --------------------------------------------------------------------------
# Choosing the fast path by measuring
# --------------------------------------------------------------------------

def choose_fast_path(architecture, latent_dim=2, *, beta=1.0, batch_size=100, precision="auto", shards=None,
                     cache_file=None):
    """Precision and batch shards for training ``architecture`` here, timed or from the cache.

    ``fastpath.choose_path`` with the steps of :func:`training_step_timer`: each
    candidate (``fastpath.candidate_paths``) trains the real model at
    ``batch_size`` with fresh noise, as the study does, in blocks of a few
    steps taken in turn with the other candidates'. A candidate's first two
    steps run in a background thread while the next candidate traces its
    step; no block is timed before every first run has ended.

    The cache key includes :func:`step_code_key`: a decision timed on another
    version of the training step is timed again. Candidates of one precision
    share one model (each traces its own step).

    Returns:
        ``fastpath.PathChoice``; build the model with its ``precision`` and
        pass its ``shards`` to :func:`train_model`.
    """
    model_key = {"architecture": architecture, "latent_dim": int(latent_dim), "batch_size": int(batch_size),
                 "step_code": step_code_key()}
    built = {}
    warming_up = []

    def prepare_timer(candidate_precision, candidate_shards):
        if candidate_precision not in built:
            built[candidate_precision] = _timing_model(architecture, latent_dim, beta, batch_size, candidate_precision)
        warm_up, timer = _step_timer(built[candidate_precision], candidate_shards, batch_size)
        # A step's first run is mostly TensorFlow optimizing its graph, in C++ without
        # Python's lock: it runs in the background while the next candidate traces.
        warming_up.append(background.submit(warm_up))

        def timer_after_warm_ups():
            while warming_up:  # no block is timed beside another candidate's first run
                warming_up.pop().result()
            return timer()
        return timer_after_warm_ups

    # Each candidate traces a step of its own on purpose; TensorFlow's logger
    # would call that "excessive retracing" from the fifth on.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fast-path-warm-up") as background:
            return fastpath.choose_path(model_key, prepare_timer, precision=precision, shards=shards,
                                        cache_file=cache_file)
    finally:
        logger.setLevel(level)


def step_code_key():
    """A digest of the code a training step runs (``fastpath``, ``models`` and this
    module): a timing of one version says nothing about another."""
    digest = hashlib.sha256()
    for module in (fastpath, models, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _timing_model(architecture, latent_dim, beta, batch_size, precision):
    """A model ready for :func:`training_step_timer`: compiled, Adam's slots made, fresh noise on."""
    model = build_model(architecture, latent_dim, beta=beta, seed=0, precision=precision)
    model.compile(optimizer=FusedAdam(1e-3))
    # Adam's slots made now, eagerly: created inside the traced step, they make
    # tf.function trace the step twice (once to create them), doubling the cost.
    model.optimizer.build(model.trainable_variables)
    model.train_noise_std = 0.5
    images = np.random.default_rng(0).random((batch_size, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    model.resident_data = ResidentData(images, noise_std=0.5, batch_size=batch_size)
    return model


def training_step_timer(architecture, latent_dim=2, *, beta=1.0, batch_size=100, precision="float32", shards=1,
                        steps=8, model=None):
    """A model's training step (fresh noise, as :func:`train_model`), ready to time.

    Builds the model (or takes ``model``, made by an earlier call for the same
    architecture and precision: its steps keep the shards they were traced
    with), traces its step (the costly part: about 0.5-1.5 s), runs it twice,
    and returns ``timer``: each ``timer()`` runs ``steps`` steps and returns
    seconds per step. Each compiled call runs one step, so the time includes
    a per-call overhead that is the same for every candidate.
    """
    if model is None:
        model = _timing_model(architecture, latent_dim, beta, batch_size, precision)
    warm_up, timer = _step_timer(model, shards, batch_size, steps)
    warm_up()
    return timer


def _step_timer(model, shards, batch_size, steps=8):
    """``(warm_up, timer)`` for ``model``'s step traced with ``shards``: ``warm_up()``
    runs it twice (the first run optimizes the graph), ``timer()`` as in :func:`training_step_timer`."""
    model.shards = shards  # read while tracing the step below
    index = tf.range(batch_size, dtype=tf.int64)
    # No autograph: the step has no tensor-dependent Python control flow, and converting it costs a second.
    step = tf.function(model.train_step, autograph=False)
    step.get_concrete_function(index)

    def warm_up():
        for _ in range(2):
            step(index)

    def timer():
        started = time.perf_counter()
        for _ in range(steps):
            logs = step(index)
        float(logs["loss"])  # wait for the last step
        return (time.perf_counter() - started) / steps

    return warm_up, timer
