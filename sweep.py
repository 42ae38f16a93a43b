"""Sweeps: many independent cells (model x settings x seed), run on Dask, summarised with error bars.

* :func:`expand_cells` turns lists of models, latent sizes, noise levels,
  betas and seeds into :class:`Cell` s, each with its own resumable folder
  named by its settings (``cells/arch2-latent4-noise0.5-beta1-seed1``).
* :func:`run_cell` trains and evaluates one cell into its folder; it is what
  a worker runs, and running it again resumes or skips it.
* :func:`run_cells` runs cells in this process (one worker) or on Dask
  distributed: a ``LocalCluster`` of worker processes on this machine, or a
  running scheduler. Dask schedules, retries cells whose worker died and
  restarts workers; this module only submits and collects.
* :func:`summarise` gives per model and setting the mean, standard deviation
  and a 95 % confidence interval (Student's t with n - 1 degrees of freedom).

It knows nothing of figures or the report (``assignment_5.py``, ``plots.py``).
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np

import atomic_files

METRICS = ("loss", "reconstruction", "kl", "accuracy", "psnr_noisy", "psnr_reconstructed", "ssim_noisy",
           "ssim_reconstructed", "log_likelihood")
SWEPT = ("latent_dim", "noise_std", "beta")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained model of a sweep: its settings and seed."""

    model: str
    latent_dim: int
    noise_std: float
    beta: float
    seed: int                # training seed: the replicate's study seed + the model's position
    study_seed: int          # --seed, --seed + 1, ... (test noise and evaluation draws, as a study's)

    @property
    def name(self):
        """Folder name, e.g. ``arch2-latent4-noise0.5-beta1-seed1``."""
        return (f"{self.model}-latent{self.latent_dim}-noise{self.noise_std:g}-beta{self.beta:g}"
                f"-seed{self.study_seed}")

    def settings(self):
        return {"model": self.model, "latent_dim": self.latent_dim, "noise_std": self.noise_std,
                "beta": self.beta, "seed": self.seed, "study_seed": self.study_seed}


def expand_cells(models, latent_dims, noise_stds, betas, seed, seeds):
    """Every combination of the lists, each with ``seeds`` consecutive seeds from ``seed``.

    The training seed of a cell is its replicate's seed plus the model's
    position in ``models``, as a single study seeds its models, so the first
    replicate of a one-setting sweep trains exactly what the study trains.
    """
    cells = []
    for replicate in range(seeds):
        for latent_dim in latent_dims:
            for noise_std in noise_stds:
                for beta in betas:
                    for index, model in enumerate(models):
                        cells.append(Cell(model, int(latent_dim), float(noise_std), float(beta),
                                          seed + replicate + index, seed + replicate))
    return cells


@dataclasses.dataclass(frozen=True)
class CellJob:
    """What a worker needs besides the cell: the data and training settings of the study."""

    out: str
    data: str
    train_size: int | None
    test_size: int | None
    data_seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    precision: str


def run_cell(cell: Cell, job: CellJob):
    """Train and evaluate ``cell`` into ``out/cells/<name>/``; return its result dict.

    A finished cell (``cell.json`` present and readable) is returned as it is;
    an interrupted one resumes from its last finished epoch. A diverging
    loss is recorded as ``{"status": "failed", "error": ...}``, not raised.
    """
    folder = Path(job.out) / "cells" / cell.name
    done_file = folder / "cell.json"
    finished = _read_json(done_file)
    if finished is not None and finished.get("status") == "done":
        return finished
    import startup  # here, not at import: a worker starts TensorFlow only when it works

    startup.start_tensorflow()
    import data_prepro
    import evaluation
    import models
    import training

    started = time.perf_counter()
    (x_train, _), (x_test, _) = data_prepro.input_read(job.data, train_size=job.train_size,
                                                       test_size=job.test_size, seed=job.data_seed)
    # The test set's noisy copy and evaluation draws follow the study seed, as in a single study.
    x_test_noisy = data_prepro.noisy_test_copy(x_test, cell.noise_std, cell.study_seed)
    result = {"name": cell.name, "folder": str(folder), **cell.settings()}
    try:
        path = training.choose_fast_path(cell.model, cell.latent_dim, beta=cell.beta, batch_size=job.batch_size,
                                         precision=job.precision)
        model = models.build_model(cell.model, cell.latent_dim, beta=cell.beta, seed=cell.seed,
                                   precision=path.precision)
        fitted = training.train_model(model, x_train, x_test, run_dir=folder, epochs=job.epochs,
                                      batch_size=job.batch_size, noise_std=cell.noise_std, seed=cell.seed,
                                      learning_rate=job.learning_rate, shards=path.shards, verbose=0)
    except FloatingPointError as error:  # training.NonFiniteLossError
        result.update(status="failed", error=str(error).splitlines()[0])
        _write_json(done_file, result)
        return result
    test = evaluation.evaluate(fitted.model, x_test_noisy, x_test, seed=cell.study_seed)
    models.save_model(fitted.model, folder / "model.keras")
    result.update(status="done", test=test, history=fitted.history, epochs=fitted.epochs,
                  train_seconds=round(fitted.train_seconds, 2), resumed_from=fitted.resumed_from,
                  precision=models.precision_of(fitted.model), fast_path=dataclasses.asdict(path),
                  cell_seconds=round(time.perf_counter() - started, 2), pid=os.getpid())
    _write_json(done_file, result)
    return result


