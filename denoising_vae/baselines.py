"""Classical denoisers as the models' yardstick: Gaussian and median filters, non-local means,
total-variation denoising (scikit-image, SciPy) and BM3D (the ``bm3d`` package).

* :data:`METHODS`: each method's parameter and the candidates it is chosen
  from at a noise level; :data:`DEFAULT_METHODS` leaves out BM3D, whose cost
  per image is hundreds of times the others'.
* :func:`denoise`: one method with one parameter value, numpy in, numpy out.
* :func:`choose_parameter`: the candidate with the best mean PSNR on
  validation letters (noisy/clean pairs of *training* letters, never test ones).
* :func:`compare_baselines`: every method at one noise level, chosen on the
  validation pairs, scored on test pairs with :func:`evaluation.image_quality`,
  the same PSNR and SSIM as the models'.

Every image is denoised on its own (28 x 28, values clipped to [0, 1]).
Nothing here trains, plots or writes files.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .core.checks import check_images, check_noise_std, check_pair
from .core.constants import BASELINES, DEFAULT_BASELINES
from .evaluation import image_quality, psnr


@dataclasses.dataclass(frozen=True)
class Method:
    """A classical denoiser: its parameter's name and the candidates for it at noise std ``s``."""

    parameter: str
    candidates: object  # noise std -> tuple of parameter values
    description: str


def _relative(*factors):
    # The candidates scale with the noise (floored so that std 0 still gets a small value).
    return lambda noise_std: tuple(round(f * max(noise_std, 0.05), 4) for f in factors)


METHODS = {
    "gaussian": Method("sigma", lambda noise_std: (0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
                       "Gaussian filter (scipy.ndimage.gaussian_filter), sigma in pixels"),
    "median": Method("size", lambda noise_std: (3, 5), "median filter (scipy.ndimage.median_filter), size x size"),
    "nl_means": Method("h", _relative(0.3, 0.45, 0.6, 0.8),
                       "non-local means (skimage.restoration.denoise_nl_means, 5 x 5 patches within 4 pixels)"),
    "tv": Method("weight", _relative(0.2, 0.35, 0.5, 0.75),
                 "total-variation denoising (skimage.restoration.denoise_tv_chambolle)"),
    "bm3d": Method("sigma_psd", _relative(0.35, 0.5, 0.75, 1.0), "BM3D (bm3d.bm3d, Makinen et al. 2020)"),
}
DEFAULT_METHODS = DEFAULT_BASELINES
assert tuple(METHODS) == BASELINES


def check_methods(methods):
    """``methods`` as a tuple of names of :data:`METHODS`, else a one-line ``ValueError``."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise ValueError(f"Expected methods to be distinct names of {', '.join(METHODS)}. "
                         f"Received: methods={methods!r}")
    return methods


def denoise(method, noisy, parameter):
    """Denoise every image of ``noisy`` with ``method`` at ``parameter``.

    Args:
        method: a name of :data:`METHODS`.
        noisy: (N, 28, 28[, 1]) in [0, 1].
        parameter: the method's parameter (sigma, size, h, weight or sigma_psd), > 0.

    Returns:
        float32 (N, 28, 28) in [0, 1].
    """
    (method,) = check_methods(method)
    noisy = check_images(noisy, "noisy").reshape(-1, 28, 28)
    if isinstance(parameter, bool) or not isinstance(parameter, (int, float, np.integer, np.floating)) \
            or not np.isfinite(parameter) or parameter <= 0:
        raise ValueError(f"Expected parameter to be a finite number > 0 (the {METHODS[method].parameter} of "
                         f"{method}). Received: parameter={parameter!r}")
    if method == "gaussian":
        from scipy import ndimage
        out = ndimage.gaussian_filter(noisy, (0, parameter, parameter), mode="nearest")
    elif method == "median":
        from scipy import ndimage
        out = ndimage.median_filter(noisy, (1, int(parameter), int(parameter)), mode="nearest")
    elif method == "nl_means":
        from skimage.restoration import denoise_nl_means
        out = np.stack([denoise_nl_means(image, h=parameter, patch_size=5, patch_distance=4) for image in noisy])
    elif method == "tv":
        from skimage.restoration import denoise_tv_chambolle
        out = denoise_tv_chambolle(noisy, weight=parameter, channel_axis=0)  # each image alone
    else:
        import bm3d
        out = np.stack([bm3d.bm3d(image, sigma_psd=parameter) for image in noisy])
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def choose_parameter(method, clean, noisy, noise_std):
    """The candidate of ``method`` at ``noise_std`` with the best mean PSNR on ``(noisy, clean)``.

    Args:
        clean, noisy: validation pairs of *training* letters, (N, 28, 28[, 1]) in [0, 1].
        noise_std: the noise level the candidates scale with.

    Returns:
        ``(best value, {str(candidate): mean validation PSNR})``.
    """
    (method,) = check_methods(method)
    noisy, clean = check_pair(noisy, clean, "noisy", "clean")
    scores = {candidate: float(np.mean(psnr(clean, denoise(method, noisy, candidate))))
              for candidate in METHODS[method].candidates(check_noise_std(noise_std))}
    best = max(scores, key=scores.get)
    return best, {str(candidate): round(score, 4) for candidate, score in scores.items()}


def compare_baselines(validation, test, noise_std, methods=DEFAULT_METHODS):
    """Every method at one noise level: chosen on ``validation``, scored on ``test``.

    Args:
        validation: ``(clean, noisy)`` pairs of training letters at ``noise_std``.
        test: ``(clean, noisy)`` pairs of test letters at ``noise_std``.
        noise_std: the noise level (>= 0).
        methods: names of :data:`METHODS`.

    Returns:
        One dict per method: ``method``, ``parameter`` (its name), ``value``,
        ``psnr`` and ``ssim`` (means over the test letters), ``seconds_per_1000``
        (denoising time per 1,000 test letters) and ``validation``
        (``{candidate: mean PSNR}``).
    """
    methods = check_methods(methods)
    noise_std = check_noise_std(noise_std)
    test_noisy, test_clean = check_pair(test[1], test[0], "test noisy", "test clean")
    rows = []
    for method in methods:
        value, scores = choose_parameter(method, validation[0], validation[1], noise_std)
        started = time.perf_counter()
        denoised = denoise(method, test_noisy, value)
        seconds = time.perf_counter() - started
        quality = image_quality(test_clean, denoised)
        rows.append({"method": method, "parameter": METHODS[method].parameter, "value": value,
                     "psnr": float(np.mean(quality["psnr"])), "ssim": float(np.mean(quality["ssim"])),
                     "seconds_per_1000": round(1000 * seconds / len(test_clean), 3), "validation": scores})
    return rows


def best_baseline(rows, metric="psnr"):
    """The row of ``compare_baselines`` with the highest ``metric`` (``"psnr"`` or ``"ssim"``)."""
    if not rows:
        raise ValueError("Expected rows of at least one method. Received: rows=[]")
    return max(rows, key=lambda row: row[metric])
