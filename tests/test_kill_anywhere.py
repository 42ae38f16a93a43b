"""benchmarks/kill_anywhere.py, short and seeded: a sweep stopped at 20 random moments ends whole.

SIGKILL, Ctrl-C and SIGTERM to the run's process group and SIGKILL to single
workers, at moments drawn from a seeded generator, each stop followed by the
same command until the sweep finishes, then a fresh folder while kills
remain. The harness checks every stop (one line and 130 or 143 after Ctrl-C
or SIGTERM, no process left, no finished cell written again, each history's
epochs once) and every finished folder against an uninterrupted run. The
long versions are in benchmarks/results/<cpu>/kill-anywhere-*.json.
"""
import pytest

from conftest import benchmark_module

KILL_ANYWHERE = benchmark_module("kill_anywhere")


@pytest.mark.slow
def test_a_sweep_stopped_at_twenty_random_moments_ends_whole_and_equal_to_an_uninterrupted_one(tmp_path):
    # Kills within 8 s of a start, less than the tiny sweep's uninterrupted run: most runs are stopped,
    # and the resumed ones, shorter, are stopped in their later phases or finish and are checked in full.
    report = KILL_ANYWHERE.main(["--tiny", "--kills", "20", "--seed", "3", "--window", "8",
                                 "--out", str(tmp_path / "runs")])
    assert report["checks"] == "passed" and sum(report["kills"].values()) == 20
    # Every stop of the whole run is followed by the same command again; a killed worker is not a stop.
    stops = sum(report["kills"][action] for action in ("sigkill", "sigint", "sigterm"))
    assert report["finished_runs"] >= 1 and report["runs"] >= stops + 1