def run_cells(cells, job, *, workers=1, scheduler=None, progress=print, dashboard=True):
    """Run every cell; return ``{cell.name: result}`` in the order of ``cells``.

    ``workers=1`` and no ``scheduler``: one after the other in this process.
    Otherwise on Dask distributed: a ``LocalCluster`` of ``workers``
    processes (one thread each; each worker's TensorFlow gets its share of
    the cores) or the running scheduler at ``scheduler``. A cell whose worker
    dies is rescheduled by Dask and resumes from its checkpoint.
    """
    results, started = {}, time.perf_counter()

    def report(result, done):
        elapsed = time.perf_counter() - started
        left = len(cells) - done
        eta = elapsed / done * left
        status = "" if result.get("status") == "done" else f" FAILED: {result.get('error')}"
        progress(f"cell {done}/{len(cells)} {result['name']}: {result.get('cell_seconds', 0):.0f} s{status}; "
                 f"{left} left, about {eta / 60:.1f} min")

    if workers == 1 and scheduler is None:
        for done, cell in enumerate(cells, start=1):
            results[cell.name] = run_cell(cell, job)
            report(results[cell.name], done)
        return {cell.name: results[cell.name] for cell in cells}

    from dask.distributed import as_completed

    with dask_client(workers, scheduler) as client:
        if scheduler is not None:
            check_shared_storage(client, Path(job.out))
        if dashboard and client.dashboard_link and importlib.util.find_spec("bokeh"):
            progress(f"Dask dashboard: {client.dashboard_link}")
        futures = {client.submit(run_cell, cell, job, key=f"cell-{cell.name}-{uuid.uuid4().hex[:8]}", pure=False,
                                 retries=1): cell for cell in cells}
        for done, future in enumerate(as_completed(futures), start=1):
            cell = futures[future]
            try:
                results[cell.name] = future.result()
            except Exception as error:  # the cell's own failure, after Dask's retries
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                results[cell.name] = {"name": cell.name, **cell.settings(),
                                      "folder": str(Path(job.out) / "cells" / cell.name),
                                      "status": "failed", "error": message}
            report(results[cell.name], done)
    return {cell.name: results[cell.name] for cell in cells}


def cores_per_worker(workers):
    """Cores each of ``workers`` worker processes on this machine trains on (at least 1)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _exit_quietly(signum, frame):
    os._exit(128 + signum)


class ShutdownRaceFilter(logging.Filter):
    """Drops the one error a local worker can print as its cluster closes: Dask ends
    the scheduler before the workers, and a heartbeat under way meets a closed
    connection ("Failed to communicate with scheduler during heartbeat")."""

    def filter(self, record):
        return not record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")


def quiet_workers_plugin():
    """A Dask worker plugin for this machine's LocalCluster: Ctrl-C ends a worker process at
    once and without a traceback, and the close's heartbeat race prints nothing
    (:class:`ShutdownRaceFilter`).

    Its client stops the run; the worker's checkpoints are written atomically,
    so an epoch cut short costs only itself (as a killed worker does).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietWorkers(WorkerPlugin):
        name = "quiet-workers"

        def setup(self, worker):
            logging.getLogger("distributed.worker").addFilter(ShutdownRaceFilter())
            try:
                signal.signal(signal.SIGINT, _exit_quietly)
            except ValueError:  # not the process's main thread: leave the worker as it is
                pass

    return QuietWorkers()


