"""Shared fixtures: a hermetic environment, a tiny NIST-layout EMNIST archive, real Dask clusters."""
import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from denoising_vae.core import constants, runtime
from denoising_vae.data import download, sources

# The package's thread options and a quiet start, before any test module imports TensorFlow.
runtime.start_tensorflow()

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO.parent / "shared" / "data" / "emnist-sample.zip"


def benchmark_module(name):
    """``benchmarks/NAME.py`` as a module: the benchmarks are scripts, not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_port_url():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/gzip.zip"


def _make_hermetic(patch, home, tmp_path_factory):
    patch.setenv("HOME", str(home))
    # One package cache for the whole session: the glyph bank is built and
    # each model's fast path decided once, not in every test.
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "shared-cache"))
    patch.delenv("EMNIST_PATH", raising=False)
    unreachable = closed_port_url()
    patch.setattr(download, "download_urls", lambda: [unreachable])


@pytest.fixture(scope="session", autouse=True)
def hermetic_session(tmp_path_factory):
    """The hermetic environment for session- and module-scoped fixtures too,
    which pytest sets up before any per-test fixture."""
    patch = pytest.MonkeyPatch()
    _make_hermetic(patch, tmp_path_factory.mktemp("session-home"), tmp_path_factory)
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def decided_fast_paths(hermetic_session, tmp_path_factory):
    """The shared cache starts with each model's fast path decided (float32, one shard per core).

    Deciding by timing costs 5-9 s per model and precision; which path runs
    never changes a result, so tests that are not about the decision skip
    it. ``test_fast_path.py`` times the real model and tests the decision logic.
    """
    from denoising_vae.models import fast_path
    from denoising_vae.training import step_timing

    cache_file = tmp_path_factory.getbasetemp() / "shared-cache" / "denoising_vae" / "fast_path.json"
    # For this process's cores and for a worker process's share (one core of a
    # study's or sweep's LocalCluster on this machine).
    patch = pytest.MonkeyPatch()
    for cores in sorted({os.environ.get("TF_NUM_INTEROP_THREADS", str(os.cpu_count() or 1)), "1"}):
        patch.setenv("TF_NUM_INTEROP_THREADS", cores)
        for architecture in constants.ARCHITECTURES:
            for precision in ("auto", "float32"):
                fast_path.choose_path({"architecture": architecture, "latent_dim": 2, "batch_size": 100,
                                      "step_code": step_timing.step_code_key()},
                                     lambda candidate, shards: lambda: 1.0 / shards + (candidate != "float32"),
                                     precision=precision, cache_file=cache_file)
    patch.undo()
    return cache_file


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory, monkeypatch):
    """No test reads the user's cache, EMNIST_PATH or the internet; each test has a home of its own."""
    _make_hermetic(monkeypatch, tmp_path_factory.mktemp("home"), tmp_path_factory)
    yield


def idx_bytes(array, magic_dims=None):
    """Encode a uint8 array as an IDX file (optionally with a wrong dimension count)."""
    array = np.asarray(array, np.uint8)
    ndim = array.ndim if magic_dims is None else magic_dims
    header = bytes([0, 0, 0x08, ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_nist_zip(path, splits, members=None):
    """Write ``splits = {"train": (upright_u8, labels), "test": ...}`` in NIST's layout.

    Images are stored transposed, as NIST does. ``members`` overrides the
    bytes of chosen members (already compressed), for damaged archives.
    """
    members = dict(members or {})
    with zipfile.ZipFile(path, "w") as archive:
        for usage, (images, labels) in splits.items():
            image_name = f"gzip/emnist-balanced-{usage}-images-idx3-ubyte.gz"
            label_name = f"gzip/emnist-balanced-{usage}-labels-idx1-ubyte.gz"
            stored = np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 2, 1))
            archive.writestr(image_name, members.pop(image_name, gzip.compress(idx_bytes(stored))))
            archive.writestr(label_name, members.pop(label_name, gzip.compress(idx_bytes(labels))))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tiny_splits(seed=0, train_per_label=3, test_per_label=2):
    """Random upright images for every EMNIST balanced label 0-46."""
    rng = np.random.default_rng(seed)
    out = {}
    for usage, per_label in (("train", train_per_label), ("test", test_per_label)):
        labels = np.repeat(np.arange(47, dtype=np.uint8), per_label)
        rng.shuffle(labels)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        out[usage] = (images, labels)
    return out


