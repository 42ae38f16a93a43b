"""Sweeps: many independent cells (model x settings x seed), run on Dask, summarised with error bars.

* :func:`expand_cells` turns lists of models, latent sizes, noise levels,
  betas and seeds into :class:`Cell` s, each with its own resumable folder
  named by its settings (``cells/arch2-latent4-noise0.5-beta1-seed1``).
* :func:`run_cell` trains and evaluates one cell into its folder
  (``one_model.train_evaluate_save``); it is what a worker runs, and running
  it again resumes or skips it.
* :func:`run_cells` runs cells in this process (one worker) or on Dask
  distributed (``cluster.py``). Dask schedules, retries cells whose worker
  died and restarts workers; this module only submits and collects.
* :func:`summarise` gives per model and setting the mean, standard deviation
  and a 95 % confidence interval (Student's t with n - 1 degrees of freedom).
* :func:`run_sweep`: the whole sweep into a run folder, figures and report included.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import os
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..core import files
from ..core.checks import UsageError, first_line
from ..core.runtime import start_tensorflow
from ..data import input_read, noisy_test_copy
from . import cluster, figures, report, yardstick
from .one_model import ModelData, ModelSpec, train_evaluate_save
from .config import StudyConfig
from .messages import Progress
from .resources import processes_holding_data, usable_caches
from .run_folder import finish_run, open_run

METRICS = ("loss", "reconstruction", "kl", "accuracy", "psnr_noisy", "psnr_reconstructed", "ssim_noisy",
           "ssim_reconstructed", "log_likelihood")
LATENT_METRICS = ("probe_accuracy", "knn_accuracy", "active_units")  # a cell's "latent" section


def cell_metrics(result):
    """A finished cell's test metrics and latent measures in one dict (absent ones left out)."""
    values = dict(result.get("test", {}))
    values.update({key: value for key, value in result.get("latent", {}).items()
                   if key in LATENT_METRICS and value is not None})
    return values


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
    tensorboard: bool = False  # log each epoch under out/tensorboard/<cell name>


def cell_spec(cell: Cell, job: CellJob):
    """The :class:`ModelSpec` of ``cell``: its settings and seed, the study's training settings."""
    return ModelSpec(cell.model, cell.latent_dim, cell.noise_std, cell.beta, cell.seed, cell.study_seed,
                     job.epochs, job.batch_size, job.learning_rate, job.precision)


def run_cell(cell: Cell, job: CellJob):
    """Train and evaluate ``cell`` into ``out/cells/<name>/``; return its result dict.

    A finished cell (``cell.json`` present and readable) is returned as it is;
    an interrupted one resumes from its last finished epoch. A diverging
    loss is recorded as ``{"status": "failed", "error": ...}``, not raised.
    """
    folder = Path(job.out) / "cells" / cell.name
    done_file = folder / "cell.json"
    finished = files.read_json_object(done_file)
    if finished is not None and finished.get("status") == "done":
        return finished
    start_tensorflow()  # here, not at import: a worker starts TensorFlow only when it works
    started = time.perf_counter()
    with warnings.catch_warnings():  # the client has warned about the data already
        warnings.simplefilter("ignore")
        (x_train, y_train), (x_test, y_test) = input_read(job.data, train_size=job.train_size,
                                                          test_size=job.test_size, seed=job.data_seed)
    # The test set's noisy copy and evaluation draws follow the study seed, as in a single study.
    x_test_noisy = noisy_test_copy(x_test, cell.noise_std, cell.study_seed)
    result = {"name": cell.name, "folder": str(folder), **cell.settings()}
    try:
        entry, _ = train_evaluate_save(cell_spec(cell, job), ModelData(x_train, y_train, x_test, y_test, x_test_noisy),
                                       run_dir=folder, model_path=folder / "model.keras",
                                       tensorboard_dir=Path(job.out) / "tensorboard" / cell.name if job.tensorboard
                                       else None)
    except FloatingPointError as error:  # training.NonFiniteLossError
        result.update(status="failed", error=first_line(error))
        files.write_json(done_file, result)
        return result
    result.update(status="done", **entry, cell_seconds=round(time.perf_counter() - started, 2), pid=os.getpid())
    files.write_json(done_file, result)
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
    from distributed import KilledWorker

    with cluster.dask_client(workers, scheduler) as client:
        if scheduler is not None:
            cluster.check_cluster(client, Path(job.out))
        if dashboard and client.dashboard_link and importlib.util.find_spec("bokeh"):
            progress(f"Dask dashboard: {client.dashboard_link}")
        futures = {client.submit(run_cell, cell, job, key=f"cell-{cell.name}-{uuid.uuid4().hex[:8]}", pure=False,
                                 retries=1): cell for cell in cells}
        for done, future in enumerate(as_completed(futures), start=1):
            cell = futures[future]
            try:
                results[cell.name] = future.result()
            except KilledWorker:  # not the cell's fault: it resumes from its checkpoint next time
                results[cell.name] = {"name": cell.name, **cell.settings(),
                                      "folder": str(Path(job.out) / "cells" / cell.name), "status": "interrupted",
                                      "error": "its worker died more often than Dask retries"}
            except Exception as error:  # the cell's own failure, after Dask's retries
                results[cell.name] = {"name": cell.name, **cell.settings(),
                                      "folder": str(Path(job.out) / "cells" / cell.name),
                                      "status": "failed", "error": first_line(error)}
            report(results[cell.name], done)
    return {cell.name: results[cell.name] for cell in cells}


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
        row = {"model": model, "latent_dim": latent_dim, "noise_std": noise_std, "beta": beta, "n": len(done),
               "failed": sum(r.get("status") == "failed" for r in members),
               "interrupted": sum(r.get("status") == "interrupted" for r in members), "metrics": {}}
        for metric in METRICS + LATENT_METRICS:
            values = np.array([cell_metrics(r)[metric] for r in done if metric in cell_metrics(r)], dtype=np.float64)
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
    """One tidy row per cell: settings, seed, status, every test metric and latent measure, the precision
    and batch shards it trained with, training seconds."""
    columns = ["model", "latent_dim", "noise_std", "beta", "seed", "study_seed", "status", *METRICS, *LATENT_METRICS,
               "precision", "shards", "train_seconds", "epochs", "folder", "error"]
    with files.replacing(path) as partial, open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for result in results:
            row = {key: result.get(key, "") for key in columns}
            measured = cell_metrics(result)
            row.update({metric: measured.get(metric, "") for metric in METRICS + LATENT_METRICS})
            row["shards"] = result.get("fast_path", {}).get("shards", "")
            writer.writerow(row)


