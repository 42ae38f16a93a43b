"""sweep.py and the sweep flags: cells, summaries, a LocalCluster sweep, a killed worker, a real scheduler."""
import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from scipy import stats

from denoising_vae.study import cli, run_folder, sweep
from conftest import free_port

# Relative difference allowed between a model trained on two batch shards and on one: the same random
# numbers, summed in another order (two epochs of arch3 differ by about 1e-7 in the loss, 7e-5 in the
# small KL term).
SHARD_TOLERANCE = 1e-4
TINY = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "2", "--models", "ae",
        "--precision", "float32", "--baselines", "none"]


# ---------------------------------------------------------------- cells and summaries

def test_cells_are_every_combination_seeded_like_the_study():
    cells = sweep.expand_cells(("arch1", "ae"), [2, 4], [0.5], [1.0], seed=3, seeds=2)
    assert len(cells) == 2 * 2 * 2
    assert len({cell.name for cell in cells}) == len(cells)
    first = [cell for cell in cells if cell.study_seed == 3 and cell.latent_dim == 2]
    # As a single study seeds its models: --seed plus the position in --models.
    assert [(c.model, c.seed) for c in first] == [("arch1", 3), ("ae", 4)]
    assert cells[0].name == "arch1-latent2-noise0.5-beta1-seed3"


def test_summary_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, 5)
    results = [{"model": "arch1", "latent_dim": 2, "noise_std": 0.5, "beta": 1.0, "status": "done",
                "test": {"loss": float(v)}} for v in values]
    results.append({"model": "arch1", "latent_dim": 2, "noise_std": 0.5, "beta": 1.0, "status": "failed"})
    (row,) = sweep.summarise(results)
    loss = row["metrics"]["loss"]
    assert row["n"] == 5 and row["failed"] == 1 and loss["n"] == 5
    assert loss["mean"] == pytest.approx(values.mean())
    assert loss["std"] == pytest.approx(values.std(ddof=1))
    low, high = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert loss["ci95"] == pytest.approx([low, high])
    (single,) = sweep.summarise(results[:1])
    assert single["metrics"]["loss"]["std"] is None and single["metrics"]["loss"]["ci95"] is None


