"""Ctrl-C and SIGTERM in every phase of a run: one line on stderr, status 130 or 143, no process left.

Each test starts a real run in its own process group (as a terminal or a job
manager sees it), waits until the run is in the phase (a file it writes or a
line it prints), sends the signal to the whole group, and checks what the
user sees. The runs stopped while loading the data or deciding the fast
path get a fresh cache (their own ``HOME`` and ``XDG_CACHE_HOME``), so that
work is really done; the others use the user's caches, as a second run does.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, benchmark_module

KILL_ANYWHERE = benchmark_module("kill_anywhere")
BASE = ["--data", "synthetic", "--train-size", "520", "--test-size", "104", "--epochs", "2", "--precision", "auto"]
WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


class Run:
    """A run of ``assignment_5.py`` in its own process group, its output going to files."""

    def __init__(self, tmp_path, flags, fresh_cache=False):
        self.out = tmp_path / "run"
        self.stdout_path, self.stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if fresh_cache:
            home = tmp_path / "home"
            home.mkdir()
            env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
        env.pop("EMNIST_PATH", None)
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, str(REPO / "assignment_5.py"), *flags,
                                             "--out", str(self.out)], cwd=REPO, stdout=stdout, stderr=stderr,
                                            text=True, env=env, start_new_session=True)

    def stdout(self):
        return self.stdout_path.read_text()

    def wait_for(self, condition, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended ({self.process.returncode}) before its phase: "
                                     f"{self.stdout()[-500:]} {self.stderr_path.read_text()[-500:]}")
            time.sleep(0.02)
        raise AssertionError("the run never reached its phase")

    def stop(self, sig):
        """Send ``sig`` to the group; wait until every process of it ended; return (status, stderr lines)."""
        try:
            KILL_ANYWHERE.stop_group(self.process, sig)
        finally:
            if KILL_ANYWHERE.group_alive(self.process.pid):
                os.killpg(self.process.pid, signal.SIGKILL)
        lines = [line for line in self.stderr_path.read_text().splitlines() if line.strip()]
        return self.process.returncode, lines


def printed(run, text):
    return lambda: text in run.stdout()


def check_stop(run, sig, not_yet):
    """Stop ``run`` with ``sig`` and check the user's view: exactly the one line, its status, and that
    the run had not yet passed the phase (``not_yet`` is a line printed only after it)."""
    status, lines = run.stop(sig)
    word, code = WORDS[sig]
    assert lines == [f"assignment_5.py: {word}; run the same command again to resume from {run.out}"], lines
    assert status == code
    assert not_yet not in run.stdout(), f"the signal came after the phase: {run.stdout()[-300:]}"


# (phase, flags, how to know the run is in it, a line printed only once it is over, the signal)
ONE_PROCESS = [
    ("data loading", ["--train-size", "13000"], lambda run: lambda: (run.out / "config.json").is_file(), "data: ",
     signal.SIGINT),
    ("fast-path decision", [], lambda run: printed(run, "data: "), "fast path", signal.SIGTERM),
    ("training", [], lambda run: printed(run, "training 2 epochs"), "trained in", signal.SIGINT),
    ("evaluation", [], lambda run: printed(run, "; evaluating"), "test loss", signal.SIGTERM),
    ("classical denoisers", ["--baselines", "all"], lambda run: printed(run, "classical denoisers ("), "] figures",
     signal.SIGINT),
    ("figures", [], lambda run: printed(run, "] figures"), "done: ", signal.SIGTERM),
]


@pytest.mark.slow
@pytest.mark.parametrize("phase, flags, reached, not_yet, sig", ONE_PROCESS, ids=[case[0] for case in ONE_PROCESS])
def test_a_stop_in_each_phase_of_a_one_process_study_is_one_line(tmp_path, phase, flags, reached, not_yet, sig):
    fresh = phase in ("data loading", "fast-path decision")
    run = Run(tmp_path, BASE + ["--models", "arch3", "--workers", "1"] + flags, fresh_cache=fresh)
    run.wait_for(reached(run))
    check_stop(run, sig, not_yet)


WORKERS = [
    ("training in workers", lambda run: printed(run, "training 2 epochs"), "trained in", signal.SIGINT),
    ("evaluation in a worker", lambda run: printed(run, "; evaluating"), "test loss", signal.SIGTERM),
    ("figures after workers", lambda run: printed(run, "] figures"), "done: ", signal.SIGINT),
]


@pytest.mark.slow
@pytest.mark.parametrize("phase, reached, not_yet, sig", WORKERS, ids=[phase for phase, *_ in WORKERS])
def test_a_stop_in_each_phase_of_a_two_worker_study_is_one_line_and_leaves_no_worker(
        tmp_path, phase, reached, not_yet, sig):
    run = Run(tmp_path, BASE + ["--models", "arch3,ae", "--workers", "2"])
    run.wait_for(reached(run))
    check_stop(run, sig, not_yet)  # stop_group fails if a worker outlives the run


SWEEP = [
    ("cells on workers", lambda run: printed(run, "cells (1 models"), "cell 1/", signal.SIGTERM),
    ("sweep's classical denoisers", lambda run: printed(run, "classical denoisers ("), "] figures", signal.SIGINT),
]


@pytest.mark.slow
@pytest.mark.parametrize("phase, reached, not_yet, sig", SWEEP, ids=[phase for phase, *_ in SWEEP])
def test_a_stop_in_each_phase_of_a_sweep_is_one_line_and_leaves_no_worker(tmp_path, phase, reached, not_yet, sig):
    run = Run(tmp_path, BASE + ["--models", "ae", "--seeds", "2", "--workers", "2", "--baselines", "all"])
    run.wait_for(reached(run))
    check_stop(run, sig, not_yet)
