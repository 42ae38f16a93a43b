"""Figures of sweeps: several seeds per model and setting, with their intervals.

Like ``denoising_vae.plots``, every function returns a ``matplotlib.figure.Figure``
(saved when given ``path``) and needs no TensorFlow; intervals come from the
rows of ``study.sweep.summarise``. The classical denoisers are drawn beside
the models where the same noise level applies.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .plots import CLASSICAL_COLOURS, finish_figure

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
    return finish_figure(figure, path)


def plot_metric_against_setting(summary, setting, metrics, fixed=None, baselines=None, path=None):
    """Each metric against one swept setting, one line per architecture, 95 % intervals as error bars.

    Args:
        summary: rows of ``sweep.summarise`` (model, latent_dim, noise_std,
            beta, metrics: {name: {mean, ci95, ...}}).
        setting: ``"latent_dim"``, ``"noise_std"`` or ``"beta"``, the x axis.
        metrics: ``[(key, label), ...]`` to draw, one axis each.
        fixed: ``{other setting: value}`` that rows must match (the others'
            first values), or ``None`` for every row.
        baselines: for ``setting == "noise_std"``, classical denoisers'
            ``{method: {"noise_std": [...], "psnr": [...], "ssim": [...]}}``,
            drawn dashed on the PSNR and SSIM axes at the swept noise levels.

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
            swept = sorted({float(row[setting]) for row in rows})
            for index, (method, curve) in enumerate((baselines or {}).items()):
                points = [(std, value) for std, value in zip(curve["noise_std"], curve[key.split("_")[0]])
                          if float(std) in swept]
                if points:
                    axis.plot(*zip(*points), "--D", color=CLASSICAL_COLOURS[index % len(CLASSICAL_COLOURS)], markersize=3,
                              linewidth=1, label=f"{method} (classical)")
        axis.set_xlabel(setting)
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return finish_figure(figure, path)


def plot_comparison_across_seeds(summary, metrics, baselines=None, path=None):
    """Test metrics side by side per model (one setting): the mean and its 95 % interval.

    Args:
        summary: rows of ``sweep.summarise`` for one setting, one per model.
        metrics: ``[(key, label), ...]``, one axis each.
        baselines: rows of ``baselines.compare_baselines`` at the setting's
            noise level, or ``None``: the best one's PSNR and SSIM are drawn
            as lines on those axes, or named in a note on the axis when a line
            there would squeeze the models' intervals flat.

    Returns:
        Figure with one axis per metric (three per row), a dot with error bars per model.
    """
    if not summary:
        raise ValueError("Expected summary rows of at least one model. Received: none")
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
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
        if baselines and key in ("psnr_reconstructed", "ssim_reconstructed"):
            metric = key.split("_")[0]
            best = max(baselines, key=lambda row: row[metric])
            text = f"best classical: {best['method']} ({best['parameter']} {best['value']:g}): {best[metric]:.3g}"
            low = np.nanmin(np.subtract(means, lows))
            high = np.nanmax(np.add(means, highs))
            span = max(high - low, 1e-9)
            if low - 3 * span <= best[metric] <= high + 3 * span:
                axis.axhline(best[metric], color="grey", linestyle="--", linewidth=1, label=text)
                axis.legend(fontsize=7)
            else:  # far off: a line would flatten the models' intervals
                axis.text(0.5, 0.97 if best[metric] > high else 0.03, ("above: " if best[metric] > high else
                          "below: ") + text, transform=axis.transAxes, ha="center",
                          va="top" if best[metric] > high else "bottom", fontsize=7, color="dimgrey")
        axis.set_xticks(range(len(names)), names)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_title(f"{label} (n = {summary[0]['n']})", fontsize=10)
        axis.grid(alpha=0.3, axis="y")
    return finish_figure(figure, path)