class dask_client:
    """``with dask_client(workers, scheduler) as client``: a Dask client on a new
    LocalCluster of ``workers`` processes (closed on exit) or on the running
    scheduler at ``scheduler``."""

    def __init__(self, workers, scheduler):
        self.workers, self.scheduler, self.cluster, self.client = workers, scheduler, None, None

    def __enter__(self):
        from dask.distributed import Client, LocalCluster

        if self.scheduler is not None:
            self.client = Client(self.scheduler, timeout="10s")
            return self.client
        cores = cores_per_worker(self.workers)
        # Each worker process trains one cell at a time on its share of the
        # cores: TensorFlow reads these when it starts in the worker.
        env = {"TF_NUM_INTEROP_THREADS": str(cores), "TF_NUM_INTRAOP_THREADS": "1",
               "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
        # A terminal's Ctrl-C reaches every process of its group. This process
        # stops the run; a worker ends at once without a traceback (the plugin),
        # and ignores it while starting (ignored signals stay ignored in the
        # processes started meanwhile).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", env=env, silence_logs=40)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.client = Client(self.cluster)
        self.client.register_plugin(quiet_workers_plugin())
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def connect_check(scheduler, timeout=10):
    """Raise ``OSError`` with one line when no Dask scheduler answers at ``scheduler`` within ``timeout`` s."""
    from dask.distributed import Client

    try:
        client = Client(scheduler, timeout=f"{timeout}s")
    except Exception as error:
        raise OSError(f"--scheduler {scheduler}: no Dask scheduler answered within {timeout} s "
                      f"({type(error).__name__})") from None
    client.close()


def check_shared_storage(client, out):
    """Raise ``OSError`` unless every worker sees ``out`` (a token written here, read there)."""
    token = uuid.uuid4().hex
    probe = out / f".shared-{token}"
    probe.write_text(token)
    try:
        seen = client.run(_sees_token, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise OSError("--scheduler: the cluster has no workers; start some with "
                      "'dask worker ADDRESS --nthreads 1'")
    blind = [address for address, ok in seen.items() if not ok]
    if blind:
        raise OSError(f"--out {out} is not visible to worker {blind[0]}: with --scheduler, --out must be "
                      "storage every worker sees (a shared file system)")


def _sees_token(path, token):
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------

def summarise(results):
    """Per model and setting (latent_dim, noise_std, beta): each metric's mean, std, 95 % CI and n.

    ``std`` is the sample standard deviation (n - 1); the interval is
    mean +- t(0.975, n - 1) * std / sqrt(n) (Student's t; ``None`` for n = 1).
    Failed cells are left out and counted in ``failed``.
    """
    from scipy import stats

    groups = {}
    for result in results:
        key = (result["model"], result["latent_dim"], result["noise_std"], result["beta"])
        groups.setdefault(key, []).append(result)
    summary = []
    for (model, latent_dim, noise_std, beta), members in groups.items():
        done = [r for r in members if r.get("status") == "done"]
        row = {"model": model, "latent_dim": latent_dim, "noise_std": noise_std, "beta": beta,
               "n": len(done), "failed": len(members) - len(done), "metrics": {}}
        for metric in METRICS:
            values = np.array([r["test"][metric] for r in done if metric in r["test"]], dtype=np.float64)
            if len(values) == 0:
                continue
            mean = float(values.mean())
            std = float(values.std(ddof=1)) if len(values) > 1 else None
            half = float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))) if std is not None \
                else None
            row["metrics"][metric] = {"mean": mean, "std": std, "ci95": None if half is None
                                      else [mean - half, mean + half], "n": len(values)}
        summary.append(row)
    return summary


def write_sweep_csv(path, results):
    """One tidy row per cell: settings, seed, status, every test metric, training seconds."""
    columns = ["model", "latent_dim", "noise_std", "beta", "seed", "study_seed", "status", *METRICS,
               "train_seconds", "epochs", "folder", "error"]
    with atomic_files.replacing(path) as partial, open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for result in results:
            row = {key: result.get(key, "") for key in columns}
            row.update({metric: result.get("test", {}).get(metric, "") for metric in METRICS})
            writer.writerow(row)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path, data):
    atomic_files.write_json(path, data, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
