"""plots.py and assignment_5.py: figures, the whole study, resume, errors, the README snippet."""
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from denoising_vae import plots
from denoising_vae.core import constants
from denoising_vae.data import sources
from denoising_vae.models import vae
from denoising_vae.study import cli, figures, run_folder
from denoising_vae.study import study as single_study
from denoising_vae.training import loop
from conftest import REPO

SMALL = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "1", "--baselines", "none"]


# ---------------------------------------------------------------- plots

def images_in(figure):
    return sum(len(axis.images) for axis in figure.axes)


def test_learning_curves_axes(tmp_path):
    history = {key: [3.0, 2.0, 1.0] for key in ("loss", "val_loss", "accuracy", "val_accuracy",
                                                "reconstruction", "val_reconstruction", "kl", "val_kl")}
    ae_history = {**history, "kl": [0.0] * 3, "val_kl": [0.0] * 3}
    figure = plots.plot_learning_curves({"arch1": history, "ae": ae_history}, path=tmp_path / "c.png")
    assert isinstance(figure, Figure) and len(figure.axes) == 8
    assert (tmp_path / "c.png").stat().st_size > 0
    # The KL has its own axis (a few nats beside hundreds); the AE's says it has none.
    assert [axis.get_title() for axis in figure.axes[:4]] == [
        "arch1: loss (nats per image)", "arch1: pixel accuracy", "arch1: reconstruction (nats)",
        "arch1: KL divergence (nats)"]
    assert all(len(axis.lines) == 2 for axis in figure.axes[:7])
    assert len(figure.axes[7].lines) == 0 and "no KL term" in figure.axes[7].texts[0].get_text()
    with pytest.raises(ValueError, match="Expected histories of at least one model"):
        plots.plot_learning_curves({})


def test_reconstructions_grid():
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    figure = plots.plot_reconstructions(x, x, x, labels=[0, 1, 2, 25], title="arch1")
    assert len(figure.axes) == 3 and images_in(figure) == 3
    assert [axis.images[0].get_array().shape for axis in figure.axes] == [(4 * 28, 28)] * 3
    np.testing.assert_array_equal(figure.axes[1].images[0].get_array()[28:56], x[1, :, :, 0])
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["A", "B", "C", "Z"]
    assert [axis.get_title() for axis in figure.axes] == ["original", "noisy", "reconstructed"]
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of images. Received: 4, 4 and 3"):
        plots.plot_reconstructions(x, x, x[:3])


def test_distinct_letter_indices():
    labels = np.repeat(np.arange(26), 5)
    chosen = plots.distinct_letter_indices(labels, 10, seed=0)
    assert len(chosen) == 10 and len(set(labels[chosen])) == 10
    assert len(plots.distinct_letter_indices(np.zeros(20, int), 10)) == 10


def test_latent_sweep_decodes_once_on_normal_quantiles():
    calls = []

    def decode(z):
        calls.append(z.copy())
        return np.zeros((len(z), 28, 28, 1), np.float32)

    figure = plots.plot_latent_sweep(decode, latent_dim=2, n=7)
    assert len(calls) == 1 and calls[0].shape == (49, 2)
    assert len(figure.axes) == 1 and images_in(figure) == 1
    assert figure.axes[0].images[0].get_array().shape == (7 * 28, 7 * 28)
    values = plots.latent_grid_values(7)
    assert values[0] == pytest.approx(-1.6449, abs=1e-3) and values[3] == pytest.approx(0.0, abs=1e-6)
    assert sorted(set(np.round(calls[0][:, 0], 4))) == sorted(np.round(values, 4))
    # More dimensions: one traversal row per dimension, the others at 0.
    calls.clear()
    figure = plots.plot_latent_sweep(decode, latent_dim=3, n=5)
    assert calls[0].shape == (15, 3) and np.count_nonzero(calls[0][:5, 1:]) == 0
    assert figure.axes[0].images[0].get_array().shape == (3 * 28, 5 * 28)
    with pytest.raises(ValueError, match=r"Expected n >= 2. Received: n=1"):
        plots.plot_latent_sweep(decode, latent_dim=2, n=1)


def test_latent_map_labels_every_letter():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(26), 4)
    figure = plots.plot_latent_map(rng.normal(size=(104, 2)), labels)
    assert len(figure.axes) == 1 and len(figure.axes[0].texts) == 26
    assert len(set(plots.LETTER_COLOURS)) == 26
    with pytest.raises(ValueError, match=r"Expected z of shape \(N, D\) and labels of shape \(N,\)"):
        plots.plot_latent_map(np.zeros((5, 2)), np.zeros(4, int))


