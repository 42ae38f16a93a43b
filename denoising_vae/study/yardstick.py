"""The study's yardsticks: classical denoisers at each noise level, and each model's latent measures.

* :func:`robustness_letters`: the test letters every noise level is measured
  on, models and classical denoisers alike (the first 1,000).
* :func:`study_baselines`: ``denoising_vae.baselines`` at every noise level of
  the study (its parameters chosen on training letters), kept in
  ``results.json`` and reused by a resumed run.
* :func:`model_latent_measures`: ``denoising_vae.latent`` on a model's codes
  of noisy training and test letters.
"""
from __future__ import annotations

import time

import numpy as np

from ..data import noise_addition

ROBUSTNESS_LETTERS = 1_000   # test letters of the robustness curve and the classical denoisers
VALIDATION_LETTERS = 130     # training letters the denoisers' parameters are chosen on (5 per letter)
PROBE_NOISE_OFFSET = 23      # seeds the noisy training copy the latent probes learn from


def robustness_letters(x_test, noise_std, seed):
    """``(clean, noisy)``: the first (up to) :data:`ROBUSTNESS_LETTERS` test letters and their copy
    with noise ``noise_std`` (seeded ``seed + 11``: every noise level draws the same normal numbers)."""
    clean = x_test[:min(len(x_test), ROBUSTNESS_LETTERS)]
    return clean, noise_addition(clean, float(noise_std), seed=seed + 11)


def validation_letters(x_train, noise_std, seed):
    """``(clean, noisy)``: :data:`VALIDATION_LETTERS` training letters (seeded) and their noisy copy."""
    chosen = np.sort(np.random.default_rng(seed + 13).choice(len(x_train), min(len(x_train), VALIDATION_LETTERS),
                                                             replace=False))
    clean = x_train[chosen]
    return clean, noise_addition(clean, float(noise_std), seed=seed + 17)


def study_baselines(config, x_train, x_test, previous=None, progress=lambda line: None):
    """Every classical denoiser of ``config.baselines`` at each of ``config.noise_levels()``.

    Returns the ``results.json`` section: ``{"methods", "test_letters",
    "validation_letters", "seconds", "levels": {"0.5": [compare_baselines rows], ...}}``;
    ``previous`` (the section of an earlier run) is returned as it is when it
    holds the same methods and levels.
    """
    levels = {f"{std:g}": std for std in config.noise_levels()}
    methods = list(config.baselines)
    if previous and previous.get("methods") == methods and set(previous.get("levels", {})) == set(levels):
        return previous
    if not methods:
        return None
    from .. import baselines

    started = time.perf_counter()
    progress(f"classical denoisers ({', '.join(methods)}) at noise std {', '.join(levels)}")
    section = {"methods": methods, "test_letters": min(len(x_test), ROBUSTNESS_LETTERS),
               "validation_letters": min(len(x_train), VALIDATION_LETTERS), "levels": {}}
    for key, std in levels.items():
        section["levels"][key] = baselines.compare_baselines(validation_letters(x_train, std, config.seed),
                                                             robustness_letters(x_test, std, config.seed), std,
                                                             methods)
    section["seconds"] = round(time.perf_counter() - started, 2)
    return section


def model_latent_measures(model, data, noise_std, seed):
    """``latent.latent_measures`` of ``model``'s codes of noisy letters (what it encodes).

    ``data``: ``one_model.ModelData``; the probes learn from a noisy copy of
    (at most ``latent.PROBE_LETTERS``) training letters (seeded ``seed`` +
    :data:`PROBE_NOISE_OFFSET`) and
    are scored on the study's noisy test copy.
    """
    from .. import evaluation, latent

    count = min(len(data.x_train), latent.PROBE_LETTERS)
    if count < 2 or len(data.x_test) < 2:  # nothing to fit or to spread: too few letters
        return {"probe_accuracy": None, "knn_accuracy": None, "active_units": None, "latent_variances": []}
    chosen = np.sort(np.random.default_rng(seed + PROBE_NOISE_OFFSET).choice(len(data.x_train), count,
                                                                              replace=False))
    train_codes = evaluation.encode_mean(model, noise_addition(data.x_train[chosen], noise_std,
                                                               seed=seed + PROBE_NOISE_OFFSET))
    test_codes = evaluation.encode_mean(model, data.x_test_noisy)
    return latent.latent_measures(train_codes, data.y_train[chosen], test_codes, data.y_test,
                                  variational=model.variational, seed=seed,
                                  neighbours=min(latent.NEIGHBOURS, count))
