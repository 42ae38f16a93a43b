"""Kill a sweep (or a study) at random moments, rerun the same command each time, and check what it leaves.

    python benchmarks/kill_anywhere.py [--kills 100] [--seed 0] [--study] [--window S] [--out runs/kill-anywhere] [--json OUT]

A small sweep (arch3 and the autoencoder x latent sizes 2 and 3 x 3 seeds, 3
epochs on 520 synthetic letters, float32, two LocalCluster workers), or with
``--study`` the four models of a study on two workers, is first run once
without interruption for reference. Then the same command is started again
and again in a fresh folder; at a moment drawn at random (seeded by
``--seed``, so a failure replays) within ``--window`` seconds of the run's
start (by default the uninterrupted run's duration) one of these happens:

* ``sigkill``: the whole process group is killed, as by a power cut or a job
  manager's last word;
* ``sigint``: Ctrl-C to the process group, as a terminal sends it;
* ``sigterm``: SIGTERM to the process group, as a job manager stops a job;
* ``worker``: one worker process is killed and the run goes on (Dask retries
  its cell or model, and the next kill comes later in the same run).

After every stop the folder must hold only whole files: each finished cell's
``cell.json`` (or finished model) is never written again, and every
``history.csv`` has each epoch once, in order. A run that finishes is checked
in full: exit status 0, ``sweep.csv`` with every cell once, each history with
epochs 1..N once, ``results.json``, ``report.md`` and every figure readable,
no temporary file of a killed writer left, and every test metric equal to
the reference run's (within ``SHARD_TOLERANCE`` for a model whose last
epochs ran on another number of batch shards). If kills remain, a new
folder starts. One JSON object is printed: the kills of each kind, the runs
and how long it all took.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["--data", "synthetic", "--train-size", "520", "--test-size", "104", "--epochs", "3", "--models", "arch3,ae",
         "--latent-dim", "2,3", "--seeds", "3", "--precision", "float32", "--workers", "2"]
# The tests' short version: one model x two seeds, 2 epochs on 260 letters, one classical denoiser.
TINY_SWEEP = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "2", "--models", "ae",
              "--seeds", "2", "--precision", "float32", "--workers", "2", "--baselines", "median"]
STUDY = ["--data", "synthetic", "--train-size", "520", "--test-size", "104", "--epochs", "3", "--precision", "float32",
         "--workers", "2"]
ACTIONS = ("sigkill", "sigint", "sigterm", "worker")


def launch(flags, out):
    """The command in a process group of its own, as a terminal or a job manager starts it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "assignment_5.py"), *flags, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def group_alive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process, sig):
    """Send ``sig`` to the run's process group, wait until every process of it has ended, and
    return the run's ``(stdout, stderr)``; an ``AssertionError`` if some outlived it."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    output = process.communicate(timeout=180)
    deadline = time.time() + 60
    while group_alive(process.pid) and time.time() < deadline:
        time.sleep(0.05)
    if group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"processes of the run outlived it after {sig!r}")
    return output


def check_one_line(action, status, stderr):
    """After Ctrl-C or SIGTERM the run says one line, ending with 130 or 143; a run that had just
    finished (0) or stopped on its own (1) may have met the signal too late to say so, and one that
    had not yet started Python's signal handling ends by the signal itself, silently."""
    expected = {"sigint": ("interrupted", 130), "sigterm": ("terminated", 143)}.get(action)
    if expected is None or status in (0, 1):
        return
    word, code = expected
    lines = [line for line in stderr.splitlines() if line.strip()]
    if status == 128 - code and not lines:  # -2 or -15: killed before Python took the signal
        return
    assert status == code and len(lines) == 1 and word in lines[0], f"after {action}: status {status}, {stderr!r}"