def test_comparison_panels():
    metrics = {name: {"psnr_noisy": 9.0, "psnr_reconstructed": 12.0, "ssim_reconstructed": 0.5,
                      "accuracy": 0.9, "loss": 150.0} for name in ("arch1", "ae")}
    for name in metrics:
        metrics[name]["ssim_noisy"] = 0.4
    metrics["ae"]["psnr_reconstructed"] = 12.2
    robustness = {"noise_std": [0.0, 0.5, 1.0], "letters": 1000,
                  "psnr": {"noisy": [100.0, 9.0, 6.0], "arch1": [14, 12, 10], "ae": [13, 12, 9]},
                  "ssim": {"noisy": [1.0, 0.4, 0.2], "arch1": [0.3, 0.2, 0.1], "ae": [0.3, 0.2, 0.1]}}
    classical = {"median": {"noise_std": [0.0, 0.5, 1.0], "psnr": [30, 14, 11], "ssim": [0.9, 0.5, 0.3]}}
    figure = plots.plot_comparison(metrics, robustness, classical, study_noise_std=0.5)
    assert len(figure.axes) == 8
    psnr_axis = figure.axes[0]
    # Dots on an axis fitted to them, not bars from zero: 12.0 and 12.2 fill most of it.
    low, high = psnr_axis.get_ylim()
    assert 11.8 < low < 12.0 and 12.2 < high < 12.4
    assert [line.get_ydata()[0] for line in psnr_axis.lines] == [12.0, 12.2]
    # Models, then the classical denoiser, at the study's noise on the same letters.
    side_by_side = figure.axes[4]
    assert [t.get_text() for t in side_by_side.get_xticklabels()] == ["arch1", "ae", "median"]
    assert [line.get_ydata()[0] for line in side_by_side.lines[:3]] == [12, 12, 14]
    curve = figure.axes[6]
    assert len(curve.lines) == 4  # noisy, two models, one classical denoiser
    assert curve.get_ylim()[1] < 50  # the capped 100 dB of std 0 stays off the scale
    assert len(plots.plot_comparison(metrics).axes) == 4


# ---------------------------------------------------------------- the study

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    # In this process: test_faults.py runs a study on worker processes (the default on several cores).
    status = cli.main(["--quick", "--data", "synthetic", "--workers", "1", "--out", str(out)])
    return status, out


