"""Dask for the study: a LocalCluster of quiet worker processes, or a running scheduler checked before use.

* :class:`dask_client`: a client on a new LocalCluster (each worker one
  thread, TensorFlow on its share of the cores) or on a running scheduler.
* :func:`check_cluster`: before anything is submitted to a running
  scheduler, every worker must import this package at the client's version
  and see the run folder; a missing package or a blind worker is one line
  naming the worker and what to do.
* :func:`quiet_workers_plugin`: Ctrl-C ends a local worker without a traceback.

The cluster's own logging is not how the study reports: a cell's error comes
back to the client as its result. So a local worker process starts with
Dask's logging configuration at CRITICAL (``DASK_LOGGING__DISTRIBUTED``, set
before it is spawned, so it holds from its first import to its last close),
and Dask's loggers in this process report errors only while the cluster runs,
and nothing once a run was interrupted.
"""
from __future__ import annotations

import logging
import os
import signal
import uuid

from ..core.runtime import thread_options


def cores_per_worker(workers):
    """Cores each of ``workers`` worker processes on this machine trains on (at least 1)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _exit_quietly(signum, frame):
    os._exit(128 + signum)


# Dask's own logging configuration, read by ``distributed`` when it is first imported.
WORKER_LOGGING = {"DASK_LOGGING__DISTRIBUTED": "critical"}
DASK_LOGGER = logging.getLogger("distributed")


def quiet_workers_plugin():
    """A Dask worker plugin for this machine's LocalCluster: Ctrl-C or SIGTERM (a job manager's stop)
    ends a worker process at once and without a traceback.

    Its client stops the run; the worker's checkpoints are written atomically,
    so an epoch cut short costs only itself (as a killed worker does).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietWorkers(WorkerPlugin):
        name = "quiet-workers"

        def setup(self, worker):
            try:
                signal.signal(signal.SIGINT, _exit_quietly)
                signal.signal(signal.SIGTERM, _exit_quietly)
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
        import dask
        from dask.distributed import Client, LocalCluster

        if self.scheduler is not None:
            self.client = Client(self.scheduler, timeout="10s")
            return self.client
        cores = cores_per_worker(self.workers)
        # Each worker process trains one cell at a time on its share of the
        # cores: TensorFlow reads these when it starts in the worker.
        env = {**thread_options(cores), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
        # A terminal's Ctrl-C reaches every process of its group. This process
        # stops the run; a worker ends at once without a traceback (the plugin),
        # and ignores it while starting (ignored signals stay ignored in the
        # processes started meanwhile).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.level_before = DASK_LOGGER.level
        self.environ_before = {name: os.environ.get(name) for name in WORKER_LOGGING}
        DASK_LOGGER.setLevel(logging.ERROR)
        try:
            # Each nanny keeps these and sets them in this process's environment before it spawns
            # (or respawns) its worker: the worker's Dask reads its logging configuration at import.
            spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_LOGGING}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", env=env, silence_logs=logging.ERROR)
        except BaseException:
            self._restore(logging_too=True)
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        self.client = Client(self.cluster)
        self.client.register_plugin(quiet_workers_plugin())
        return self.client

    def __exit__(self, exc_type, *exc):
        # Stopped by Ctrl-C or SIGTERM, the workers are gone or going: the scheduler, client and
        # nannies in this process then log closed connections, from this thread and Dask's own,
        # during the close and after it. That is noise, and the process is about to end: Dask's
        # loggers stay quiet. Real errors of a cell reach the user as its result, not through them.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        if interrupted:
            DASK_LOGGER.setLevel(logging.CRITICAL)
        self.client.close()
        if self.cluster is None:
            return
        self.cluster.close()
        self._restore(logging_too=not interrupted)

    def _restore(self, logging_too):
        """This process's environment (the nannies set the workers' variables here to spawn them),
        and with ``logging_too`` the level of Dask's loggers, as they were before the cluster."""
        for name, value in self.environ_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if logging_too:
            DASK_LOGGER.setLevel(self.level_before)


def connect_check(scheduler, timeout=10):
    """Raise ``OSError`` with one line when no Dask scheduler answers at ``scheduler`` within ``timeout`` s."""
    from dask.distributed import Client

    try:
        client = Client(scheduler, timeout=f"{timeout}s")
    except Exception as error:
        raise OSError(f"--scheduler {scheduler}: no Dask scheduler answered within {timeout} s "
                      f"({type(error).__name__})") from None
    client.close()


def check_cluster(client, out):
    """Raise ``OSError`` with one line unless the scheduler and every worker import this package at
    the client's version, and every worker sees ``out``."""
    check_package(client)
    check_shared_storage(client, out)


def _package_probe():
    """A function that reports ``denoising_vae``'s version where it runs (or why it cannot import it).

    Made inside a function so that Dask sends it by value: a worker without
    the package could not load a function of it by name.
    """
    def probe():
        try:
            import denoising_vae
        except ImportError as error:
            return {"error": f"{type(error).__name__}: {error}"}
        return {"version": denoising_vae.__version__}
    return probe


def check_package(client):
    """Raise ``OSError`` naming the first machine whose Python lacks this package or has another version."""
    from .. import __version__

    install = (f"install it there (pip install denoising-vae=={__version__}, or pip install -e . in a copy of "
               "the repository at the same commit)")
    found = {"the scheduler": client.run_on_scheduler(_package_probe())}
    found.update({f"worker {address}": answer for address, answer in client.run(_package_probe()).items()})
    for where, answer in found.items():
        if "error" in answer:
            raise OSError(f"--scheduler: {where} cannot import denoising_vae ({answer['error']}); {install}")
        if answer["version"] != __version__:
            raise OSError(f"--scheduler: {where} has denoising_vae {answer['version']}, this client "
                          f"{__version__}; {install}")


def check_shared_storage(client, out):
    """Raise ``OSError`` unless every worker sees ``out`` (a token written here, read there)."""
    token = uuid.uuid4().hex
    probe = out / f".shared-{token}"
    probe.write_text(token)
    try:
        seen = client.run(_token_probe(), str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise OSError("--scheduler: the cluster has no workers; start some with "
                      "'dask worker ADDRESS --nthreads 1'")
    blind = [address for address, ok in seen.items() if not ok]
    if blind:
        raise OSError(f"--out {out} is not visible to worker {blind[0]}: with --scheduler, --out must be "
                      "storage every worker sees (a shared file system)")


def _token_probe():
    """A function (sent by value, as :func:`_package_probe`) telling whether ``path`` holds ``token``."""
    def sees_token(path, token):
        from pathlib import Path

        try:
            return Path(path).read_text() == token
        except OSError:
            return False
    return sees_token
