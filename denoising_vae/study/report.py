"""``report.md``: the run's data, settings, metrics table and figures, for a study or a sweep.

Pure text from ``results.json``'s content; nothing here computes a result.
"""
from __future__ import annotations

from .figures import LATENT_METRICS, SWEEP_METRICS

_TABLE = (("loss", "test loss", "{:.2f}"), ("reconstruction", "reconstruction", "{:.2f}"), ("kl", "KL", "{:.2f}"),
          ("accuracy", "pixel accuracy", "{:.4f}"), ("psnr_noisy", "PSNR noisy (dB)", "{:.2f}"),
          ("psnr_reconstructed", "PSNR reconstructed (dB)", "{:.2f}"), ("ssim_noisy", "SSIM noisy", "{:.3f}"),
          ("ssim_reconstructed", "SSIM reconstructed", "{:.3f}"), ("log_likelihood", "log p(x) (nats)", "{:.2f}"))


_LATENT_TABLE = (("probe_accuracy", "letters from latent means: linear probe", "{:.1%}"),
                 ("knn_accuracy", "letters from latent means: k-NN", "{:.1%}"),
                 ("active_units", "active units (variance > 0.01)", "{:d}"))


def baselines_table(baselines, noise_std, robustness=None):
    """The classical denoisers at ``noise_std`` (and, from ``robustness``, the models on the same
    letters) as a Markdown table, best PSNR first; ``""`` when there are none."""
    rows = (baselines or {}).get("levels", {}).get(f"{float(noise_std):g}")
    if not rows:
        return ""
    lines = ["| denoiser | parameter (chosen on training letters) | PSNR (dB) | SSIM | s per 1,000 letters |",
             "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda row: -row["psnr"]):
        lines.append(f"| {row['method']} | {row['parameter']} = {row['value']:g} | {row['psnr']:.2f} | "
                     f"{row['ssim']:.3f} | {row['seconds_per_1000']:.2f} |")
    if robustness and float(noise_std) in [float(v) for v in robustness["noise_std"]]:
        level = [float(v) for v in robustness["noise_std"]].index(float(noise_std))
        for name in robustness["psnr"]:
            label = "noisy input" if name == "noisy" else f"**{name}** (this run's model)"
            lines.append(f"| {label} | | {robustness['psnr'][name][level]:.2f} | "
                         f"{robustness['ssim'][name][level]:.3f} | |")
    return "\n".join(lines)


def metrics_table(results):
    """The test metrics of every finished model as a Markdown table."""
    names = list(results["models"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label, fmt in _TABLE:
        cells = []
        for name in names:
            value = results["models"][name]["test"].get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label, fmt in _LATENT_TABLE:
        cells = []
        for name in names:
            value = results["models"][name].get("latent", {}).get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| parameters | " + " | ".join(f"{results['models'][n]['params']['total']:,}" for n in names) + " |")
    lines.append("| epochs | " + " | ".join(str(results["models"][n]["epochs"]) for n in names) + " |")
    lines.append("| precision, batch shards | " + " | ".join(_path(results["models"][n]) for n in names) + " |")
    lines.append("| training time (s) | " + " | ".join(f"{results['models'][n]['train_seconds']:.0f}"
                                                        for n in names) + " |")
    return "\n".join(lines)


def _path(entry):
    """How a model was computed, e.g. ``mixed_bfloat16, 1``, from its ``fast_path`` record."""
    path = entry.get("fast_path") or {}
    return f"{path.get('precision', entry.get('precision', '?'))}, {path.get('shards', '?')}"


SAME_NUMBERS = ("The precision and batch shards each model trained with are in the table: with a fixed "
                "`--precision` the same command gives the same numbers on the same CPU model, in one process, "
                "in workers or resumed (shards change only the order of floating-point sums); `--precision auto` "
                "may choose another precision on another CPU.")


def _baselines_section(config, results, robustness):
    baselines = results.get("baselines")
    table = baselines_table(baselines, config.values("noise_std")[0], robustness)
    if not table:
        return []
    return ["## Classical denoisers", "",
            f"On the first {baselines['test_letters']:,} test letters with noise std "
            f"{config.values('noise_std')[0]:g} (the letters of the robustness curve, the models on the same "
            f"noisy images). Each parameter is the best of a few candidates on {baselines['validation_letters']} "
            "noisy training letters (`results.json`, `baselines`, records every candidate's validation PSNR). "
            f"Computing them took {baselines['seconds']:.0f} s.", "", table, ""]


def render_report(config, results, figures, robustness=None):
    """report.md: the data, a table of test metrics, the classical denoisers, every figure, the total time.

    ``robustness``: the content of ``robustness.json`` (the models on the classical denoisers' letters).
    """
    data = results["data"]
    iw = {results["models"][n]["test"].get("iw_samples") for n in results["models"]} - {None}
    sections = [
        "# Denoising VAEs on handwritten capital letters",
        "",
        f"**Data:** {data['description']}: {data['train']:,} training and {data['test']:,} test images "
        f"(28x28, values in [0, 1]).",
        "",
        f"**Task:** reconstruct the clean letter from a copy with Gaussian noise of std {config.noise_std} added "
        f"and clipped to [0, 1]. Training draws fresh noise every epoch; the test set has one fixed noisy copy.",
        "",
        f"**Settings:** {config.epochs} epochs, batch {config.batch_size}, latent dimensions {config.latent_dim}, "
        f"beta {config.beta}, Adam {config.learning_rate}, seed {config.seed}, precision {config.precision}"
        + (f"; {results['workers']} models trained at a time, each in a worker process on its share of the cores "
           "(training times are per model)" if results.get("workers", 1) > 1 else "") + ".",
        "",
        "## Test metrics",
        "",
        metrics_table(results),
        "",
        "Loss, reconstruction and KL are nats per image with z sampled from q(z|noisy); PSNR and SSIM compare the "
        "clean image with the noisy input and with the deterministic reconstruction decoder(encoder mean); "
        "pixel accuracy is the fraction of pixels on the same side of 0.5 as the clean image. "
        "log p(x) is an importance-weighted estimate (Burda et al. 2016) with "
        f"K = {', '.join(map(str, sorted(iw))) or 'n/a'} "
        "samples; the autoencoder has no KL or likelihood. The letters are read from the encoder's means of "
        "noisy letters by a logistic regression and a 15-nearest-neighbour vote, both fitted on training "
        "letters and scored on the test letters; active units are latent dimensions whose mean varies by "
        "more than 0.01 over the test letters (Burda et al. 2016; not defined for the autoencoder's unscaled "
        "codes). " + SAME_NUMBERS,
        "",
        *_baselines_section(config, results, robustness),
        "## Learning curves",
        "",
        f"![learning curves]({figures['learning_curves']})",
        "",
        "## Comparison and robustness to noise",
        "",
        f"![comparison]({figures['comparison']})",
        "",
    ]
    for name in results["models"]:
        if f"reconstructions_{name}" not in figures:
            continue
        sections += [f"## {name}", "", f"![{name} reconstructions]({figures[f'reconstructions_{name}']})"]
        if f"latent_sweep_{name}" in figures:
            sections.append(f"![{name} latent sweep]({figures[f'latent_sweep_{name}']})")
        sections += [f"![{name} latent map]({figures[f'latent_map_{name}']})", ""]
    sections += [f"Total time: {results['total_seconds']:.0f} s.", ""]
    return "\n".join(sections)


def summary_table(summary):
    """The sweep summary as a Markdown table: mean +- std (n) per model and setting."""
    shown = SWEEP_METRICS + LATENT_METRICS
    lines = ["| model | latent | noise | beta | " + " | ".join(label for _, label in shown) + " |",
             "|---" * (4 + len(shown)) + "|"]
    for row in summary:
        cells = []
        for key, _ in shown:
            stats = row["metrics"].get(key)
            if stats is None:
                cells.append("n/a")
                continue
            spread = f" +- {stats['std']:.3g}" if stats["std"] is not None else ""
            cells.append(f"{stats['mean']:.4g}{spread} ({stats['n']})")
        failed = "".join(f" ({row[key]} {key})" for key in ("failed", "interrupted") if row.get(key))
        lines.append(f"| {row['model']}{failed} | {row['latent_dim']} | {row['noise_std']:g} | {row['beta']:g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_sweep_report(config, results, figures):
    """report.md of a sweep: data, settings, the summary table and every figure."""
    data = results["data"]
    failed = [cell for cell in results["cells"] if cell.get("status") == "failed"]
    interrupted = sum(cell.get("status") == "interrupted" for cell in results["cells"])
    unfinished = f"{len(failed)} failed" + (f", {interrupted} interrupted: the same command resumes them"
                                            if interrupted else "")
    sections = [
        "# Denoising VAEs on handwritten capital letters: sweep", "",
        f"**Data:** {data['description']}: {data['train']:,} training and {data['test']:,} test images.", "",
        f"**Cells:** {len(results['cells'])} ({unfinished}): models {', '.join(config.models)}; "
        f"latent {config.values('latent_dim')}, noise std {config.values('noise_std')}, "
        f"beta {config.values('beta')}; {config.seeds} seeds from {config.seed}; {config.epochs} epochs, "
        f"batch {config.batch_size}, Adam {config.learning_rate}.", "",
        "## Summary", "",
        "Mean +- sample standard deviation (number of seeds) of each test metric; `results.json` also holds "
        "95 % confidence intervals (Student's t, n - 1 degrees of freedom) and `sweep.csv` every cell. "
        "A difference smaller than the seed-to-seed spread is not a finding. " + SAME_NUMBERS.replace(
            "are in the table", "are in `sweep.csv`"), "",
        summary_table(results["summary"]), "",
    ]
    baselines = results.get("baselines")
    if baselines:
        sections += ["## Classical denoisers, once per noise level", "",
                     f"On the first {baselines['test_letters']:,} test letters (the models' numbers above are on "
                     f"the whole test set); each parameter chosen on {baselines['validation_letters']} noisy "
                     "training letters.", ""]
        for std in config.values("noise_std"):
            sections += [f"Noise std {std:g}:", "", baselines_table(baselines, std), ""]
    for key, title in (("learning_curves_seeds", "Learning curves across seeds"),
                       ("comparison_seeds", "Comparison across seeds (first setting)"),
                       ("against_latent_dim", "Against the latent size"), ("against_noise_std", "Against the noise"),
                       ("against_beta", "Against beta"), ("latent_measures", "Latent measures against the latent size"), ("comparison", "Comparison (first seed)"),
                       ("learning_curves", "Learning curves (first seed)")):
        if key in figures:
            sections += [f"## {title}", "", f"![{title}]({figures[key]})", ""]
    for name in results.get("models", {}):
        if f"reconstructions_{name}" in figures:
            sections += [f"## {name} (first seed, first setting)", "",
                         f"![{name} reconstructions]({figures[f'reconstructions_{name}']})"]
            if f"latent_sweep_{name}" in figures:
                sections.append(f"![{name} latent sweep]({figures[f'latent_sweep_{name}']})")
            sections += [f"![{name} latent map]({figures[f'latent_map_{name}']})", ""]
    sections += [f"Total time: {results['total_seconds']:.0f} s.", ""]
    return "\n".join(sections)
