"""benchmarks/bench_training.py: its JSON, the package's variants and the ratios to the anchors."""
import json
import sys
import textwrap

import pytest

from conftest import REPO, benchmark_module

bench_training = benchmark_module("bench_training")


@pytest.mark.slow
def test_benchmark_reports_ours_variants_and_ratios(tmp_path, capsys):
    # A stand-in anchor with known figures checks the ratios; the package itself really trains.
    (tmp_path / "keras_anchor.py").write_text(textwrap.dedent("""
        import json
        print(json.dumps({"anchor": "keras", "seconds_per_epoch": 9.0, "final_loss": 390.0}))
    """))
    bench_training.main(["--archs", "2", "--repeats", "1", "--epochs", "2", "--n", "200",
                         "--anchors", str(tmp_path), "--skip-load", "--noise-rounds", "3"])
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 200 and report["batch_size"] == 100 and "data_load" not in report
    entry = report["architectures"]["arch2"]
    assert set(entry) >= {"ours", "ours_fixed_noise", "keras", "speedup_vs_keras", "loss_difference_vs_keras",
                          "ours_fixed_noise_speedup_vs_keras", "flops"}
    assert report["cpu"] and "FMA" in report["peak"]["derivation"]
    for name in ("ours", "ours_fixed_noise"):
        ours = entry[name]
        assert "error" not in ours, ours
        assert ours["seconds_per_epoch"] > 0 and ours["device"] == "CPU"
        assert ours["samples_per_second"] == pytest.approx(200 / ours["seconds_per_epoch"], rel=0.1)  # rounded
        assert 300 < ours["final_loss"] < 600  # nats per image on the anchors' random images
        assert ours["path_source"] in ("measured", "cached")  # the study's auto path, chosen as the study does
        assert ours["gflops"] == pytest.approx(entry["flops"]["training_per_image"] * ours["samples_per_second"] / 1e9,
                                               rel=0.01)
    assert entry["speedup_vs_keras"] == pytest.approx(9.0 / entry["ours"]["seconds_per_epoch"], rel=0.1)
    assert entry["loss_difference_vs_keras"] == pytest.approx(entry["ours"]["final_loss"] - 390.0, abs=1e-2)
    assert "torch" not in entry  # no torch_anchor.py in that folder
    cost = entry["noise_cost_in_turn"]
    assert len(cost["shares"]) == 3 and cost["share"] == cost["shares"][1] and -1 < cost["share"] < 1
    assert cost["fixed_step_ms"] > 0 and cost["fresh_step_ms"] > 0 and cost["shards"] >= 1


def test_failing_runner_is_reported_not_raised(tmp_path, capsys):
    (tmp_path / "keras_anchor.py").write_text("raise SystemExit('anchor broke')\n")
    assert bench_training.anchor(tmp_path / "keras_anchor.py", 1, 200, 2) == {"error": "anchor broke"}


@pytest.mark.parametrize("flags, message", [
    (["--noise", "fixd"], "--noise: expected a comma-separated list of fixed, fresh; received 'fixd'"),
    (["--precisions", "float16"], "--precisions: expected a comma-separated list of auto, float32, mixed_bfloat16"),
    (["--archs", "1,4"], "--archs: expected a comma-separated list of 1, 2, 3; received '1,4'"),
    (["--epochs", "1"], "--epochs: expected an integer >= 2; received '1'"),
    (["--repeats", "x"], "--repeats: expected an integer >= 1; received 'x'"),
    (["--n", "50"], "--n: expected an integer >= 100; received '50'"),
    (["--noise-rounds", "0"], "--noise-rounds: expected an integer >= 1; received '0'"),
])
def test_bad_flags_are_refused_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_training.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_flops_are_counted_from_the_layers():
    # arch2: Dense 784x512 and 512x2 twice (mean, log_var) in the encoder; 2x512 and 512x784 in the decoder.
    forward = 2 * (784 * 512 + 2 * 512 * 2 + 2 * 512 + 512 * 784)
    assert bench_training.training_flops_per_image("arch2") == 3 * forward
    # arch3's first convolution alone: 28x28 outputs x 3x3 kernel x 1 -> 16 channels.
    assert bench_training.training_flops_per_image("arch3") > 3 * 2 * 28 * 28 * 9 * 16


