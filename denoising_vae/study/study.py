"""The single study: every model trained (side by side in worker processes when there are cores for
it), tested, saved, drawn and reported into one run folder.

:func:`run_study` runs or resumes it; each model goes through
``one_model.train_evaluate_save``, in this process or in a Dask worker
(:func:`train_in_worker`), and its own figures are drawn as soon as a core is
free of training.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import uuid
import warnings
from pathlib import Path

from ..core import files
from ..core.checks import RunInterrupted, UsageError, first_line
from ..core.runtime import start_tensorflow
from ..data import input_read, noisy_test_copy
from . import cluster, figures, report, yardstick
from .config import StudyConfig
from .messages import Progress, warn
from .one_model import ModelData, ModelSpec, train_evaluate_save
from .resources import processes_holding_data, usable_caches
from .run_folder import finish_run, open_run

# Relative training time of each model on one core; it only splits the
# models into balanced chains of workers.
TRAINING_COST = {"arch3": 3, "arch1": 2, "ae": 2, "arch2": 1}
POLL_SECONDS = 3.0  # how often the main process looks up from waiting (and sees a Ctrl-C)
PROGRESS_TOPIC = "denoising-vae-progress"


def model_spec(config: StudyConfig, name, index):
    """The :class:`ModelSpec` of the study's model ``name``, ``index``-th in ``config.models``
    (its training seed is ``config.seed + index``)."""
    return ModelSpec(name, config.latent_dim, config.noise_std, config.beta, config.seed + index, config.seed,
                     config.epochs, config.batch_size, config.learning_rate, config.precision)


def run_study(config: StudyConfig, out: Path, verbose=None, workers=1, tensorboard=False):
    """Run (or resume) the study into ``out``; return the results dict.

    ``workers`` > 1 trains that many models side by side, each in a worker
    process of a Dask LocalCluster on its share of the cores
    (:func:`_train_on_workers`); the run folder and results are the same
    as with one, and a run can resume with another number.

    ``verbose`` is Keras' ``fit`` verbosity; by default a progress bar on a
    terminal and one line per epoch when stdout goes to a file.
    ``tensorboard``: also log each model's epochs under ``out/tensorboard/<model>``.
    """
    if verbose is None:
        verbose = "auto" if sys.stdout.isatty() else 2
    with usable_caches():
        return _run_study(config, Path(out), verbose, workers, tensorboard)


def _run_study(config, out, verbose, workers, tensorboard):
    progress = Progress()
    loaded, results, data_info = open_run(config, out, processes_holding_data(workers))
    start_tensorflow()  # once the flags, folder and data are known to be good
    (x_train, y_train), (x_test, y_test) = loaded
    progress(f"data: {loaded.source.describe()}; {len(x_train)} train and {len(x_test)} test images")
    x_test_noisy = noisy_test_copy(x_test, config.noise_std, config.seed)
    results["data"] = data_info
    results.setdefault("models", {})
    files.write_json(out / "results.json", results)

    trained, pending = _finished_models(config, out, results, progress)
    workers = min(workers, len(pending))
    if pending:
        results["workers"] = workers  # models trained at a time, each on its share of the cores
    if workers > 1:
        source = loaded.source
        data_name = source.path if source.kind == "emnist" else "synthetic"
        finishing = _train_on_workers(pending, config, out, data_name, workers, progress, tensorboard)
    else:
        data = ModelData(x_train, y_train, x_test, y_test, x_test_noisy)
        finishing = (_train_here(config, name, index, out, data, progress, verbose, tensorboard)
                     for index, name in pending)
    test_data = (x_test, y_test, x_test_noisy)
    made = _collect(finishing, config, out, results, trained, test_data, workers)
    from ..models.vae import load_model

    for name in config.models:  # models whose figures are made with the others' below
        if name not in trained:
            trained[name] = load_model(out / f"{name}.keras")
    # Config order, whatever order the models finished in.
    results["models"] = {name: results["models"][name] for name in config.models}
    trained = {name: trained[name] for name in config.models}
    results["baselines"] = yardstick.study_baselines(config, x_train, x_test, results.get("baselines"), progress)
    files.write_json(out / "results.json", results)
    progress("figures")
    results["figures"] = figures.make_figures(out, config, trained, results["models"], *test_data, made,
                                              baselines=results["baselines"])
    robustness = files.read_json_object(out / "robustness.json")
    return finish_run(out, results, lambda done: report.render_report(config, done, done["figures"], robustness),
                      progress)


def _finished_models(config, out, results, progress):
    """``(trained, pending)``: the models finished in an earlier run, loaded, and the ``(index, name)`` left."""
    from ..models.vae import load_model

    trained, pending = {}, []
    for index, name in enumerate(config.models):
        final_path = out / f"{name}.keras"
        if name in results["models"] and final_path.is_file():
            try:
                trained[name] = load_model(final_path)
                progress(f"{name}: already finished, loaded {final_path.name}")
                continue
            except Exception as error:  # a damaged file: evaluate again from the last checkpoint
                warn(f"{final_path} is unreadable ({first_line(error)[:80]}); evaluating {name} again "
                     "from its last checkpoint")
                results["models"].pop(name)
        pending.append((index, name))
    return trained, pending


def _train_here(config, name, index, out, data, progress, verbose, tensorboard):
    """One model in this process: ``(name, entry, model, still_training=0)``."""
    from ..training.loop import NonFiniteLossError

    try:
        entry, model = train_evaluate_save(model_spec(config, name, index), data,
                                           run_dir=out / "checkpoints" / name, model_path=out / f"{name}.keras",
                                           progress=progress, verbose=verbose,
                                           tensorboard_dir=out / "tensorboard" / name if tensorboard else None)
    except NonFiniteLossError as error:
        error.model = name
        raise
    return name, entry, model, 0


def _collect(finishing, config, out, results, trained, test_data, workers):
    """Record each model as it finishes, and draw its own figures once a core is free of training.

    Drawn beside two training workers on two cores, the figures would slow
    both; with workers, a core is free once the first chain of models has ended.
    Returns ``{name: figures.model_figures(...)}`` of the models drawn.
    """
    from ..models.vae import load_model
    from ..training.loop import NonFiniteLossError

    made, waiting = {}, []
    try:
        for name, entry, model, still_training in finishing:
            results["models"][name] = entry
            files.write_json(out / "results.json", results)
            if model is not None:
                trained[name] = model
            waiting.append(name)
            while waiting and still_training < workers:
                drawn = waiting.pop(0)
                if drawn not in trained:
                    trained[drawn] = load_model(out / f"{drawn}.keras")
                made[drawn] = figures.model_figures(out, config, drawn, trained[drawn], *test_data)
    except NonFiniteLossError as error:
        raise UsageError(f"{error.model}: training diverged in epoch {error.epoch} (the loss became NaN or "
                         f"infinite); lower --learning-rate (now {config.learning_rate:g}); "
                         f"{len(results['models'])} finished models are kept in {out / 'results.json'}") from None
    return made


def balanced_chains(pending, workers):
    """``pending`` ``(index, name)`` models split into ``workers`` lists, each trained in order
    on one worker: the costliest model first, each to the list with the least
    :data:`TRAINING_COST` so far (longest processing time first, Graham 1969)."""
    chains, loads = [[] for _ in range(workers)], [0] * workers
    for index, name in sorted(pending, key=lambda item: -TRAINING_COST.get(item[1], 1)):
        lightest = loads.index(min(loads))
        chains[lightest].append((index, name))
        loads[lightest] += TRAINING_COST.get(name, 1)
    return chains


def train_in_worker(name, index, config_fields, out, data_name, after=None, tensorboard=False):
    """:func:`train_evaluate_save` in a Dask worker process: reads the data itself and returns
    ``{"entry": ..., "lines": [...]}`` or ``{"diverged": message, "epoch": N, "lines": [...]}``.

    Each line is also sent to the client as it happens (a Dask event on
    :data:`PROGRESS_TOPIC`), so the terminal shows it then.
    ``after`` is the outcome of the model trained before this one in its
    chain (unused: passing it makes Dask run the two in order); ``tensorboard`` as in :func:`run_study`."""
    from distributed import get_worker

    start_tensorflow()
    from ..training.loop import NonFiniteLossError

    config = StudyConfig(**config_fields)
    with warnings.catch_warnings():  # the main process has warned about the data already
        warnings.simplefilter("ignore")
        (x_train, y_train), (x_test, y_test) = input_read(data_name, train_size=config.train_size,
                                                          test_size=config.test_size, seed=config.seed)
    x_test_noisy = noisy_test_copy(x_test, config.noise_std, config.seed)
    lines, worker = [], get_worker()

    def progress(line):
        worker.log_event(PROGRESS_TOPIC, {"model": name, "index": len(lines), "line": line})
        lines.append(line)

    try:
        entry, _ = train_evaluate_save(model_spec(config, name, index),
                                       ModelData(x_train, y_train, x_test, y_test, x_test_noisy),
                                       run_dir=Path(out) / "checkpoints" / name,
                                       model_path=Path(out) / f"{name}.keras", progress=progress,
                                       epoch_lines=True,
                                       tensorboard_dir=Path(out) / "tensorboard" / name if tensorboard else None)
    except NonFiniteLossError as error:
        return {"diverged": str(error), "epoch": error.epoch, "lines": lines}
    return {"entry": entry, "lines": lines}


class _WorkerLines:
    """Shows each model's lines from its worker once, in order, whether they arrive as events or with its result."""

    def __init__(self, progress):
        self.progress, self.shown, self.lock = progress, {}, threading.Lock()

    def event(self, event):
        _, message = event
        with self.lock:
            if message["index"] == self.shown.get(message["model"], 0):
                self.shown[message["model"]] = message["index"] + 1
                self.progress(message["line"])

    def finished(self, name, lines):
        with self.lock:
            for line in lines[self.shown.get(name, 0):]:
                self.progress(line)
            self.shown[name] = len(lines)


