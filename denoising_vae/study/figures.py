"""The run folder's figures: each model's own, the study's comparison and robustness curve, a sweep's.

Every figure is drawn by ``denoising_vae.plots`` and written whole or not at
all; these functions return ``{key: file name}`` for ``results.json`` and the report.
"""
from __future__ import annotations

import numpy as np

from ..core import files
from .yardstick import ROBUSTNESS_LETTERS, robustness_letters


def make_figures(out, config, trained, finished, x_test, y_test, x_test_noisy, made=None, baselines=None):
    """Every figure as PNG under ``out``; returns ``{key: file name}``.

    ``made``: ``{name: model_figures(...)}`` of models whose own figures were
    made already (in :func:`run_study`, once a core was free of training); the others' are made here.
    ``baselines``: the ``results.json`` section of the classical denoisers, drawn beside the models.
    Also writes ``robustness.json``: mean PSNR and SSIM of the noisy input and of each model's
    reconstructions at each noise level, on the same test letters as the classical denoisers.
    """
    from .. import evaluation, plots

    made = dict(made or {})
    for name, model in trained.items():
        if name not in made:
            made[name] = model_figures(out, config, name, model, x_test, y_test, x_test_noisy)
    figures = {"learning_curves": "learning_curves.png"}
    plots.plot_learning_curves({name: finished[name]["history"] for name in trained},
                               path=out / figures["learning_curves"])
    levels = config.noise_levels()
    noisy_quality = [_quality(evaluation, *robustness_letters(x_test, std, config.seed)) for std in levels]
    robustness = {"noise_std": levels, "letters": min(len(x_test), ROBUSTNESS_LETTERS),
                  "psnr": {"noisy": [q[0] for q in noisy_quality]}, "ssim": {"noisy": [q[1] for q in noisy_quality]}}
    for name in trained:
        own_figures, (robustness["psnr"][name], robustness["ssim"][name]) = made[name]
        figures.update(own_figures)
    figures["comparison"] = "comparison.png"
    plots.plot_comparison({name: finished[name]["test"] for name in trained}, robustness,
                          baseline_curves(baselines), study_noise_std=config.values("noise_std")[0],
                          path=out / figures["comparison"])
    files.write_json(out / "robustness.json", robustness)
    return figures


def _quality(evaluation, clean, images):
    """Mean PSNR and SSIM of ``images`` against ``clean``, as floats."""
    quality = evaluation.image_quality(clean, images)
    return float(np.mean(quality["psnr"])), float(np.mean(quality["ssim"]))


def baseline_curves(baselines):
    """``{method: {"noise_std": [...], "psnr": [...], "ssim": [...], "value": [...]}}`` from the
    ``results.json`` section of the classical denoisers (``None``: ``{}``)."""
    curves = {}
    for key, rows in sorted((baselines or {}).get("levels", {}).items(), key=lambda item: float(item[0])):
        for row in rows:
            curve = curves.setdefault(row["method"], {"noise_std": [], "psnr": [], "ssim": [], "value": []})
            curve["noise_std"].append(float(key))
            for field in ("psnr", "ssim", "value"):
                curve[field].append(row[field])
    return curves


def model_figures(out, config, name, model, x_test, y_test, x_test_noisy):
    """One model's own figures under ``out`` (reconstructions, its latent map and, for a VAE, a
    decoded latent grid) and its robustness curve.

    Returns ``({key: file name}, (mean PSNRs, mean SSIMs))``: its reconstructions' at each of
    ``config.noise_levels()``, on the letters of ``yardstick.robustness_letters``.
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
    quality = []
    for std in config.noise_levels():
        clean, noisy = robustness_letters(x_test, std, config.seed)
        quality.append(_quality(evaluation, clean, evaluation.reconstruct(model, noisy)))
    return figures, ([q[0] for q in quality], [q[1] for q in quality])


SWEEP_METRICS = (("loss", "test loss (nats)"), ("psnr_reconstructed", "PSNR reconstructed (dB)"),
                  ("ssim_reconstructed", "SSIM reconstructed"), ("log_likelihood", "log p(x) (nats)"))
LATENT_METRICS = (("probe_accuracy", "linear-probe accuracy"), ("knn_accuracy", "k-NN accuracy"),
                  ("active_units", "active units"))


def sweep_figures(out, config, cells, cell_results, summary, baselines=None):
    """The sweep's own figures: curves with a band across seeds, each metric against each swept
    setting (the classical denoisers beside the models against the noise), and the latent measures
    against the latent size."""
    from .. import sweep_plots as plots

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
        first_noise = f"{firsts['noise_std']:g}"
        plots.plot_comparison_across_seeds(first_rows, SWEEP_METRICS + LATENT_METRICS[:2],
                                           (baselines or {}).get("levels", {}).get(first_noise),
                                           path=out / figures["comparison_seeds"])
    for setting in ("latent_dim", "noise_std", "beta"):
        if len(config.values(setting)) < 2:
            continue
        fixed = {s: v for s, v in firsts.items() if s != setting}
        figures[f"against_{setting}"] = f"against_{setting}.png"
        plots.plot_metric_against_setting(summary, setting, SWEEP_METRICS, fixed=fixed,
                                          baselines=baseline_curves(baselines) if setting == "noise_std" else None,
                                          path=out / figures[f"against_{setting}"])
        if setting == "latent_dim":
            figures["latent_measures"] = "latent_measures.png"
            plots.plot_metric_against_setting(summary, setting, LATENT_METRICS, fixed=fixed,
                                              path=out / figures["latent_measures"])
    return figures