def test_realism_confusion_report_counts_per_letter_and_costliest_pairs():
    import numpy as np

    realism = benchmark_module("realism")

    letters = "ABC"
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1, 2, 0])
    per_letter, pairs = realism.confusion_report(labels, predicted, letters, top=2)
    assert per_letter == {"A": 0.5, "B": 1.0, "C": 0.5}
    # A -> B is half of A (2 images), C -> A half of C (1 image); ties keep both.
    assert {(pair["true"], pair["predicted"], pair["share"], pair["count"]) for pair in pairs} == {
        ("A", "B", 0.5, 2), ("C", "A", 0.5, 1)}


def test_realism_refuses_a_missing_archive(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realism.py"), str(tmp_path / "none.zip")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"realism.py: archive {tmp_path / 'none.zip'} does not exist"


def test_realism_names_a_damaged_archive_in_one_line_before_training(tmp_path):
    import subprocess

    damaged = tmp_path / "gzip.zip"
    damaged.write_text("not a zip")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realism.py"), str(damaged)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"realism.py: {damaged} is not a readable zip archive")
    assert len(done.stderr.strip().splitlines()) == 1


def test_realism_summary_gives_mean_spread_and_each_letters_lowest_set():
    realism = benchmark_module("realism")

    runs = [{"seed": 1, "accuracy": 0.80, "per_letter": {"I": 0.85, "L": 0.45}},
            {"seed": 2, "accuracy": 0.84, "per_letter": {"I": 0.43, "L": 0.84}},
            {"seed": 3, "accuracy": 0.82, "per_letter": {"I": 0.67, "L": 0.65}}]
    summary = realism.summarise(runs)
    assert summary["seeds"] == [1, 2, 3]
    assert summary["accuracy_mean"] == 0.82
    assert summary["accuracy_std"] == 0.02
    assert summary["accuracy_range"] == [0.80, 0.84]
    assert summary["per_letter_mean"] == {"I": 0.65, "L": 0.6467}
    assert summary["per_letter_min"] == {"I": 0.43, "L": 0.45}
    assert summary["sets_with_every_letter_at_least_60"] == 1
    assert summary["letters_below_60_in_some_set"] == ["I", "L"]
    assert realism.summarise(runs[:1])["accuracy_std"] is None


def test_realism_refuses_fewer_than_one_seed(tmp_path):
    import subprocess

    archive = tmp_path / "gzip.zip"
    archive.write_text("never read")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realism.py"), str(archive), "--seeds", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "realism.py: expected --seeds to be at least 1, received 0"


@pytest.mark.slow
def test_realism_reference_trains_on_the_archives_own_capitals(tmp_path):
    import subprocess

    from conftest import tiny_splits, write_nist_zip

    archive = write_nist_zip(tmp_path / "gzip.zip", tiny_splits(train_per_label=4, test_per_label=2))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realism.py"), str(archive), "--reference",
                           "--seeds", "2", "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["summary"]["seeds"] == [0, 1]
    for run in result["runs"]:
        # 26 capitals x 4 to learn from, 26 x 2 to classify; digits and lower case are left out.
        assert run["trained_on"] == "real" and run["train_images"] == 104 and run["real_images"] == 52
        assert sorted(run["per_letter"]) == list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        assert 0 <= run["accuracy"] <= 1


def test_realism_refuses_a_training_size_with_reference(tmp_path):
    import subprocess

    archive = tmp_path / "gzip.zip"
    archive.write_text("never read")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realism.py"), str(archive), "--reference",
                           "--train-size", "5000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("realism.py: --train-size sizes the synthetic training set; --reference trains "
                                   "on the archive's own training capitals")