def _train_on_workers(pending, config, out, data_name, workers, progress, tensorboard):
    """Train the ``pending`` ``(index, name)`` models side by side in ``workers`` worker processes of a
    Dask LocalCluster; yield ``(name, entry, None, still_training)`` as each finishes (its model is
    saved in ``out``), ``still_training`` the models then training (one per unfinished chain).

    Each model's lines, its epochs included, are shown as they happen. Dask
    reruns a model whose worker died, and the rerun resumes from its checkpoint.
    """
    from dask.distributed import wait
    from distributed import KilledWorker

    from ..training.loop import NonFiniteLossError

    fields = dataclasses.asdict(config)
    chains = balanced_chains(pending, workers)
    lines = _WorkerLines(progress)
    with cluster.dask_client(workers, None) as client:
        client.subscribe_topic(PROGRESS_TOPIC, lines.event)
        futures, chain_of = {}, {}
        for chain_index, chain in enumerate(chains):
            previous = None
            for index, name in chain:
                previous = client.submit(train_in_worker, name, index, fields, str(out), data_name, previous,
                                         tensorboard, pure=False, retries=1, key=f"study-{name}-{uuid.uuid4().hex[:8]}")
                futures[previous] = name
                chain_of[previous] = chain_index
        cores = cluster.cores_per_worker(workers)
        order = "; ".join(" then ".join(name for _, name in chain) for chain in chains)
        progress(f"training side by side in {workers} worker processes (a Dask LocalCluster, "
                 f"{cores} core{'s' * (cores != 1)} each): {order}")
        running = set(futures)
        while running:
            try:
                wait(running, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished in that time
                pass
            done = {future for future in running if future.done()}
            running -= done
            for future in done:
                name = futures[future]
                try:
                    outcome = future.result()
                except KilledWorker:
                    raise RunInterrupted(f"{name}: its worker died more often than Dask retries") from None
                lines.finished(name, outcome["lines"])
                if "diverged" in outcome:
                    error = NonFiniteLossError(outcome["diverged"], epoch=outcome["epoch"])
                    error.model = name
                    raise error
                yield name, outcome["entry"], None, len({chain_of[other] for other in running})
