"""Sweep throughput: cells per minute with one and two workers, and what Dask adds per cell.

    python benchmarks/bench_sweep.py [--cells-per-run 8] [--epochs 2] [--train-size 2600]

Runs the same sweep (the autoencoder, latent sizes 2..k, synthetic letters)
with ``--workers 1`` (cells one after another in one process) and
``--workers 2`` (a Dask LocalCluster of two processes), each into a fresh
folder, and prints one JSON object: wall seconds and cells per minute of
each, the sum of the cells' own seconds, and Dask's own cost: starting the
LocalCluster, and the round trip of an empty task (submit -> result),
measured over 200 tasks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_run(workers, latent_dims, epochs, train_size, out):
    flags = ["--data", "synthetic", "--models", "ae", "--latent-dim", ",".join(map(str, latent_dims)),
             "--epochs", str(epochs), "--train-size", str(train_size), "--test-size", "520",
             "--precision", "float32", "--workers", str(workers), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "assignment_5.py"), *flags], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    return {"workers": workers, "cells": len(cells), "wall_seconds": round(wall, 1),
            "cells_per_minute": round(60 * len(cells) / wall, 2),
            "sum_of_cell_seconds": round(sum(cell["cell_seconds"] for cell in cells), 1)}


def dask_overhead(tasks=200):
    from dask.distributed import Client, LocalCluster

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    client = Client(cluster)
    start_seconds = time.perf_counter() - started
    client.submit(int, 0, pure=False).result()  # warm
    started = time.perf_counter()
    for index in range(tasks):
        client.submit(int, index, pure=False).result()
    round_trip = (time.perf_counter() - started) / tasks
    client.close()
    cluster.close()
    return {"cluster_start_seconds": round(start_seconds, 2), "task_round_trip_ms": round(1000 * round_trip, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells-per-run", type=int, default=8, help="latent sizes 2 .. 2 + cells - 1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2600)
    args = parser.parse_args(argv)
    latent_dims = list(range(2, 2 + args.cells_per_run))
    report = {"cpu_count": os.cpu_count(), "epochs": args.epochs, "train_size": args.train_size, "runs": {}}
    try:
        import bench_training

        report["cpu"] = bench_training.cpu_model()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as folder:
        for workers in (1, 2):
            report["runs"][f"workers_{workers}"] = sweep_run(workers, latent_dims, args.epochs, args.train_size,
                                                             Path(folder) / f"w{workers}")
    report["dask"] = dask_overhead()
    one, two = report["runs"]["workers_1"], report["runs"]["workers_2"]
    if "wall_seconds" in one and "wall_seconds" in two:
        report["speedup_2_vs_1"] = round(one["wall_seconds"] / two["wall_seconds"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