def kill_a_worker(process):
    """SIGKILL one worker process of the run's LocalCluster; whether there was one."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:  # a child may end, or be a zombie not yet reaped, while we look
            if "spawn_main" in " ".join(child.cmdline() or []):
                child.kill()
                return True
        except psutil.Error:
            continue
    return False


def finished_files(out):
    """``{path: SHA-256}`` of every finished cell's ``cell.json`` and every finished model's file.

    A cell is finished once its ``cell.json`` exists (written last); a study's model once ``results.json``
    records it. A model's file written by a run killed before it recorded the model is not finished: the
    next run evaluates it again from its last checkpoint and writes it again.
    """
    found = list(out.glob("cells/*/cell.json"))
    try:
        recorded = json.loads((out / "results.json").read_text()).get("models", {})
    except (OSError, ValueError):
        recorded = {}
    found += [out / f"{name}.keras" for name in recorded if (out / f"{name}.keras").is_file()]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in found}


def check_histories(out, epochs=None):
    """Every ``history.csv`` has each epoch once, in order (1..N when ``epochs`` is given)."""
    for path in list(out.glob("cells/*/history.csv")) + list(out.glob("checkpoints/*/history.csv")):
        with open(path, newline="") as file:
            numbers = [int(float(row["epoch"])) for row in csv.DictReader(file)]
        assert numbers == list(range(1, len(numbers) + 1)), f"{path}: epochs {numbers}"
        if epochs is not None:
            assert len(numbers) == epochs, f"{path}: epochs {numbers}, expected 1..{epochs}"


# A model whose last epochs ran on another number of batch shards than in the uninterrupted run (a
# study resumed with one model left trains it on every core) drew the same random numbers and summed
# them in another order: its metrics agree to this relative tolerance, as tests/test_sweep.py states.
SHARD_TOLERANCE = 1e-4


def test_metrics(results):
    """``{name: (test metrics, "precision/shards")}`` of every cell (a sweep) or model (a study) in
    ``results.json``."""
    entries = ({cell["name"]: cell for cell in results["cells"]} if "cells" in results else results["models"])
    return {name: (entry.get("test"), "{precision}/{shards}".format(**entry.get("fast_path", {})))
            for name, entry in entries.items()}


def compare_metrics(found, reference):
    """Assert ``found`` equals ``reference`` (both :func:`test_metrics`): exactly where the fast path is
    the same, within ``SHARD_TOLERANCE`` where the shards differ; return the names of the latter."""
    assert sorted(found) == sorted(reference), f"{sorted(found)} != {sorted(reference)}"
    other_shards = []
    for name, (metrics, path) in found.items():
        expected, expected_path = reference[name]
        if path == expected_path:
            assert metrics == expected, f"{name}: test metrics differ from the uninterrupted run's"
            continue
        other_shards.append(name)
        for key, value in expected.items():
            assert abs(metrics[key] - value) <= SHARD_TOLERANCE * abs(value) + 1e-6, \
                f"{name} ({path}, uninterrupted {expected_path}): {key} {metrics[key]} vs {value}"
    return other_shards


def check_finished(out, reference, epochs):
    """A finished run folder: complete, readable, and with the reference run's numbers; returns the
    names whose metrics matched within ``SHARD_TOLERANCE`` (another shard count), not exactly."""
    import matplotlib.image

    results = json.loads((out / "results.json").read_text())
    other_shards = compare_metrics(test_metrics(results), reference)
    if "cells" in results:
        with open(out / "sweep.csv", newline="") as file:
            names = [Path(row["folder"]).name for row in csv.DictReader(file)]
        assert sorted(names) == sorted(reference) and len(set(names)) == len(names), names
        seeds = results["sweep"]["seeds"]
        assert results["summary"] and all(row["n"] == seeds and not row["failed"] for row in results["summary"])
    check_histories(out, epochs)
    assert not list(out.rglob(".*.part*")), f"temporary files left: {list(out.rglob('.*.part*'))}"
    assert (out / "report.md").read_text().startswith("# Denoising VAEs")
    for figure in results["figures"].values():
        assert matplotlib.image.imread(out / figure).size > 0
    return other_shards


def run(flags, out, epochs, kills, rng, reference, deadline, window):
    """Kill runs of ``flags`` at random moments until ``kills`` kills were made; return the log.

    Each kill comes at a moment drawn uniformly from 0.2 s to ``window`` s after the run's start or
    the last worker kill; a run that finishes first is checked in full.
    """
    log = {"kills": {action: 0 for action in ACTIONS}, "runs": 0, "finished_runs": 0, "folders": 1,
           "equal_within_shard_tolerance": 0}
    folder = out / "run-1"
    while sum(log["kills"].values()) < kills:
        assert time.time() < deadline, "out of time"
        finished = finished_files(folder)
        process = launch(flags, folder)
        log["runs"] += 1
        stderr = None
        while stderr is None and sum(log["kills"].values()) < kills:
            try:
                process.wait(timeout=rng.uniform(0.2, window))
            except subprocess.TimeoutExpired:
                action = rng.choice(ACTIONS)
                if action == "worker":
                    log["kills"]["worker"] += kill_a_worker(process)
                    continue
                _, stderr = stop_group(process, {"sigkill": signal.SIGKILL, "sigint": signal.SIGINT,
                                                 "sigterm": signal.SIGTERM}[action])
                log["kills"][action] += 1
                check_one_line(action, process.returncode, stderr)
            else:
                stderr = process.stderr.read()
        if stderr is None:  # the kills ran out: let this run finish
            _, stderr = process.communicate(timeout=900)
        changed = [path for path, digest in finished.items()
                   if Path(path).exists() and hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest]
        assert not changed, f"finished work written again: {changed}"
        check_histories(folder)
        if process.returncode == 0:
            log["equal_within_shard_tolerance"] += len(check_finished(folder, reference, epochs))
            log["finished_runs"] += 1
            if sum(log["kills"].values()) < kills:
                log["folders"] += 1
                folder = out / f"run-{log['folders']}"
    while process.returncode != 0:  # the last run was stopped: the same command until it finishes
        process = launch(flags, folder)
        log["runs"] += 1
        process.communicate(timeout=900)
        if process.returncode == 0:
            log["equal_within_shard_tolerance"] += len(check_finished(folder, reference, epochs))
            log["finished_runs"] += 1
    return log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="random stops in all")
    parser.add_argument("--seed", type=int, default=0, help="seeds the moments and kinds of the stops")
    parser.add_argument("--study", action="store_true", help="a study of four models instead of a sweep")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny sweep (one model, two seeds)")
    parser.add_argument("--out", default="runs/kill-anywhere", help="folder for the runs (emptied first)")
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    parser.add_argument("--window", type=float, default=None,
                        help="each kill comes within this many seconds of a run's start or the last worker kill "
                             "(default: the uninterrupted run's duration)")
    parser.add_argument("--hours", type=float, default=3.0, help="give up after this long")
    args = parser.parse_args(argv)
    import shutil

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    flags = STUDY if args.study else TINY_SWEEP if args.tiny else SWEEP
    started = time.time()
    reference_run = launch(flags, out / "reference")
    _, stderr = reference_run.communicate(timeout=900)
    assert reference_run.returncode == 0, stderr
    reference = test_metrics(json.loads((out / "reference" / "results.json").read_text()))
    reference_seconds = time.time() - started
    epochs = int(flags[flags.index("--epochs") + 1])
    window = args.window or reference_seconds
    log = run(flags, out, epochs, args.kills, random.Random(args.seed), reference, started + 3600 * args.hours,
              window)
    report = {"what": "study" if args.study else "sweep", "flags": flags, "seed": args.seed,
              "reference_seconds": round(reference_seconds, 1), "window_seconds": round(window, 1), **log,
              "seconds": round(time.time() - started, 1), "checks": "passed"}
    try:
        from bench_training import cpu_model

        report["cpu"] = cpu_model()
    except ImportError:
        pass
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
