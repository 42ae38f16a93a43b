"""Training: fit a model to turn noisy letters into clean ones, resumably, into a run folder.

* :func:`train_model` trains with Keras' ``fit`` and writes ``history.csv``,
  ``progress.json`` and a checkpoint after every epoch; called again on the
  same folder it continues from the last finished epoch.
* A NaN or infinite loss stops training with :class:`NonFiniteLossError`.

The batches and their noise are ``inputs.py``'s; the models and their loss
``denoising_vae.models``'; test metrics ``denoising_vae.evaluation``'s.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from pathlib import Path

import keras

from ..core import files
from ..core.checks import as_model_input, check_images, check_positive_int, first_line
from ..data.noise import noise_addition
from ..models.fused import FusedAdam
from ..models.vae import DenoisingVAE, load_model, save_model
from .inputs import ResidentData, _dataset, default_steps_per_execution, index_dataset

LOGGER = logging.getLogger(__name__)
# Keras' fit makes two iterators of the training data per epoch and trains on the first; a resumed
# run makes as many for the epochs done, so its shuffling continues where it was
# (tests/test_training.py checks it against an uninterrupted run).
FIT_ITERATORS_PER_EPOCH = 2


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
        files.write_json(self.run_dir / "progress.json",
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
    with files.replacing(path) as partial, open(partial, "w", newline="") as file:
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
                       path, len(rows), first_line(error)[:80])
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
            LOGGER.warning("checkpoint %s is unreadable (%s); removing it", path, first_line(error))
            path.unlink(missing_ok=True)
    return 0, None


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

    train_data, val_data = _attach_data(model, x_train, x_val, batch_size, noise_std, fresh_noise, seed, done)
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


def _attach_data(model, x_train, x_val, batch_size, noise_std, fresh_noise, seed, done):
    """Give ``model`` its resident training data; return ``(train_data, val_data)`` for ``fit``.

    Every random stream continues where an uninterrupted run would be after
    ``done`` epochs: the noise ring is rebuilt at its step, the shuffling
    skips the orders of the epochs done, and the sampling's seed generator
    came back with the checkpoint.
    """
    keras.utils.set_random_seed(seed)
    val_noisy = noise_addition(x_val, noise_std, seed=seed + 1_000_003)
    if fresh_noise:
        model.train_noise_std = float(noise_std)  # the record; the ring below draws it
        model.resident_data = ResidentData(x_train, noise_std=noise_std, batch_size=batch_size, seed=seed,
                                           start_step=done * math.ceil(len(x_train) / batch_size))
    else:
        model.train_noise_std = 0.0
        model.resident_data = ResidentData(noise_addition(x_train, noise_std, seed=seed + 2_000_003), x_train)
    train_data = index_dataset(len(x_train), batch_size, shuffle_seed=seed)
    for _ in range(done * FIT_ITERATORS_PER_EPOCH):  # each iterator of a reshuffling dataset takes the next order
        iter(train_data)
    return train_data, _dataset((val_noisy, x_val), batch_size)


def _check_same_run(run_dir, metadata):
    """Refuse to resume a run folder that was started with other settings."""
    path = Path(run_dir) / "progress.json"
    if not path.is_file():
        return
    stored = files.read_json_object(path)
    if stored is None:
        return  # unreadable progress: the checkpoints decide
    differing = [key for key, value in metadata.items() if key in stored and stored[key] != value]
    if differing:
        key = differing[0]
        raise ValueError(f"run_dir {str(run_dir)!r} holds a run with {key}={stored[key]!r}, "
                         f"not {metadata[key]!r}: use another run_dir or the same settings")


def _columns(rows):
    names = [key for key in (rows[0] if rows else {}) if key not in ("epoch", "seconds")]
    return {name: [row[name] for row in rows] for name in names}
