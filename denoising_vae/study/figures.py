"""The run folder's figures: each model's own, the study's comparison and robustness curve, a sweep's.

Every figure is drawn by ``denoising_vae.plots`` and written whole or not at
all; these functions return ``{key: file name}`` for ``results.json`` and the report.
"""
from __future__ import annotations

import numpy as np

from ..core import files
from ..data import noise_addition
from .config import ROBUSTNESS_STDS


def make_figures(out, config, trained, finished, x_test, y_test, x_test_noisy, made=None):
    """Every figure as PNG under ``out``; returns ``{key: file name}``.

    ``made``: ``{name: model_figures(...)}`` of models whose own figures were
    made already (in :func:`run_study`, once a core was free of training); the others' are made here.
    """
    from .. import evaluation, plots

    made = dict(made or {})
    for name, model in trained.items():
        if name not in made:
            made[name] = model_figures(out, config, name, model, x_test, y_test, x_test_noisy)
    figures = {"learning_curves": "learning_curves.png"}
    plots.plot_learning_curves({name: finished[name]["history"] for name in trained},
                               path=out / figures["learning_curves"])
    clean, noisy_levels = _robustness_inputs(config, x_test)
    robustness = {"noise_std": list(ROBUSTNESS_STDS),
                  "noisy": [float(np.mean(evaluation.psnr(clean, noisy))) for noisy in noisy_levels]}
    for name in trained:
        own_figures, robustness[name] = made[name]
        figures.update(own_figures)
    figures["comparison"] = "comparison.png"
    plots.plot_comparison({name: finished[name]["test"] for name in trained}, robustness,
                          path=out / figures["comparison"])
    files.write_json(out / "robustness.json", robustness)
    return figures


def _robustness_inputs(config, x_test):
    """The first (up to) 1,000 test letters and their noisy copies at each of ``ROBUSTNESS_STDS``."""
    clean = x_test[:min(len(x_test), 1000)]
    return clean, [noise_addition(clean, float(std), seed=config.seed + 11) for std in ROBUSTNESS_STDS]


def model_figures(out, config, name, model, x_test, y_test, x_test_noisy):
    """One model's own figures under ``out`` (reconstructions, its latent map and, for a VAE, a
    decoded latent grid) and its robustness curve.

    Returns ``({key: file name}, [mean PSNR of its reconstructions at each of ROBUSTNESS_STDS])``.
    """
    from .. import evaluation, plots

    chosen = plots.distinct_letter_indices(y_test, 10, seed=config.seed)
    figures = {f"reconstructions_{name}": f"reconstructions_{name}.png"}
    reconstructed = evaluation.reconstruct(model, x_test_noisy[chosen])
    plots.plot_reconstructions(x_test[chosen], x_test_noisy[chosen], reconstructed, y_test[chosen], title=name,
                               path=out / figures[f"reconstructions_{name}"])
    if model.variational:
        figures[f"latent_sweep_{name}"] = f"latent_sweep_{name}.png"
        plots.plot_latent_sweep(lambda z: evaluation.decode(model, z), model.latent_dim, n=15,
                                title=f"{name}: decoded latent grid", path=out / figures[f"latent_sweep_{name}"])
    figures[f"latent_map_{name}"] = f"latent_map_{name}.png"
    plots.plot_latent_map(evaluation.encode_mean(model, x_test_noisy), y_test,
                          title=f"{name}: test set in latent space", path=out / figures[f"latent_map_{name}"])
    clean, noisy_levels = _robustness_inputs(config, x_test)
    robustness = [float(np.mean(evaluation.psnr(clean, evaluation.reconstruct(model, noisy))))
                  for noisy in noisy_levels]
    return figures, robustness


SWEEP_METRICS = (("loss", "test loss (nats)"), ("psnr_reconstructed", "PSNR reconstructed (dB)"),
                  ("ssim_reconstructed", "SSIM reconstructed"), ("log_likelihood", "log p(x) (nats)"))


def sweep_figures(out, config, cells, cell_results, summary):
    """The sweep's own figures: curves with a band across seeds, and each metric against each swept setting."""
    from .. import plots

    figures = {}
    firsts = {s: config.values(s)[0] for s in ("latent_dim", "noise_std", "beta")}
    histories = {}
    for cell, result in zip(cells, cell_results):
        if result.get("status") == "done" and all(getattr(cell, s) == v for s, v in firsts.items()):
            histories.setdefault(cell.model, []).append(result["history"])
    if histories:
        figures["learning_curves_seeds"] = "learning_curves_seeds.png"
        plots.plot_learning_curve_bands(histories, "loss", path=out / figures["learning_curves_seeds"])
    first_rows = [row for row in summary if all(row[s] == v for s, v in firsts.items()) and row["n"]]
    if first_rows:
        figures["comparison_seeds"] = "comparison_seeds.png"
        plots.plot_comparison_across_seeds(first_rows, SWEEP_METRICS, path=out / figures["comparison_seeds"])
    for setting in ("latent_dim", "noise_std", "beta"):
        if len(config.values(setting)) < 2:
            continue
        fixed = {s: v for s, v in firsts.items() if s != setting}
        figures[f"against_{setting}"] = f"against_{setting}.png"
        plots.plot_metric_against_setting(summary, setting, SWEEP_METRICS, fixed=fixed,
                                          path=out / figures[f"against_{setting}"])
    return figures
