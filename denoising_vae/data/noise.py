"""Gaussian noise on letters: the report's ``Noise_addition`` and the study's fixed noisy test copy.

Values are ``clip(x + N(0, std^2), 0, 1)`` as float32; the input is never
modified. numpy only.
"""
from __future__ import annotations

import numpy as np

from ..core.checks import check_images, check_noise_std


def noise_addition(x, noise_std=0.5, seed=None):
    """Add Gaussian noise and clip (the report's ``Noise_addition``).

    Returns ``clip(x + N(0, noise_std**2), 0, 1)`` as a new float32 array of
    ``x``'s shape; ``x`` itself is never modified.

    Args:
        x: images, shape (N, 28, 28) or (N, 28, 28, 1), values in [0, 1].
        noise_std: standard deviation of the noise, finite and >= 0;
            0 returns an equal copy.
        seed: ``None`` for fresh noise, an int for reproducible noise.
    """
    x = check_images(x, "x")
    noise_std = check_noise_std(noise_std)
    if noise_std == 0:
        return x.astype(np.float32, copy=True)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise *= np.float32(noise_std)
    noise += x
    return np.clip(noise, 0.0, 1.0, out=noise)


def noisy_test_copy(x_test, noise_std, study_seed):
    """The study's one fixed noisy copy of the test set: :func:`noise_addition` seeded ``study_seed + 7``.

    One definition, so a study in one process, its worker processes and the
    sweep cells of that seed all test on the same noisy images.
    """
    return noise_addition(x_test, noise_std, seed=study_seed + 7)
