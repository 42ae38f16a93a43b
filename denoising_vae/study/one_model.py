"""One model of a study or one cell of a sweep: choose its fast path, build, train, test, save.

:func:`train_evaluate_save` is the one path every trained model of the
package takes, in this process or in a Dask worker; :class:`ModelSpec` names
everything that shapes its result.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..latent import NEIGHBOURS


class ModelData(NamedTuple):
    """A model's data: float32 (N, 28, 28, 1) images in [0, 1] and int letters 0-25; the test set's
    fixed noisy copy at the model's noise level."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_test_noisy: np.ndarray


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that shapes one trained model's result.

    Attributes:
        architecture: ``"arch1"``, ``"arch2"``, ``"arch3"`` or ``"ae"``.
        latent_dim, noise_std, beta: the model's settings.
        seed: the training seed (initial weights, shuffling, noise).
        eval_seed: the study seed, which seeds the evaluation's draws.
        epochs, batch_size, learning_rate, precision: as the study's flags.
    """

    architecture: str
    latent_dim: int
    noise_std: float
    beta: float
    seed: int
    eval_seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    precision: str


def train_evaluate_save(spec: ModelSpec, data: ModelData, *, run_dir, model_path, progress=lambda line: None,
                        verbose=0, epoch_lines=False, tensorboard_dir=None):
    """Train (or resume) the model of ``spec``, test it and save it as ``model_path``.

    Args:
        spec: the model and its settings.
        data: the model's :class:`ModelData`.
        run_dir: its checkpoints' folder: a second call resumes from there.
        model_path: the ``.keras`` file of the trained model.
        progress: called with one status line at a time.
        verbose: Keras' ``fit`` verbosity.
        epoch_lines: also send a line per finished epoch to ``progress``
            (where Keras' own output is not shown: in a worker).
        tensorboard_dir: a folder for Keras' TensorBoard callback (each
            epoch's scalars), or ``None``.

    Returns:
        ``(entry, model)``: the model's ``results.json`` entry (parameters,
        precision, fast path, epochs, seconds, history, test metrics, latent
        measures) and the model.

    Raises:
        training.NonFiniteLossError: the loss diverged.
    """
    from .. import evaluation
    from ..models import vae
    from ..training import loop, step_timing
    from .yardstick import model_latent_measures

    name = spec.architecture
    path = step_timing.choose_fast_path(name, spec.latent_dim, beta=spec.beta, batch_size=spec.batch_size,
                                        precision=spec.precision)
    progress(f"{name}: fast path {path.describe()}"
             + (f", decided in {path.decide_seconds:.1f} s" if path.source == "measured" else ""))
    model = vae.build_model(name, spec.latent_dim, beta=spec.beta, seed=spec.seed, precision=path.precision)
    progress(f"{name}: training {spec.epochs} epochs ({vae.precision_of(model)}, "
             f"{vae.parameter_counts(model)['total']:,} parameters)")
    callbacks = [_epoch_lines(name, spec.epochs, progress)] if epoch_lines else []
    if tensorboard_dir is not None:
        import keras
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=False))
    fitted = loop.train_model(model, data.x_train, data.x_test, run_dir=Path(run_dir), epochs=spec.epochs,
                              batch_size=spec.batch_size, noise_std=spec.noise_std, seed=spec.seed,
                              learning_rate=spec.learning_rate, shards=path.shards, verbose=verbose,
                              callbacks=callbacks)
    model = fitted.model
    if fitted.resumed_from:
        progress(f"{name}: resumed after epoch {fitted.resumed_from}")
    progress(f"{name}: trained in {fitted.train_seconds:.1f} s; evaluating")
    test = evaluation.evaluate(model, data.x_test_noisy, data.x_test, seed=spec.eval_seed)
    started = time.perf_counter()
    measures = model_latent_measures(model, data, spec.noise_std, spec.eval_seed)
    measures["seconds"] = round(time.perf_counter() - started, 2)
    vae.save_model(model, model_path)
    entry = {"params": vae.parameter_counts(model), "precision": vae.precision_of(model),
             "fast_path": dataclasses.asdict(path), "epochs": fitted.epochs,
             "train_seconds": round(fitted.train_seconds, 2), "resumed_from": fitted.resumed_from,
             "history": fitted.history, "test": test, "latent": measures}
    read = "" if measures["probe_accuracy"] is None else (
        f"; letters from the latent means: linear probe {measures['probe_accuracy']:.1%}, "
        f"{NEIGHBOURS}-NN {measures['knn_accuracy']:.1%}")
    progress(f"{name}: test loss {test['loss']:.2f}, PSNR {test['psnr_noisy']:.2f} -> "
             f"{test['psnr_reconstructed']:.2f} dB{read}")
    return entry, model


def _epoch_lines(name, epochs, progress):
    """A Keras callback sending ``NAME: epoch k/N, loss L, val_loss V`` to ``progress`` after each epoch."""
    import keras

    def line(epoch, logs):
        progress(f"{name}: epoch {epoch + 1}/{epochs}, loss {logs['loss']:.2f}, val_loss {logs['val_loss']:.2f}")
    return keras.callbacks.LambdaCallback(on_epoch_end=line)
