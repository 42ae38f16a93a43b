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

from .core import files
from .core.constants import LETTERS

# 26 distinguishable colours: matplotlib's tab20 followed by six of Dark2.
_TAB20 = [mcolors.to_hex(c) for c in
          ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
           "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
           "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"]]
LETTER_COLOURS = _TAB20 + ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]

_CURVES = (("loss", "loss (nats per image)"), ("accuracy", "pixel accuracy"),
           ("reconstruction", "reconstruction and KL (nats)"))


def _finish(figure, path):
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
        Figure with one row per model and three columns: loss, accuracy, and
        reconstruction with KL (train solid, validation dashed).
    """
    if not histories:
        raise ValueError("Expected histories of at least one model. Received: histories={}")
    figure = Figure(figsize=(13, 3.2 * len(histories)), layout="constrained")
    axes = figure.subplots(len(histories), 3, squeeze=False)
    for row, (name, history) in enumerate(histories.items()):
        epochs = np.arange(1, len(history["loss"]) + 1)
        for column, (key, label) in enumerate(_CURVES):
            axis = axes[row, column]
            keys = [key, "kl"] if key == "reconstruction" else [key]
            for index, metric in enumerate(keys):
                if metric == "kl" and not any(history.get("kl", [])):
                    continue  # the plain autoencoder has no KL term
                colour = f"C{index}"
                axis.plot(epochs, history[metric], "-o", color=colour, markersize=3, label=f"train {metric}")
                if f"val_{metric}" in history:
                    axis.plot(epochs, history[f"val_{metric}"], "--s", color=colour, markersize=3,
                              label=f"validation {metric}")
            axis.set_title(f"{name}: {label}", fontsize=10)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    return _finish(figure, path)


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
    return _finish(figure, path)


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
    return _finish(figure, path)


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
    return _finish(figure, path)


_COMPARED = (("psnr_reconstructed", "PSNR of the reconstruction (dB)"),
             ("ssim_reconstructed", "SSIM of the reconstruction"),
             ("accuracy", "pixel accuracy"), ("loss", "test loss (nats per image)"))


def plot_comparison(test_metrics, robustness=None, path=None):
    """All models side by side: test metrics, and PSNR against the test noise level.

    Args:
        test_metrics: ``{model name: evaluate() dict}``.
        robustness: ``{"noise_std": [...], "noisy": [psnr...], model name: [psnr...]}``
            (PSNR of the noisy input and of each model's reconstruction per
            noise level), or ``None``.

    Returns:
        Figure with one bar chart per metric and, given ``robustness``, the curve.
    """
    if not test_metrics:
        raise ValueError("Expected test_metrics of at least one model. Received: test_metrics={}")
    panels = len(_COMPARED) + (robustness is not None)
    figure = Figure(figsize=(3.4 * panels, 3.4), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    names = list(test_metrics)
    for axis, (key, label) in zip(axes, _COMPARED):
        values = [test_metrics[name].get(key, np.nan) for name in names]
        bars = axis.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        axis.bar_label(bars, fmt="%.3g", fontsize=7)
        if key == "psnr_reconstructed":
            noisy = np.mean([test_metrics[name]["psnr_noisy"] for name in names])
            axis.axhline(noisy, color="k", linestyle=":", label="noisy input")
            axis.legend(fontsize=7)
        axis.set_title(label, fontsize=9)
        axis.tick_params(axis="x", labelsize=8)
    if robustness is not None:
        axis = axes[-1]
        stds = np.asarray(robustness["noise_std"], dtype=float)
        noisy = np.asarray(robustness["noisy"], dtype=float)
        # At std 0 the "noisy" input is the clean image (PSNR capped at 100 dB): keep it off the scale.
        shown = [noisy[stds > 0]]
        axis.plot(stds, noisy, "k:o", markersize=3, label="noisy input")
        for index, name in enumerate(names):
            if name in robustness:
                axis.plot(stds, robustness[name], "-o", color=f"C{index}", markersize=3, label=name)
                shown.append(np.asarray(robustness[name], dtype=float))
        values = np.concatenate(shown)
        axis.set_ylim(values.min() - 1, values.max() + 3)
        axis.set_xlabel("test noise std")
        axis.set_ylabel("PSNR (dB)")
        axis.set_title("robustness to noise", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _finish(figure, path)


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
    return _finish(figure, path)


# --------------------------------------------------------------------------
# Sweeps: several seeds per model and setting
# --------------------------------------------------------------------------

def plot_learning_curve_bands(histories, metric="loss", path=None):
    """Learning curves across seeds: the mean per epoch and a band from the lowest to the highest seed.

    Args:
        histories: ``{label: [history, ...]}``, one history per seed (as in
            :func:`plot_learning_curves`), equally long within a label.
        metric: the history key to draw; its ``val_`` version is drawn dashed.

    Returns:
        Figure with one axis: train (solid) and validation (dashed) per label.
    """
    if not histories:
        raise ValueError("Expected histories of at least one model. Received: histories={}")
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axis = figure.subplots()
    for index, (label, runs) in enumerate(histories.items()):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            curves = [run[key] for run in runs if key in run]
            if not curves:
                continue
            length = min(len(curve) for curve in curves)
            values = np.array([curve[:length] for curve in curves], dtype=np.float64)
            epochs = np.arange(1, length + 1)
            axis.plot(epochs, values.mean(0), style, color=f"C{index}",
                      label=f"{label} {'validation' if key.startswith('val_') else 'train'} (n={len(values)})")
            axis.fill_between(epochs, values.min(0), values.max(0), color=f"C{index}", alpha=0.15)
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric}: mean over seeds, band from lowest to highest seed", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _finish(figure, path)


def plot_metric_against_setting(summary, setting, metrics, fixed=None, path=None):
    """Each metric against one swept setting, one line per architecture, 95 % intervals as error bars.

    Args:
        summary: rows of ``sweep.summarise`` (model, latent_dim, noise_std,
            beta, metrics: {name: {mean, ci95, ...}}).
        setting: ``"latent_dim"``, ``"noise_std"`` or ``"beta"``, the x axis.
        metrics: ``[(key, label), ...]`` to draw, one axis each.
        fixed: ``{other setting: value}`` that rows must match (the others'
            first values), or ``None`` for every row.

    Returns:
        Figure with one axis per metric.
    """
    rows = [row for row in summary if all(row[key] == value for key, value in (fixed or {}).items())]
    if not rows:
        raise ValueError(f"Expected summary rows to plot against {setting}. Received: none match {fixed}")
    figure = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    models = list(dict.fromkeys(row["model"] for row in rows))
    for axis, (key, label) in zip(axes, metrics):
        for index, model in enumerate(models):
            points = sorted((row[setting], row["metrics"][key]) for row in rows
                            if row["model"] == model and key in row["metrics"])
            if not points:
                continue
            x = [value for value, _ in points]
            mean = np.array([m["mean"] for _, m in points])
            low = np.array([m["mean"] - m["ci95"][0] if m["ci95"] else 0.0 for _, m in points])
            high = np.array([m["ci95"][1] - m["mean"] if m["ci95"] else 0.0 for _, m in points])
            axis.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, color=f"C{index}", label=model)
        if setting == "latent_dim":
            axis.set_xscale("log", base=2)
            values = sorted({row[setting] for row in rows})
            axis.set_xticks(values, [str(value) for value in values])
            axis.minorticks_off()
        if key in ("psnr_reconstructed", "ssim_reconstructed"):  # the noisy input's level for reference
            noisy = key.replace("reconstructed", "noisy")
            references = sorted({(row[setting], row["metrics"][noisy]["mean"]) for row in rows
                                 if noisy in row["metrics"]})
            if references:
                axis.plot([v for v, _ in references], [m for _, m in references], ":", color="grey",
                          label="noisy input")
        axis.set_xlabel(setting)
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return _finish(figure, path)


def plot_comparison_across_seeds(summary, metrics, path=None):
    """Test metrics side by side per model (one setting): the mean and its 95 % interval.

    Args:
        summary: rows of ``sweep.summarise`` for one setting, one per model.
        metrics: ``[(key, label), ...]``, one axis each.

    Returns:
        Figure with one axis per metric, a dot with error bars per model.
    """
    if not summary:
        raise ValueError("Expected summary rows of at least one model. Received: none")
    figure = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    names = [row["model"] for row in summary]
    for axis, (key, label) in zip(axes, metrics):
        means, lows, highs = [], [], []
        for row in summary:
            stats = row["metrics"].get(key)
            means.append(stats["mean"] if stats else np.nan)
            interval = stats["ci95"] if stats and stats["ci95"] else None
            lows.append(stats["mean"] - interval[0] if interval else 0.0)
            highs.append(interval[1] - stats["mean"] if interval else 0.0)
        for index, name in enumerate(names):  # a dot and its interval: a bar from 0 would hide the spread
            axis.errorbar([index], [means[index]], yerr=[[lows[index]], [highs[index]]], marker="o", capsize=5,
                          color=f"C{index}")
        axis.set_xticks(range(len(names)), names)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_title(f"{label} (n = {summary[0]['n']})", fontsize=10)
        axis.grid(alpha=0.3, axis="y")
    return _finish(figure, path)
