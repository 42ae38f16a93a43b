"""Timing the real training step to choose each model's fast path (precision and batch shards).

:func:`choose_fast_path` hands ``models.fast_path.choose_path`` a timer of
the study's own training step (fresh noise, the real model at the study's
batch size); :func:`step_code_key` names the code that step runs, so a
decision timed on one version of it is never reused for another.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..core.constants import IMAGE_SIZE
from ..models import fast_path, fused, losses, vae
from ..models.fused import FusedAdam
from ..models.vae import build_model
from . import inputs
from .inputs import ResidentData


def choose_fast_path(architecture, latent_dim=2, *, beta=1.0, batch_size=100, precision="auto", shards=None,
                     cache_file=None):
    """Precision and batch shards for training ``architecture`` here, timed or from the cache.

    ``fast_path.choose_path`` with the steps of :func:`training_step_timer`: each
    candidate (``fast_path.candidate_paths``) trains the real model at
    ``batch_size`` with fresh noise, as the study does, in blocks of a few
    steps taken in turn with the other candidates'. A candidate's first two
    steps run in a background thread while the next candidate traces its
    step; no block is timed before every first run has ended.

    The cache key includes :func:`step_code_key`: a decision timed on another
    version of the training step is timed again. Candidates of one precision
    share one model (each traces its own step).

    Returns:
        ``fast_path.PathChoice``; build the model with its ``precision`` and
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
            return fast_path.choose_path(model_key, prepare_timer, precision=precision, shards=shards,
                                        cache_file=cache_file)
    finally:
        logger.setLevel(level)


def step_code_key():
    """A digest of the code a training step runs (the fused layers, losses, model, inputs and
    this module): a timing of one version says nothing about another."""
    digest = hashlib.sha256()
    for module in (fused, losses, vae, inputs, sys.modules[__name__]):
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
