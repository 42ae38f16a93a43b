"""Ctrl-C and SIGTERM in every phase of a run: one line on stderr, status 130 or 143, no process left,
and the same command resuming.

A chain of real runs of one command, each in its own process group (as a
terminal or a job manager sees it): the first is stopped once it is in the
first phase (a file it writes or a line it prints tells), the same command is
started again and stopped in the next phase, and so on; the last run
finishes. The signal goes to the whole group, workers included. The chain
has a fresh cache (its own ``HOME`` and ``XDG_CACHE_HOME``), so loading the
data and deciding the fast path are really done. Writing the report or a
figure lasts milliseconds: there the run is stopped inside the write, which
a stalled disk holds open (``tests/hooks/slow_write``). One test per phase
checks what the user saw there and that no write cut short left a file
behind; one per chain checks that it finished whole.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, benchmark_module

KILL_ANYWHERE = benchmark_module("kill_anywhere")
SLOW_WRITE = REPO / "tests" / "hooks" / "slow_write"
BASE = ["--data", "synthetic", "--train-size", "520", "--test-size", "104", "--epochs", "2", "--precision", "auto"]
WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


def _take_ctrl_c():
    """In the child: take SIGINT as a terminal's run does, even when this suite inherited it ignored
    (started in the background of a non-interactive shell), which Python would keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """A run of ``assignment_5.py`` into ``out`` in its own process group, its output going to files;
    with ``stalled`` (a file name), the first write of that file stalls (``tests/hooks/slow_write``)."""

    def __init__(self, folder, out, flags, home, stalled=None):
        folder.mkdir(parents=True)
        self.out = out
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
        env.pop("EMNIST_PATH", None)
        self.marker = folder / "stalled"
        if stalled is not None:
            env.update(SLOW_WRITE=stalled, SLOW_WRITE_MARKER=str(self.marker),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(SLOW_WRITE), env.get("PYTHONPATH")])))
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, str(REPO / "assignment_5.py"), *flags,
                                             "--out", str(out)], cwd=REPO, stdout=stdout, stderr=stderr,
                                            text=True, env=env, start_new_session=True,
                                            preexec_fn=_take_ctrl_c)

    def stdout(self):
        return self.stdout_path.read_text()

    def stderr_lines(self):
        return [line for line in self.stderr_path.read_text().splitlines() if line.strip()]

    def wait_for(self, condition, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended ({self.process.returncode}) before its phase: "
                                     f"{self.stdout()[-300:]} {self.stderr_path.read_text()[-300:]}")
            time.sleep(0.02)
        raise AssertionError("the run never reached its phase")

    def stop(self, sig):
        """Send ``sig`` to the group and wait until every process of it ended (an AssertionError if
        some outlived it); return the run's exit status."""
        try:
            KILL_ANYWHERE.stop_group(self.process, sig)
        finally:
            if KILL_ANYWHERE.group_alive(self.process.pid):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


def printed(text):
    return lambda run: lambda: text in run.stdout()


class Stalled(str):
    """A phase reached when the run stalls in its first write of the file of this name."""

    def __call__(self, run):
        return run.marker.exists


def started(run):
    return lambda: (run.out / "config.json").is_file()  # written just before the data are read


def chain(folder, flags, stops):
    """Run ``flags`` again and again into one folder, the k-th run stopped in the k-th of ``stops``
    ``(phase, reached, later line, signal)``, then once to the end.

    Returns ``{phase: {"status", "lines", "late", "error"}, "finished": {...}, "out": out}``:
    ``late`` says the run had passed the phase when the signal came (its later line was printed).
    """
    out, home = folder / "run", folder / "home"
    home.mkdir(parents=True)
    seen = {"out": out}
    for index, (phase, reached, later, sig) in enumerate(stops):
        run = Run(folder / f"{index}-{phase}", out, flags, home, reached if isinstance(reached, Stalled) else None)
        try:
            run.wait_for(reached(run))
            status = run.stop(sig)
            seen[phase] = {"status": status, "lines": run.stderr_lines(), "late": later in run.stdout(),
                           "signal": sig, "error": None,
                           # this process's write cut short removes its temporary file itself (a worker
                           # ends at once, as if killed: the next run removes what it left)
                           "left": sorted(path.name for path in out.glob(".*.part*"))}
        except AssertionError as error:
            seen[phase] = {"error": str(error)}
            if KILL_ANYWHERE.group_alive(run.process.pid):
                os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()
    final = Run(folder / "finish", out, flags, home)
    final.process.wait(timeout=600)
    seen["finished"] = {"status": final.process.returncode, "lines": final.stderr_lines(), "stdout": final.stdout()}
    return seen


