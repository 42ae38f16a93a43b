"""Argument checks shared by every layer: each raises a one-line ``ValueError`` naming the argument.

The message reads ``Expected NAME to be ... Received: NAME=VALUE``, Keras'
style, so a notebook user and the command line see what was wrong and with
what. :func:`first_line` is how an exception becomes that one line.
"""
from __future__ import annotations

import math

import numpy as np

from .constants import IMAGE_SIZE


def first_line(error) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_non_negative_int(name, value):
    """``value`` as an int if it is an integer >= 0, else a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"Expected {name} to be a non-negative integer. Received: {name}={value!r}")
    return int(value)


def check_positive_int(name, value):
    """``value`` as an int if it is an integer >= 1, else a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return int(value)


def check_noise_std(noise_std):
    """``noise_std`` as a float if it is a finite number >= 0, else a one-line ``ValueError``."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, np.integer, np.floating)) \
            or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"Expected noise_std to be a finite number >= 0. Received: noise_std={noise_std!r}")
    return float(noise_std)


def check_images(x, name="x"):
    """Validate a batch of images; return it as a numpy array (no copy when possible).

    Expected: shape (N, 28, 28) or (N, 28, 28, 1) with N >= 1, real finite
    values in [0, 1]. Raises a one-line ``ValueError`` naming ``name`` otherwise.
    """
    x = np.asarray(x)
    expected = f"shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}) or (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1)"
    if x.ndim not in (3, 4) or x.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE) \
            or (x.ndim == 4 and x.shape[3] != 1) or x.shape[0] < 1:
        raise ValueError(f"Expected {name} with {expected}. Received: {name}.shape={x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) \
            or np.issubdtype(x.dtype, np.bool_):
        raise ValueError(f"Expected {name} with a real numeric dtype. Received: {name}.dtype={x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"Expected {name} with finite values. Received: {bad} NaN or inf values in {name}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"Expected {name} with values in [0, 1]. Received: {name} in [{low:g}, {high:g}]")
    return x


def check_pair(noisy, clean, noisy_name="x_noisy", clean_name="x_clean"):
    """Validate matching (noisy, clean) image arrays; return them as float32 (N, 28, 28, 1)."""
    noisy = check_images(noisy, noisy_name)
    clean = check_images(clean, clean_name)
    if len(noisy) != len(clean):
        raise ValueError(f"Expected {noisy_name} and {clean_name} of the same length. "
                         f"Received: {len(noisy)} and {len(clean)} images")
    return as_model_input(noisy), as_model_input(clean)


def as_model_input(x):
    """(N, 28, 28[, 1]) -> float32 (N, 28, 28, 1) without copying when already so."""
    x = np.asarray(x, dtype=np.float32)
    return x[..., None] if x.ndim == 3 else x


class RunInterrupted(Exception):
    """The run stopped before its end through no fault of its settings (a worker died more often than
    Dask retries): the command line prints it as one line, exit status 1, and the same command resumes."""


class UsageError(Exception):
    """A problem the user can fix (a flag, a folder, the data): the command line prints it as one line
    and exits with status 2."""