@pytest.mark.slow
def test_quick_study_writes_every_output(quick_run):
    status, out = quick_run
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    # The digest is SHA-256 of the very images trained and tested on (train, then test).
    loaded = sources.input_read("synthetic", train_size=2600, test_size=520, seed=0)
    digest = hashlib.sha256(loaded[0][0].tobytes() + loaded[1][0].tobytes())
    assert results["data"] == {"source": "synthetic", "description": results["data"]["description"],
                               "path": None, "train": 2600, "test": 520, "digest": digest.hexdigest()[:16]}
    assert set(results["models"]) == {"arch1", "arch2", "arch3", "ae"}
    for name, entry in results["models"].items():
        assert entry["epochs"] == 2 and entry["train_seconds"] > 0
        assert set(entry["params"]) == {"encoder", "decoder", "total"}
        assert len(entry["history"]["val_loss"]) == 2
        for key in ("loss", "reconstruction", "accuracy", "psnr_noisy", "psnr_reconstructed"):
            assert np.isfinite(entry["test"][key])
        assert ("kl" in entry["test"]) == (name != "ae")
        assert (out / f"{name}.keras").is_file()
    assert results["models"]["arch2"]["params"]["total"] == 807_700
    # Latent measures of every model; the classical denoisers at every level of the robustness curve.
    for name, entry in results["models"].items():
        assert set(entry["latent"]) == {"probe_accuracy", "knn_accuracy", "active_units", "latent_variances", "seconds"}
        assert 0 <= entry["latent"]["probe_accuracy"] <= 1 and len(entry["latent"]["latent_variances"]) == 2
        assert (entry["latent"]["active_units"] is None) == (name == "ae")
    baselines = results["baselines"]
    assert baselines["methods"] == ["gaussian", "median", "nl_means", "tv"] and baselines["test_letters"] == 520
    assert list(baselines["levels"]) == ["0", "0.25", "0.5", "0.75", "1"]
    for row in baselines["levels"]["0.5"]:
        assert row["value"] in [float(v) for v in row["validation"]]
        assert row["psnr"] > results["models"]["arch1"]["test"]["psnr_noisy"]
    robustness = json.loads((out / "robustness.json").read_text())
    assert robustness["noise_std"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(robustness["psnr"]) == set(robustness["ssim"]) == {"noisy", "arch1", "arch2", "arch3", "ae"}
    report = (out / "report.md").read_text()
    assert "## Classical denoisers" in report and "| letters from latent means: linear probe |" in report
    assert not (out / "tensorboard").exists()  # off by default
    expected = {"learning_curves.png", "comparison.png"} \
        | {f"reconstructions_{n}.png" for n in results["models"]} \
        | {f"latent_map_{n}.png" for n in results["models"]} \
        | {f"latent_sweep_{n}.png" for n in ("arch1", "arch2", "arch3")}
    assert expected == {p.name for p in out.glob("*.png")}
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and config["train_size"] == 2600 and config["quick"] is True
    # The report says how each model was computed, next to its numbers.
    row = next(line for line in (out / "report.md").read_text().splitlines()
               if line.startswith("| precision, batch shards |"))
    assert row.count("|") == 6 and all(f"{entry['fast_path']['precision']}, {entry['fast_path']['shards']}" in row
                                       for entry in results["models"].values())


@pytest.mark.slow
def test_report_links_only_existing_figures(quick_run):
    _, out = quick_run
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == len(list(out.glob("*.png")))
    assert all((out / link).is_file() for link in links)
    assert "synthetic capitals" in report and "| test loss |" in report and "Total time" in report


@pytest.mark.slow
def test_rerun_skips_finished_models(quick_run, capsys):
    status, out = quick_run
    before = json.loads((out / "results.json").read_text())
    assert cli.main(["--quick", "--data", "synthetic", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 4 and "training" not in printed
    after = json.loads((out / "results.json").read_text())
    assert after["models"] == before["models"]


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, capsys):

    out = tmp_path / "run"
    assert cli.main(SMALL + ["--models", "arch2", "--out", str(out)]) == 0
    # As if a run with ae had been killed after ae's checkpoint but before its results were written.
    (x, _), (xt, _) = sources.input_read("synthetic", train_size=260, test_size=52, seed=0)
    model = vae.build_model("ae", seed=1, precision="auto")  # seed = --seed + position in --models
    loop.train_model(model, x, xt, run_dir=out / "checkpoints" / "ae", epochs=1, seed=1, verbose=0)
    capsys.readouterr()
    assert cli.main(SMALL + ["--epochs", "2", "--models", "arch2,ae", "--out", str(out)]) == 2
    assert "holds a run made with epochs=1, not 2" in capsys.readouterr().err
    assert cli.main(SMALL + ["--models", "arch2,ae", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "arch2: already finished" in printed and "ae: training" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"arch2", "ae"} and results["models"]["ae"]["epochs"] == 1


@pytest.mark.slow
def test_resume_continues_an_interrupted_model(tmp_path, capsys):

    out = tmp_path / "run"
    (x, _), (xt, _) = sources.input_read("synthetic", train_size=260, test_size=52, seed=0)
    args = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "3", "--models", "ae",
            "--baselines", "none"]
    # The first launch was killed after epoch 2 of 3: its checkpoint and config are on disk.
    run_folder.prepare_out(out, cli.config_from_args(*cli.parse_args(args + ["--out", str(out)])))
    loop.train_model(vae.build_model("ae", seed=0, precision="auto"), x, xt,
                         run_dir=out / "checkpoints" / "ae", epochs=2, seed=0, verbose=0)
    capsys.readouterr()
    assert cli.main(args + ["--out", str(out)]) == 0
    assert "ae: resumed after epoch 2" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["ae"]["epochs"] == 3 and len(results["models"]["ae"]["history"]["loss"]) == 3


def test_models_are_split_into_balanced_chains_one_per_worker():
    pending = list(enumerate(constants.ARCHITECTURES))  # arch1, arch2, arch3, ae
    assert single_study.balanced_chains(pending, 2) == [[(2, "arch3"), (1, "arch2")], [(0, "arch1"), (3, "ae")]]
    assert single_study.balanced_chains(pending, 3) == [[(2, "arch3")], [(0, "arch1"), (1, "arch2")], [(3, "ae")]]
    assert single_study.balanced_chains(pending[:1], 1) == [[(0, "arch1")]]


@pytest.mark.slow
def test_with_workers_a_models_figures_wait_for_a_core_free_of_training(tmp_path, monkeypatch):
    finished, drawn = [], []
    train_on_workers, model_figures = single_study._train_on_workers, figures.model_figures

    def recording_train(*args, **kwargs):
        for item in train_on_workers(*args, **kwargs):
            finished.append((item[0], item[3]))
            yield item

    def recording_figures(out, config, name, *args):
        drawn.append((name, len(finished)))
        return model_figures(out, config, name, *args)

    monkeypatch.setattr(single_study, "_train_on_workers", recording_train)
    monkeypatch.setattr(figures, "model_figures", recording_figures)
    names = ["arch1", "arch2", "ae"]
    flags = SMALL + ["--models", ",".join(names), "--precision", "float32", "--workers", "2"]
    assert cli.main(flags + ["--out", str(tmp_path / "run")]) == 0
    # Each finish reports the chains (one per worker) that still have a model to train.
    chains = single_study.balanced_chains(list(enumerate(names)), 2)
    assert chains == [[(0, "arch1"), (1, "arch2")], [(2, "ae")]]
    done = []
    for name, still_training in finished:
        done.append(name)
        assert still_training == sum(any(n not in done for _, n in chain) for chain in chains)
    # No model's figures are drawn while both workers train, and each model's once.
    first_free = next(position for position, (_, still) in enumerate(finished, 1) if still < 2)
    assert sorted(name for name, _ in drawn) == sorted(names)
    assert all(position >= first_free for _, position in drawn)


@pytest.mark.slow
def test_a_model_diverging_in_a_worker_stops_the_run_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    flags = SMALL + ["--models", "arch2,ae", "--precision", "float32", "--learning-rate", "1e9", "--workers", "2"]
    assert cli.main(flags + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(r"error: (arch2|ae): training diverged in epoch 1 \(the loss became NaN or infinite\); "
                     r"lower --learning-rate \(now 1e\+09\); [01] finished models are kept in", err), err


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["--batch-size", "-5"], "argument --batch-size: expected an integer >= 1, got -5"),
    (["--latent-dim", "0"], "argument --latent-dim: expected a comma list of integers >= 1, got '0'"),
    (["--train-size", "0"], "argument --train-size: expected an integer >= 1, got 0"),
    (["--noise-std", "-1"], "argument --noise-std: expected a comma list of finite numbers >= 0, got '-1'"),
    (["--noise-std", "nan"], "argument --noise-std: expected a comma list of finite numbers >= 0, got 'nan'"),
    (["--learning-rate", "0"], "argument --learning-rate: expected a finite number > 0, got 0.0"),
    (["--models", "arch1,arch9"], "argument --models: expected a comma-separated subset of arch1,arch2,arch3,ae"),
    (["--models", "arch1,arch1"], "argument --models: each model once"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
])
def test_bad_flags(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(flags + ["--out", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(SMALL + ["--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "is not a writable folder" in err and err.count("\n") == 1


@pytest.mark.slow
def test_out_folder_of_another_configuration_is_refused(quick_run, capsys):
    _, out = quick_run
    before = (out / "results.json").read_text()
    assert cli.main(["--quick", "--data", "synthetic", "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a run made with seed=0, not 1; choose another --out" in err
    assert (out / "results.json").read_text() == before


def test_missing_and_corrupt_data(tmp_path, capsys):
    assert cli.main(["--data", str(tmp_path / "gzip.zip"), "--out", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    assert cli.main(["--data", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "not a readable zip archive" in err and err.count("\n") == 1


def test_cli_error_has_no_traceback():
    out = subprocess.run([sys.executable, "assignment_5.py", "--data", "/no/such/gzip.zip", "--out", "/tmp/x-none"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "source path '/no/such/gzip.zip' does not exist" in out.stderr


# ---------------------------------------------------------------- README

@pytest.mark.slow
def test_readme_snippet_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- snippet: start -->")[1].split("<!-- snippet: end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["figure"], Figure) and isinstance(namespace["sweep"], Figure)
    assert (tmp_path / "runs" / "notebook" / "history.csv").is_file()


def test_readme_commands_match_ci():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci
    assert "pip install -r requirements.txt" in readme and "-r requirements.txt" in ci


def test_letter_grid():
    labels = np.repeat(np.arange(26), 3)
    figure = plots.plot_letter_grid(np.zeros((78, 28, 28)), labels, per_letter=3)
    assert figure.axes[0].images[0].get_array().shape == (84, 26 * 28)
    with pytest.raises(ValueError, match=r"Expected at least 5 images of some letter"):
        plots.plot_letter_grid(np.zeros((78, 28, 28)), labels, per_letter=5)


def tensorboard_scalars(folder):
    """``{tag: {step: value}}`` of every event file under ``folder``."""
    import tensorflow as tf

    scalars = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(f"{path.parent.name}/{value.tag}", {})[event.step] = number
    return scalars


@pytest.mark.slow
def test_tensorboard_logs_each_epoch_and_reads_back(tmp_path):
    out = tmp_path / "run"
    flags = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "2", "--models", "arch3",
             "--workers", "1", "--baselines", "none", "--tensorboard", "--out", str(out)]
    assert cli.main(flags) == 0
    results = json.loads((out / "results.json").read_text())
    history = results["models"]["arch3"]["history"]
    scalars = tensorboard_scalars(out / "tensorboard" / "arch3")
    assert sorted(scalars["train/epoch_loss"]) == [0, 1] and sorted(scalars["validation/epoch_loss"]) == [0, 1]
    assert [scalars["train/epoch_loss"][step] for step in (0, 1)] == pytest.approx(history["loss"], rel=1e-6)
    assert [scalars["validation/epoch_loss"][step] for step in (0, 1)] == pytest.approx(history["val_loss"], rel=1e-6)
    assert results["baselines"] is None  # --baselines none