def check_phase(seen, phase):
    record = seen[phase]
    assert record["error"] is None, record["error"]
    word, code = WORDS[record["signal"]]
    assert record["lines"] == [f"assignment_5.py: {word}; run the same command again to resume from {seen['out']}"]
    assert record["status"] == code
    assert record["left"] == [], "a temporary file was left"
    assert not record["late"], "the signal came after the phase"


def check_finished(seen, histories):
    finished = seen["finished"]
    assert finished["status"] == 0 and finished["lines"] == [], finished
    # The package's lines only: a redirected stdout has no progress-bar controls.
    assert "\r" not in finished["stdout"] and "\x1b" not in finished["stdout"]
    results = json.loads((seen["out"] / "results.json").read_text())
    assert (seen["out"] / "report.md").is_file() and (seen["out"] / "comparison.png").stat().st_size > 0
    for history in histories(seen["out"]):
        rows = history.read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == [1, 2], history  # each epoch once
    return results


# (phase, how to know the run is in it, a line printed only once the phase is over, the signal)
ONE_PROCESS = [
    ("data loading", started, "data: ", signal.SIGINT),
    ("fast-path decision", printed("data: "), "fast path", signal.SIGTERM),
    ("training", printed("training 2 epochs"), "trained in", signal.SIGINT),
    ("evaluation", printed("; evaluating"), "test loss", signal.SIGTERM),
    ("classical denoisers", printed("classical denoisers ("), "] figures", signal.SIGINT),
    ("figures", printed("] figures"), "done: ", signal.SIGTERM),
    ("report writing", Stalled("report.md"), "done: ", signal.SIGINT),
]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return chain(tmp_path_factory.mktemp("one-process"), BASE + ["--models", "arch2", "--workers", "1"],
                 ONE_PROCESS)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [case[0] for case in ONE_PROCESS])
def test_a_stop_in_each_phase_of_a_one_process_study_is_one_line(one_process, phase):
    check_phase(one_process, phase)


@pytest.mark.slow
def test_a_one_process_study_stopped_in_every_phase_finishes_whole(one_process):
    results = check_finished(one_process, lambda out: [out / "checkpoints" / "arch2" / "history.csv"])
    assert list(results["models"]) == ["arch2"] and results["baselines"]["levels"]


WORKERS = [
    ("training in workers", printed("training 2 epochs"), "trained in", signal.SIGINT),
    ("evaluation in a worker", printed("; evaluating"), "test loss", signal.SIGTERM),
    ("figures", Stalled("comparison.png"), "done: ", signal.SIGINT),
    ("report writing", Stalled("report.md"), "done: ", signal.SIGTERM),
]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    return chain(tmp_path_factory.mktemp("two-workers"), BASE + ["--models", "arch2,ae", "--workers", "2"], WORKERS)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [case[0] for case in WORKERS])
def test_a_stop_in_each_phase_of_a_two_worker_study_is_one_line_and_leaves_no_worker(two_workers, phase):
    check_phase(two_workers, phase)  # the chain fails a phase whose workers outlive the run


@pytest.mark.slow
def test_a_two_worker_study_stopped_in_every_phase_finishes_whole(two_workers):
    results = check_finished(two_workers, lambda out: sorted(out.glob("checkpoints/*/history.csv")))
    assert list(results["models"]) == ["arch2", "ae"]


SWEEP = [
    ("cells on workers", printed("cells (1 models"), "cell 1/", signal.SIGTERM),
    ("the sweep's classical denoisers", printed("classical denoisers ("), "] figures", signal.SIGINT),
    ("the sweep's report writing", Stalled("report.md"), "done: ", signal.SIGTERM),
]


@pytest.fixture(scope="module")
def sweep_chain(tmp_path_factory):
    return chain(tmp_path_factory.mktemp("sweep"), BASE + ["--models", "ae", "--seeds", "2", "--workers", "2"], SWEEP)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [case[0] for case in SWEEP])
def test_a_stop_in_each_phase_of_a_sweep_is_one_line_and_leaves_no_worker(sweep_chain, phase):
    check_phase(sweep_chain, phase)


@pytest.mark.slow
def test_a_sweep_stopped_in_every_phase_finishes_whole(sweep_chain):
    results = check_finished(sweep_chain, lambda out: sorted(out.glob("cells/*/history.csv")))
    assert sorted(cell["name"] for cell in results["cells"]) == [f"ae-latent2-noise0.5-beta1-seed{s}" for s in (0, 1)]
    assert len((sweep_chain["out"] / "sweep.csv").read_text().splitlines()) == 3