def test_sweep_csv_is_one_tidy_row_per_cell(tmp_path):
    results = [{"model": "ae", "latent_dim": 2, "noise_std": 0.5, "beta": 1.0, "seed": 1, "study_seed": 0,
                "status": "done", "test": {"loss": 3.5, "psnr_reconstructed": 12.0}, "train_seconds": 4.0,
                "precision": "mixed_bfloat16", "fast_path": {"precision": "mixed_bfloat16", "shards": 2}},
               {"model": "ae", "latent_dim": 4, "noise_std": 0.5, "beta": 1.0, "seed": 1, "study_seed": 0,
                "status": "failed", "error": "training diverged"}]
    sweep.write_sweep_csv(tmp_path / "sweep.csv", results)
    with open(tmp_path / "sweep.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["latent_dim"] for row in rows] == ["2", "4"]
    assert float(rows[0]["loss"]) == 3.5 and rows[1]["status"] == "failed" and rows[1]["loss"] == ""
    assert (rows[0]["precision"], rows[0]["shards"]) == ("mixed_bfloat16", "2") and rows[1]["shards"] == ""


# ---------------------------------------------------------------- bad flags

@pytest.mark.parametrize("flags, message", [
    (["--latent-dim", "2,,4"], "argument --latent-dim: expected a comma list of integers >= 1, got '2,,4'"),
    (["--latent-dim", "2,2"], "argument --latent-dim: each value once, got '2,2'"),
    (["--noise-std", "0.5,-1"], "argument --noise-std: expected a comma list of finite numbers >= 0, got '0.5,-1'"),
    (["--beta", "1,nan"], "argument --beta: expected a comma list of finite numbers >= 0, got '1,nan'"),
    (["--seeds", "0"], "argument --seeds: expected integers >= 1, got '0'"),
    (["--seeds", "2,3"], "argument --seeds: expected integers >= 1, got '2,3'"),
    (["--workers", "0"], "argument --workers: expected auto or an integer >= 1, got '0'"),
    (["--workers", "two"], "argument --workers: expected auto or an integer >= 1, got 'two'"),
    (["--workers", "999"], "argument --workers: expected at most"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "the workers of --scheduler are the cluster's"),
    (["--baselines", "median,bm4d"], "argument --baselines: expected all, none or a comma-separated subset of "
                                     "gaussian,median,nl_means,tv,bm3d (each once), got 'median,bm4d'"),
    (["--baselines", "tv,tv"], "argument --baselines: expected all, none or a comma-separated subset"),
    (["--baselines", ""], "argument --baselines: expected all, none or a comma-separated subset"),
])
def test_bad_sweep_flags_are_one_line_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(TINY + flags + ["--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
def test_unreachable_scheduler_is_refused_within_ten_seconds(tmp_path, capsys):
    port = free_port()  # nothing listens there
    started = time.perf_counter()
    assert cli.main(TINY + ["--scheduler", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - started < 15
    err = capsys.readouterr().err
    assert f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler answered within 10 s" in err
    assert err.count("\n") == 1


def test_out_made_with_other_sweep_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    config = cli.config_from_args(*cli.parse_args(TINY + ["--latent-dim", "2,4", "--seeds", "2"]))
    run_folder.prepare_out(out, config)
    assert cli.main(TINY + ["--latent-dim", "2,8", "--seeds", "2", "--out", str(out)]) == 2
    assert "holds a run made with latent_dim=[2, 4], not [2, 8]" in capsys.readouterr().err
    assert cli.main(TINY + ["--latent-dim", "2,4", "--seeds", "3", "--out", str(out)]) == 2
    assert "holds a run made with seeds=2, not 3" in capsys.readouterr().err


# ---------------------------------------------------------------- real sweeps

@pytest.mark.slow
def test_two_worker_local_cluster_sweep_writes_every_cell_csv_summary_and_figures(tmp_path):
    out = tmp_path / "sweep"
    assert cli.main(TINY + ["--latent-dim", "2,4", "--seeds", "2", "--workers", "2", "--baselines", "median,tv",
                            "--noise-std", "0.5", "--tensorboard", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = sorted(cell["name"] for cell in results["cells"])
    assert names == [f"ae-latent{d}-noise0.5-beta1-seed{s}" for d in (2, 4) for s in (0, 1)]
    assert all(cell["status"] == "done" and cell["epochs"] == 2 for cell in results["cells"])
    assert len({cell["pid"] for cell in results["cells"]}) == 2  # both worker processes trained cells
    assert [(row["latent_dim"], row["n"]) for row in results["summary"]] == [(2, 2), (4, 2)]
    assert set(results["summary"][0]["metrics"]["loss"]) == {"mean", "std", "ci95", "n"}
    # The latent measures of every cell, in the summary and in sweep.csv.
    assert {"probe_accuracy", "knn_accuracy"} <= set(results["summary"][1]["metrics"])
    assert "active_units" not in results["summary"][1]["metrics"]  # not defined for the autoencoder
    with open(out / "sweep.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4 and all(0 <= float(row["probe_accuracy"]) <= 1 and row["active_units"] == "" for row in rows)
    # The classical denoisers once per noise level, not once per cell.
    assert set(results["baselines"]["levels"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert [row["method"] for row in results["baselines"]["levels"]["0.5"]] == ["median", "tv"]
    # Each cell's TensorBoard scalars under the run folder.
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == names
    for figure in ("learning_curves_seeds.png", "against_latent_dim.png", "comparison.png", "comparison_seeds.png",
                   "reconstructions_ae.png", "latent_measures.png"):
        assert (out / figure).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| ae | 2 | 0.5 | 1 |" in report and "(2) |" in report and "against_latent_dim.png" in report
    assert "## Classical denoisers, once per noise level" in report and "| median | size = " in report
    # Run again: every cell is found finished, nothing is trained.
    before = {p: p.stat().st_mtime for p in out.glob("cells/*/model.keras")}
    assert cli.main(TINY + ["--latent-dim", "2,4", "--seeds", "2", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime for p in out.glob("cells/*/model.keras")} == before


@pytest.mark.slow
def test_one_value_and_one_seed_is_todays_study(tmp_path):
    out = tmp_path / "run"
    assert cli.main(TINY + ["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "cells" not in results and set(results["models"]) == {"ae"}


def test_a_diverging_cell_is_recorded_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = cli.main(TINY + ["--models", "arch2", "--beta", "1,0", "--learning-rate", "1e9", "--workers", "1",
                                     "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "cells failed" in err and "training diverged" in err and err.count("\n") == 1
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 2 and all("error" in cell for cell in results["cells"]
                                              if cell["status"] == "failed")


@pytest.fixture
def dask_cluster(tmp_path, start_dask_cluster):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started outside the
    repository; yields ``(address, client)``."""
    return start_dask_cluster(tmp_path, workers=2)


@pytest.mark.slow
def test_sweep_on_a_real_scheduler_survives_a_killed_worker(tmp_path, dask_cluster):
    address, client = dask_cluster
    out = tmp_path / "sweep"
    flags = ["--data", "synthetic", "--train-size", "2600", "--test-size", "52", "--epochs", "5", "--models", "ae",
             "--latent-dim", "2,3", "--precision", "float32", "--baselines", "none", "--scheduler", address,
             "--out", str(out)]
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", cli.main(flags)))
    thread.start()
    killed = None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and thread.is_alive():
        for checkpoint in out.glob("cells/*/checkpoint-epoch*.keras"):
            folder = checkpoint.parent
            if not (folder / "cell.json").exists():  # mid-cell: an epoch saved, the cell not finished
                working = {worker: keys for worker, keys in client.processing().items()
                           if any(folder.name in str(key) for key in keys)}
                if working:
                    worker = next(iter(working))
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed = folder.name
                    break
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "no cell was caught mid-training"
    assert outcome.get("code") == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 2 and all(cell["status"] == "done" for cell in results["cells"])
    resumed = next(cell for cell in results["cells"] if cell["name"] == killed)
    assert resumed["resumed_from"] >= 1 and resumed["epochs"] == 5  # continued, not restarted
    assert len(resumed["history"]["loss"]) == 5


@pytest.mark.slow
def test_a_sweep_cell_in_a_worker_is_the_single_run_of_its_settings(tmp_path):
    # The single run trains in this process on two shards, the cell in a one-core worker on one:
    # the same random numbers, so the same model up to the order of floating-point sums.
    flags = ["--data", "synthetic", "--train-size", "520", "--test-size", "104", "--epochs", "2", "--models", "arch3",
             "--precision", "float32", "--baselines", "none"]
    assert cli.main(flags + ["--workers", "1", "--out", str(tmp_path / "single")]) == 0
    assert cli.main(flags + ["--latent-dim", "2,3", "--workers", "2", "--out", str(tmp_path / "sweep")]) == 0
    single = json.loads((tmp_path / "single" / "results.json").read_text())["models"]["arch3"]
    cell = json.loads((tmp_path / "sweep" / "cells" / "arch3-latent2-noise0.5-beta1-seed0" / "cell.json").read_text())
    assert (single["fast_path"]["shards"], cell["fast_path"]["shards"]) == (2, 1)
    for metric in sweep.METRICS:
        if metric in single["test"]:
            expected = pytest.approx(single["test"][metric], rel=SHARD_TOLERANCE, abs=1e-6)
            assert cell["test"][metric] == expected, metric


@pytest.mark.slow
def test_a_cell_on_few_real_letters_trains_measures_and_does_not_repeat_the_clients_warning(tiny_zip, tmp_path):
    import warnings

    path, _ = tiny_zip
    job = sweep.CellJob(out=str(tmp_path), data=str(path), train_size=None, test_size=None, data_seed=0, epochs=1,
                        batch_size=100, learning_rate=1e-3, precision="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep.run_cell(sweep.Cell("arch3", 2, 0.5, 1.0, 0, 0), job)
    assert result["status"] == "done", result
    # The client warned once that the archive is not NIST's; the cell, in a worker, says nothing.
    assert not [w for w in caught if "byte for byte" in str(w.message)]
    assert set(result["latent"]) >= {"probe_accuracy", "knn_accuracy", "active_units"}


def test_comparison_across_seeds_shows_intervals_and_the_best_classical_denoiser():
    from denoising_vae import sweep_plots

    def row(model, psnr):
        stats = {"mean": psnr, "std": 0.01, "ci95": [psnr - 0.02, psnr + 0.02], "n": 3}
        return {"model": model, "latent_dim": 2, "noise_std": 0.5, "beta": 1.0, "n": 3,
                "metrics": {"psnr_reconstructed": stats, "ssim_reconstructed": {**stats, "mean": 0.25,
                                                                                "ci95": [0.24, 0.26]}}}

    summary = [row("arch1", 12.05), row("arch2", 12.24)]
    classical = [{"method": "median", "parameter": "size", "value": 5, "psnr": 14.17, "ssim": 0.494},
                 {"method": "tv", "parameter": "weight", "value": 0.175, "psnr": 12.2, "ssim": 0.26}]
    metrics = (("psnr_reconstructed", "PSNR"), ("ssim_reconstructed", "SSIM"))
    figure = sweep_plots.plot_comparison_across_seeds(summary, metrics, classical)
    psnr_axis, ssim_axis = figure.axes[:2]
    # The intervals as error bars, the axis fitted to them: the median's 14.17 dB is named, not drawn.
    assert psnr_axis.get_ylim()[1] < 12.5
    assert [t.get_text() for t in psnr_axis.texts] == ["above: best classical: median (size 5): 14.2"]
    # The best SSIM (0.494) is also far off; a near one would be a dashed line with its label.
    assert ssim_axis.texts[0].get_text().startswith("above: best classical: median")
    near = sweep_plots.plot_comparison_across_seeds(summary, metrics, [classical[1]])
    assert near.axes[0].get_legend().get_texts()[0].get_text() == "best classical: tv (weight 0.175): 12.2"
