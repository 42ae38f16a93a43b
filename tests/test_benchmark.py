"""benchmarks/bench_training.py: its JSON, the package's variants and the ratios to the anchors."""
import json
import sys
import textwrap

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_training  # noqa: E402


def test_benchmark_reports_ours_variants_and_ratios(tmp_path, capsys):
    # A stand-in anchor with known figures checks the ratios; the package itself really trains.
    (tmp_path / "keras_anchor.py").write_text(textwrap.dedent("""
        import json
        print(json.dumps({"anchor": "keras", "seconds_per_epoch": 9.0, "final_loss": 390.0}))
    """))
    bench_training.main(["--archs", "3", "--repeats", "1", "--epochs", "2", "--n", "200",
                         "--anchors", str(tmp_path), "--skip-load"])
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 200 and report["batch_size"] == 100 and "data_load" not in report
    entry = report["architectures"]["arch3"]
    assert set(entry) >= {"ours", "ours_fresh_noise", "keras", "speedup_vs_keras", "loss_difference_vs_keras",
                          "ours_fresh_noise_speedup_vs_keras"}
    for name in ("ours", "ours_fresh_noise"):
        ours = entry[name]
        assert "error" not in ours, ours
        assert ours["seconds_per_epoch"] > 0 and ours["device"] == "CPU"
        assert ours["samples_per_second"] == pytest.approx(200 / ours["seconds_per_epoch"], rel=0.1)  # rounded
        assert 300 < ours["final_loss"] < 600  # nats per image on the anchors' random images
    assert entry["speedup_vs_keras"] == pytest.approx(9.0 / entry["ours"]["seconds_per_epoch"], rel=0.1)
    assert entry["loss_difference_vs_keras"] == pytest.approx(entry["ours"]["final_loss"] - 390.0, abs=1e-2)
    assert "torch" not in entry  # no torch_anchor.py in that folder


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
])
def test_bad_flags_are_refused_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_training.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