def run_sweep(config: StudyConfig, out: Path, *, workers=1, scheduler=None, tensorboard=False):
    """Run (or resume) every cell of a sweep into ``out``; return the results dict.

    Cells are models x settings x seeds (:func:`expand_cells`), each trained
    in ``out/cells/<name>/`` by :func:`run_cells`: in this process, on a Dask
    LocalCluster of ``workers`` processes, or on the Dask scheduler at
    ``scheduler``. Then ``sweep.csv``, the summary with 95 % intervals, the
    classical denoisers once per noise level, the figures and ``report.md``.
    ``tensorboard``: also log each cell's epochs under ``out/tensorboard/<cell name>``.
    """
    with usable_caches():
        return _run_sweep(config, Path(out), workers, scheduler, tensorboard)


def _run_sweep(config, out, workers, scheduler, tensorboard):
    progress = Progress()
    if scheduler is not None:
        try:
            cluster.connect_check(scheduler)
        except OSError as error:
            raise UsageError(str(error)) from None
    # Each worker process holds its own copy of the data, and so does this one.
    loaded, results, data_info = open_run(config, out, 1 if scheduler else processes_holding_data(workers))
    source = loaded.source
    progress(f"data: {source.describe()}; {data_info['train']} train and {data_info['test']} test images")
    cells = expand_cells(config.models, config.values("latent_dim"), config.values("noise_std"),
                         config.values("beta"), config.seed, config.seeds)
    where = (f"the Dask scheduler at {scheduler}" if scheduler else
             f"a Dask LocalCluster of {workers} workers" if workers > 1 else "this process")
    progress(f"sweep: {len(cells)} cells ({len(config.models)} models x {len(cells) // len(config.models) // config.seeds}"
             f" settings x {config.seeds} seeds), {config.epochs} epochs each, on {where}")
    job = CellJob(out=str(out.resolve()), data=source.path if source.kind == "emnist" else "synthetic",
                  train_size=config.train_size, test_size=config.test_size, data_seed=config.seed,
                  epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                  precision=config.precision, tensorboard=tensorboard)
    try:
        cell_results = list(run_cells(cells, job, workers=workers, scheduler=scheduler, progress=progress).values())
    except OSError as error:
        raise UsageError(first_line(error)) from None
    summary = summarise(cell_results)
    write_sweep_csv(out / "sweep.csv", cell_results)
    results.update(data=data_info, cells=cell_results, summary=summary, sweep={
        "models": list(config.models), **{s: config.values(s) for s in SWEPT}, "seeds": config.seeds,
        "workers": workers, "scheduler": scheduler, "interval": "95 % confidence, Student's t, n - 1 d.o.f."})
    files.write_json(out / "results.json", results)
    start_tensorflow()
    (x_train, _), (x_test, _) = loaded
    results["baselines"] = yardstick.study_baselines(config, x_train, x_test, results.get("baselines"), progress)
    files.write_json(out / "results.json", results)
    results["figures"] = _first_cells_figures(config, out, loaded[1], cells, cell_results, summary, results, progress)
    return finish_run(out, results, lambda done: report.render_sweep_report(config, done, done["figures"]), progress)


def _first_cells_figures(config, out, test, cells, cell_results, summary, results, progress):
    """A study's figures and results (``results["models"]``) from the first seed of each model's
    first setting, and the sweep's own figures; returns ``{key: file name}``."""
    start_tensorflow()
    from ..models.vae import load_model

    first = {}
    for cell, result in zip(cells, cell_results):
        if cell.model not in first and result.get("status") == "done":
            first[cell.model] = (cell, result)
    results["models"] = {name: {key: result[key] for key in ("epochs", "train_seconds", "history", "test",
                                                              "latent", "precision", "fast_path", "folder")
                                if key in result}
                         for name, (_, result) in first.items()}
    if not first:
        return {}
    progress("figures")
    x_test, y_test = test
    x_test_noisy = noisy_test_copy(x_test, config.values("noise_std")[0], config.seed)
    trained = {name: load_model(Path(result["folder"]) / "model.keras") for name, (_, result) in first.items()}
    made = figures.make_figures(out, config, trained, results["models"], x_test, y_test, x_test_noisy,
                                baselines=results.get("baselines"))
    made.update(figures.sweep_figures(out, config, cells, cell_results, summary, results.get("baselines")))
    return made