@pytest.fixture
def tiny_zip(tmp_path):
    """``(path, splits)``: a small NIST-layout gzip.zip with digits, capitals and lower case."""
    splits = tiny_splits()
    return write_nist_zip(tmp_path / "gzip.zip", splits), splits


EXPECTED_PARAMS = {
    "arch1": {"encoder": 2_892, "decoder": 334_352, "total": 337_244},
    "arch2": {"encoder": 403_972, "decoder": 403_728, "total": 807_700},
    "arch3": {"encoder": 2_420, "decoder": 2_865, "total": 5_285},
    "ae": {"encoder": 2_106, "decoder": 334_352, "total": 336_458},
}


def weights_of(model):
    """A model's weights as a list of numpy arrays."""
    return [np.array(w) for w in model.get_weights()]


def numpy_reconstruction(clean, predicted):
    p = np.clip(predicted.reshape(len(predicted), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    c = clean.reshape(len(clean), -1).astype(np.float64)
    return -(c * np.log(p) + (1 - c) * np.log(1 - p)).sum(1)


def numpy_kl(mean, log_var):
    return -0.5 * (1 + log_var - mean ** 2 - np.exp(log_var)).sum(1)


@pytest.fixture(scope="module")
def letters():
    """Small synthetic train and validation sets, (N, 28, 28, 1) float32."""
    (x, _), (xt, _) = sources.input_read("synthetic", train_size=300, test_size=100, seed=0,
                                             cache_dir=os.environ.get("TMPDIR", "/tmp") + "/vae-test-cache")
    return x, xt


DASK = Path(sys.executable).parent / "dask"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_dask_cluster():
    """``start(folder, workers=2, protocol="tcp", preload=None, env=None)``: a real ``dask scheduler`` and
    ``dask worker`` processes on 127.0.0.1, started in ``folder`` (outside the repository, as on another
    machine); returns ``(address, client)``. ``preload`` is a Python file each worker runs first;
    ``env`` is added to every process's environment (Dask's configuration, for TLS). All stop at the end."""
    processes, clients = [], []

    def start(folder, workers=2, protocol="tcp", preload=None, env=None):
        port = free_port()
        address = f"{protocol}://127.0.0.1:{port}"
        environment = {**os.environ, "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
                       "MPLBACKEND": "Agg", **(env or {})}
        environment.pop("PYTHONPATH", None)

        def launch(command):
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              cwd=folder, start_new_session=True, env=environment))
        launch([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", protocol,
                "--dashboard-address", ":0"])
        for i in range(workers):
            launch([str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
                    "--local-directory", str(folder / f"worker{i}")] + (["--preload", str(preload)] if preload else []))
        from dask.distributed import Client

        with dask_config(env):
            client = Client(address, timeout="30s")
            clients.append(client)
            client.wait_for_workers(workers, timeout=60)
        return address, client

    yield start
    for client in clients:
        client.close()
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def dask_config(env):
    """Dask's configuration re-read with ``env``'s ``DASK_CONFIG`` folder (if any) for the block."""
    folder = (env or {}).get("DASK_CONFIG")
    if folder is None:
        yield
        return
    import dask.config
    import yaml

    def dotted(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from dotted(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    settings = {key: value for path in Path(folder).glob("*.yaml")
                for key, value in dotted(yaml.safe_load(path.read_text()))}
    with dask.config.set(settings):
        yield
