"""Figures of the study (the report's Plot1, Plot2 and Plot3, and two more).

Every function returns a ``matplotlib.figure.Figure`` (a notebook shows it)
and saves it as well when given ``path``; none calls ``plt.show()`` or
touches pyplot's global state. Images are drawn grayscale, upright, without
interpolation. This module needs no TensorFlow: decoding is passed in as a
function.
"""
from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .core import files
from .core.constants import LETTERS

# 26 distinguishable colours: matplotlib's tab20 followed by six of Dark2.
_TAB20 = [mcolors.to_hex(c) for c in
          ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
           "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
           "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"]]
LETTER_COLOURS = _TAB20 + ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]

_CURVES = (("loss", "loss (nats per image)"), ("accuracy", "pixel accuracy"),
           ("reconstruction", "reconstruction (nats)"), ("kl", "KL divergence (nats)"))


def finish_figure(figure, path):
    """Save ``figure`` to ``path`` (when given) whole or not at all; return it."""
    if path is not None:
        path = Path(path)
        with files.replacing(path, suffix=path.suffix) as partial:
            figure.savefig(partial, dpi=110, bbox_inches="tight")
    return figure


def _image(axis, image, title=None):
    axis.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=9)


def plot_learning_curves(histories, path=None):
    """Learning curves per model (the report's Plot1).

    Args:
        histories: ``{model name: history}``, each history mapping ``loss``,
            ``accuracy``, ``reconstruction``, ``kl`` and their ``val_``
            versions to per-epoch lists (as ``training.TrainingResult.history``).
        path: where to save the PNG, or ``None``.

    Returns:
        Figure with one row per model and four columns: loss, pixel accuracy,
        reconstruction and KL, each on its own axis (the KL is a few nats
        beside a reconstruction of hundreds); train solid, validation dashed.
    """
    if not histories:
        raise ValueError("Expected histories of at least one model. Received: histories={}")
    figure = Figure(figsize=(16, 3.0 * len(histories)), layout="constrained")
    axes = figure.subplots(len(histories), len(_CURVES), squeeze=False)
    for row, (name, history) in enumerate(histories.items()):
        epochs = np.arange(1, len(history["loss"]) + 1)
        for column, (key, label) in enumerate(_CURVES):
            axis = axes[row, column]
            axis.set_title(f"{name}: {label}", fontsize=10)
            if key == "kl" and not any(history.get("kl", [])):
                axis.text(0.5, 0.5, "no KL term (plain autoencoder)", ha="center", va="center",
                          transform=axis.transAxes, fontsize=9, color="grey")
                axis.set_xticks([])
                axis.set_yticks([])
                continue
            axis.plot(epochs, history[key], "-o", color="C0", markersize=3, label="train")
            if f"val_{key}" in history:
                axis.plot(epochs, history[f"val_{key}"], "--s", color="C1", markersize=3, label="validation")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    return finish_figure(figure, path)


