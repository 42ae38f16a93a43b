"""study/cluster.py: a running scheduler is checked before anything is submitted, and TLS works."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

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

