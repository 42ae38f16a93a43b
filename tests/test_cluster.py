"""study/cluster.py: a running scheduler is checked before anything is submitted, TLS works, and a
LocalCluster's own logging stays quiet."""
import importlib
import logging
import os
import subprocess
import sys

import pytest

from conftest import REPO
from denoising_vae.study import cluster

TINY = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "1", "--models", "arch3",
        "--seeds", "2", "--precision", "float32", "--baselines", "none"]

pytestmark = pytest.mark.slow

BLOCK_THE_PACKAGE = '''
import sys


class NoDenoisingVAE:
    """This worker's Python lacks the package, as on a machine where it was never installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "denoising_vae":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, NoDenoisingVAE())
'''

ANOTHER_VERSION = '''
import denoising_vae

denoising_vae.__version__ = "0.0.1"
'''


def run_cli(flags, cwd, env=None):
    """``python assignment_5.py FLAGS`` in a fresh process; ``(status, stdout, stderr)``."""
    environment = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, str(REPO / "assignment_5.py"), *flags], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("preload, message", [
    (BLOCK_THE_PACKAGE, "cannot import denoising_vae (ModuleNotFoundError: No module named 'denoising_vae')"),
    (ANOTHER_VERSION, "has denoising_vae 0.0.1, this client "),
])
def test_a_worker_without_the_package_or_with_another_version_is_named_before_anything_runs(
        tmp_path, start_dask_cluster, preload, message):
    script = tmp_path / "preload.py"
    script.write_text(preload)
    address, _ = start_dask_cluster(tmp_path, workers=1, preload=script)
    out = tmp_path / "run"
    status, _, err = run_cli(TINY + ["--scheduler", address, "--out", str(out)], cwd=tmp_path)
    assert status == 2, err
    assert err.startswith("assignment_5.py: error: --scheduler: worker tcp://127.0.0.1:") and message in err
    assert "pip install" in err and err.count("\n") == 1
    assert not (out / "cells").exists()  # nothing was submitted


def tls_settings(folder):
    """A throwaway self-signed certificate for 127.0.0.1 and Dask's configuration using it everywhere;
    returns the configuration folder (for ``DASK_CONFIG``)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    config = folder / "dask-config"
    config.mkdir()
    roles = "\n".join(f"      {role}:\n        cert: {cert}\n        key: {key}"
                      for role in ("scheduler", "worker", "client"))
    (config / "tls.yaml").write_text(f"distributed:\n  comm:\n    require-encryption: true\n    tls:\n"
                                     f"      ca-file: {cert}\n{roles}\n")
    return config


def test_a_sweep_runs_on_a_tls_scheduler_and_a_client_without_the_certificate_is_refused(
        tmp_path, start_dask_cluster):
    config = tls_settings(tmp_path)
    address, _ = start_dask_cluster(tmp_path, workers=1, protocol="tls", env={"DASK_CONFIG": str(config)})
    assert address.startswith("tls://")
    out = tmp_path / "run"
    status, _, err = run_cli(TINY + ["--scheduler", address, "--out", str(out)], cwd=tmp_path,
                             env={"DASK_CONFIG": str(config)})
    assert status == 0, err
    assert len(list((out / "cells").glob("*/cell.json"))) == 2
    stranger = tmp_path / "no-certificate"
    stranger.mkdir()
    status, _, err = run_cli(TINY + ["--scheduler", address, "--out", str(tmp_path / "other")], cwd=tmp_path,
                             env={"DASK_CONFIG": str(stranger)})
    assert status == 2 and "no Dask scheduler answered" in err and err.count("\n") == 1



def _log_as_a_closing_cluster_does():
    """In a worker: what Dask's loggers say as a cluster closes under them, and one line of another
    logger, which must come through (it shows this worker's stderr is the one the test reads)."""
    import logging

    logging.getLogger("distributed.batched").info("Batched Comm Closed <TCP (closed)>")
    logging.getLogger("distributed.worker").error("Failed to communicate with scheduler during heartbeat.")
    try:
        raise ConnectionError("Stream is closed")
    except ConnectionError:
        logging.getLogger("distributed.core").exception("CommClosedError")
    logging.getLogger("not-dask").warning("a line of another logger")
    return logging.getLogger("distributed").getEffectiveLevel()


def test_a_local_clusters_own_logging_is_quiet_in_every_worker_and_once_a_run_is_interrupted(capfd):
    importlib.import_module("distributed")  # which sets its loggers' levels

    before = cluster.DASK_LOGGER.level
    with cluster.dask_client(2, None) as client:
        assert cluster.DASK_LOGGER.level == logging.ERROR  # here: errors only, while the cluster runs
        assert list(client.run(_log_as_a_closing_cluster_does).values()) == [logging.CRITICAL] * 2
        client.restart()  # respawned workers start with the same configuration
        assert list(client.run(_log_as_a_closing_cluster_does).values()) == [logging.CRITICAL] * 2
    assert cluster.DASK_LOGGER.level == before and "DASK_LOGGING__DISTRIBUTED" not in os.environ
    err = capfd.readouterr().err
    assert err.count("a line of another logger") == 4 and "distributed" not in err and "Closed" not in err, err
    try:
        with pytest.raises(KeyboardInterrupt):
            with cluster.dask_client(2, None):
                raise KeyboardInterrupt
        # The process is about to end: the loggers stay quiet for what Dask's threads still say.
        assert cluster.DASK_LOGGER.level == logging.CRITICAL
    finally:
        cluster.DASK_LOGGER.setLevel(before)
    assert capfd.readouterr().err == ""