def distinct_letter_indices(labels, n=10, seed=0):
    """Indices of ``n`` images with different letters where possible (letters in order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for letter in rng.permutation(np.unique(labels)):
        chosen.append(int(rng.choice(np.flatnonzero(labels == letter))))
        if len(chosen) == n:
            break
    if len(chosen) < n:  # fewer letters than n: fill with other images
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen += [int(i) for i in rng.choice(rest, min(n - len(chosen), len(rest)), replace=False)]
    return np.array(sorted(chosen, key=lambda i: (labels[i], i)))


def plot_reconstructions(x_clean, x_noisy, x_reconstructed, labels=None, title=None, path=None):
    """Original / noisy / reconstructed columns (the report's Plot2).

    Args:
        x_clean, x_noisy, x_reconstructed: (n, 28, 28[, 1]) in [0, 1], same n.
        labels: (n,) letter indices for row labels, or ``None``.
        title: figure title (e.g. the model's name).

    Returns:
        Figure with 3 axes (original, noisy, reconstructed), each one image of
        the n letters stacked (n * 28, 28); the first axis names the letters.
    """
    count = len(x_clean)
    if not (len(x_noisy) == len(x_reconstructed) == count) or count == 0:
        raise ValueError("Expected x_clean, x_noisy and x_reconstructed with the same number (>= 1) of images. "
                         f"Received: {count}, {len(x_noisy)} and {len(x_reconstructed)}")
    # One stacked image per column: 3 axes draw and save several times faster than 3 n.
    figure = Figure(figsize=(3.6, 1.2 * count + 0.4), layout="constrained")
    axes = figure.subplots(1, 3, squeeze=False)[0]
    for axis, (images, name) in zip(axes, ((x_clean, "original"), (x_noisy, "noisy"),
                                           (x_reconstructed, "reconstructed"))):
        _image(axis, np.asarray(images).reshape(count * 28, 28), name)
    if labels is not None:
        axes[0].set_yticks(np.arange(count) * 28 + 13.5, [LETTERS[int(label)] for label in labels], fontsize=11)
        axes[0].tick_params(axis="y", length=0)
    if title:
        figure.suptitle(title, fontsize=10)
    return finish_figure(figure, path)


def latent_grid_values(n=15, low=0.05, high=0.95):
    """``n`` latent values: the standard normal's quantiles evenly spaced in [low, high]."""
    return np.array([NormalDist().inv_cdf(q) for q in np.linspace(low, high, n)], dtype=np.float32)


def plot_latent_sweep(decode, latent_dim, n=15, low=0.05, high=0.95, title=None, path=None):
    """Images decoded while sweeping the latent variables (the report's Plot3).

    The values are quantiles of N(0, 1) from ``low`` to ``high`` (the inverse
    normal CDF, as in Kingma & Welling 2014, fig. 4), so the grid covers the
    prior evenly. With ``latent_dim == 2`` an n x n grid over (z1, z2); with
    more, one row per dimension, the other dimensions held at 0.

    Args:
        decode: function (m, latent_dim) float32 -> (m, 28, 28[, 1]) images,
            called once with every point of the figure.
        latent_dim: size of the latent space, >= 1.
        n: values per dimension, >= 2.

    Returns:
        Figure with the decoded images tiled in one image, axes labelled with z.
    """
    if n < 2:
        raise ValueError(f"Expected n >= 2. Received: n={n}")
    values = latent_grid_values(n, low, high)
    if latent_dim == 2:
        z1, z2 = np.meshgrid(values, values[::-1])  # z2 grows upwards
        points = np.stack([z1.ravel(), z2.ravel()], axis=1)
        rows = n
    else:
        points = np.zeros((latent_dim * n, latent_dim), np.float32)
        for dimension in range(latent_dim):
            points[dimension * n:(dimension + 1) * n, dimension] = values
        rows = latent_dim
    images = np.asarray(decode(points.astype(np.float32))).reshape(rows, n, 28, 28)
    mosaic = images.transpose(0, 2, 1, 3).reshape(rows * 28, n * 28)
    figure = Figure(figsize=(0.55 * n + 1.2, 0.55 * rows + 1.0), layout="constrained")
    axis = figure.subplots()
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    centres = np.arange(n) * 28 + 13.5
    labels = [f"{v:.2f}" for v in values]
    axis.set_xticks(centres, labels, rotation=90, fontsize=7)
    if latent_dim == 2:
        axis.set_yticks(np.arange(rows) * 28 + 13.5, labels[::-1], fontsize=7)
        axis.set_xlabel("z1")
        axis.set_ylabel("z2")
    else:
        axis.set_yticks(np.arange(rows) * 28 + 13.5, [f"z{d + 1}" for d in range(rows)], fontsize=8)
        axis.set_xlabel("value of the swept dimension (others 0)")
    if title:
        axis.set_title(title, fontsize=10)
    return finish_figure(figure, path)


def plot_latent_map(z, labels, title=None, path=None):
    """Test-set encoder means coloured by letter, each letter drawn at its centroid.

    Args:
        z: (N, D) encoder means; the first two dimensions are drawn.
        labels: (N,) letter indices 0-25.

    Returns:
        Figure with one scatter axis.
    """
    z = np.asarray(z)
    labels = np.asarray(labels)
    if z.ndim != 2 or len(z) != len(labels) or len(z) == 0:
        raise ValueError(f"Expected z of shape (N, D) and labels of shape (N,). Received: z.shape={z.shape}, "
                         f"labels.shape={labels.shape}")
    second = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axis = figure.subplots()
    colours = np.array(LETTER_COLOURS)[labels]
    axis.scatter(z[:, 0], second, c=colours, s=4, alpha=0.5, linewidths=0)
    for letter in np.unique(labels):
        mask = labels == letter
        axis.text(z[mask, 0].mean(), second[mask].mean(), LETTERS[letter], fontsize=13, weight="bold",
                  ha="center", va="center", color=LETTER_COLOURS[letter],
                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
    axis.set_xlabel("z1 (encoder mean)")
    axis.set_ylabel("z2 (encoder mean)" if z.shape[1] > 1 else "")
    axis.grid(alpha=0.3)
    if title:
        axis.set_title(title, fontsize=10)
    return finish_figure(figure, path)


_COMPARED = (("psnr_reconstructed", "PSNR of the reconstruction (dB)"),
             ("ssim_reconstructed", "SSIM of the reconstruction"),
             ("accuracy", "pixel accuracy"), ("loss", "test loss (nats per image)"))


def plot_comparison(test_metrics, robustness=None, baselines=None, study_noise_std=None, path=None):
    """All models side by side, and beside the classical denoisers.

    Values are dots on an axis fitted to them (bars from zero would hide
    differences of 1-2 %).

    Args:
        test_metrics: ``{model name: evaluate() dict}`` (the whole test set).
        robustness: ``{"noise_std": [...], "psnr": {"noisy": [...], model: [...]},
            "ssim": {...}}``: mean PSNR and SSIM of the noisy input and of each
            model's reconstruction per noise level, or ``None``.
        baselines: ``{method: {"noise_std": [...], "psnr": [...], "ssim": [...]}}``
            of classical denoisers on the same letters as ``robustness``, or ``None``.
        study_noise_std: the noise level of the models' side-by-side panels of
            the second row (models and classical denoisers on the same letters).

    Returns:
        Figure: the four test metrics in the first row; given ``robustness``, a
        second row with PSNR and SSIM of models and classical denoisers at
        ``study_noise_std`` and both against the noise level.
    """
    if not test_metrics:
        raise ValueError("Expected test_metrics of at least one model. Received: test_metrics={}")
    rows = 1 + (robustness is not None)
    figure = Figure(figsize=(14, 3.5 * rows), layout="constrained")
    axes = figure.subplots(rows, len(_COMPARED), squeeze=False)
    names = list(test_metrics)
    for axis, (key, label) in zip(axes[0], _COMPARED):
        _dots(axis, names, [test_metrics[name].get(key, np.nan) for name in names])
        if key in ("psnr_reconstructed", "ssim_reconstructed"):
            noisy = np.mean([test_metrics[name][key.replace("reconstructed", "noisy")] for name in names])
            axis.set_title(f"{label}\n(noisy input: {noisy:.3g})", fontsize=9)
        else:
            axis.set_title(label, fontsize=9)
    if robustness is None:
        return finish_figure(figure, path)
    baselines = baselines or {}
    stds = [float(v) for v in robustness["noise_std"]]
    for axis, metric in zip(axes[1, :2], ("psnr", "ssim")):
        if study_noise_std is None or float(study_noise_std) not in stds:
            axis.set_visible(False)
            continue
        level = stds.index(float(study_noise_std))
        labels = names + list(baselines)
        values = [robustness[metric][name][level] if name in robustness[metric] else np.nan for name in names]
        values += [curve[metric][curve["noise_std"].index(float(study_noise_std))]
                   if float(study_noise_std) in curve["noise_std"] else np.nan for curve in baselines.values()]
        _dots(axis, labels, values, classical=len(names))
        axis.axhline(robustness[metric]["noisy"][level], color="k", linestyle=":", linewidth=1, label="noisy input")
        axis.legend(fontsize=7)
        axis.set_title(f"{metric.upper()}, noise std {float(study_noise_std):g}, first "
                       f"{robustness.get('letters', '')} test letters\n(models, then classical denoisers)", fontsize=9)
    for axis, metric in zip(axes[1, 2:], ("psnr", "ssim")):
        noisy = np.asarray(robustness[metric]["noisy"], dtype=float)
        # At std 0 the "noisy" input is the clean image (PSNR capped at 100 dB): keep it off the scale.
        shown = [noisy[np.asarray(stds) > 0]]
        axis.plot(stds, noisy, "k:o", markersize=3, label="noisy input")
        for index, name in enumerate(names):
            if name in robustness[metric]:
                axis.plot(stds, robustness[metric][name], "-o", color=f"C{index}", markersize=3, label=name)
                shown.append(np.asarray(robustness[metric][name], dtype=float))
        for index, (method, curve) in enumerate(baselines.items()):
            axis.plot(curve["noise_std"], curve[metric], "--", color=CLASSICAL_COLOURS[index % len(CLASSICAL_COLOURS)],
                      linewidth=1, label=method)
            shown.append(np.asarray(curve[metric], dtype=float)[np.asarray(curve["noise_std"]) > 0])
        values = np.concatenate(shown)
        margin = 0.05 * (values.max() - values.min())
        axis.set_ylim(values.min() - margin, values.max() + margin)
        axis.set_xlabel("test noise std")
        axis.set_title(f"{metric.upper()} against the noise (dashed: classical)", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, ncol=2)
    return finish_figure(figure, path)


CLASSICAL_COLOURS = ("#555555", "#8c564b", "#bcbd22", "#17becf", "#e377c2")


def _dots(axis, labels, values, classical=None):
    """One dot per label on an axis fitted to the values; labels from index ``classical`` on are
    classical denoisers, drawn grey as diamonds."""
    for index, (label, value) in enumerate(zip(labels, values)):
        is_classical = classical is not None and index >= classical
        colour = CLASSICAL_COLOURS[(index - classical) % len(CLASSICAL_COLOURS)] if is_classical else f"C{index}"
        axis.plot([index], [value], "D" if is_classical else "o", color=colour, markersize=7)
        if np.isfinite(value):
            axis.annotate(f"{value:.4g}", (index, value), textcoords="offset points", xytext=(0, 6),
                          ha="center", fontsize=7)
    axis.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30 if len(labels) > 4 else 0)
    axis.set_xlim(-0.6, len(labels) - 0.4)
    finite = np.asarray(values, dtype=float)[np.isfinite(values)]
    if len(finite):
        spread = max(finite.max() - finite.min(), 1e-3 * max(abs(finite.max()), 1e-9))
        axis.set_ylim(finite.min() - 0.25 * spread, finite.max() + 0.35 * spread)
    axis.grid(alpha=0.3, axis="y")


def plot_letter_grid(images, labels, per_letter=4, title=None, path=None):
    """A sample of a data set: ``per_letter`` images of every letter, one column per letter.

    Args:
        images: (N, 28, 28[, 1]) in [0, 1]. labels: (N,) letter indices 0-25.

    Returns:
        Figure with a single mosaic image (per_letter rows x 26 columns).
    """
    images = np.asarray(images).reshape(len(images), 28, 28)
    labels = np.asarray(labels)
    present = [letter for letter in range(len(LETTERS)) if np.count_nonzero(labels == letter) >= per_letter]
    if not present:
        raise ValueError(f"Expected at least {per_letter} images of some letter. Received: {len(images)} images")
    mosaic = np.zeros((per_letter * 28, len(present) * 28), np.float32)
    for column, letter in enumerate(present):
        for row, index in enumerate(np.flatnonzero(labels == letter)[:per_letter]):
            mosaic[row * 28:(row + 1) * 28, column * 28:(column + 1) * 28] = images[index]
    figure = Figure(figsize=(0.5 * len(present) + 0.5, 0.5 * per_letter + 0.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xticks(np.arange(len(present)) * 28 + 13.5, [LETTERS[letter] for letter in present], fontsize=8)
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=10)
    return finish_figure(figure, path)
