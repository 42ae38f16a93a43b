"""Data for the denoising VAE study: EMNIST capital letters and Gaussian noise.

The report's ``Input_read`` and ``Noise_addition`` live here as
:func:`input_read` and :func:`noise_addition`.

* ``input_read`` returns ``(x_train, y_train), (x_test, y_test)`` like
  ``keras.datasets``: ``x`` float32 of shape (N, 28, 28, 1) in [0, 1] with
  letters upright, ``y`` int64 labels 0-25 for ``LETTERS``. The returned pair
  also carries ``.source``, a :class:`DataSource` saying where it came from.
* Real data is EMNIST *balanced* (Cohen et al. 2017) read straight from NIST's
  ``gzip.zip``; only labels 10-35 (capitals) are kept, as label - 10.
* Offline, a synthetic stand-in comes from ``synthetic_letters.py``; this
  module balances, caches and labels it like the real data.
* :func:`check_images`, :func:`check_pair`, :func:`as_model_input`,
  :func:`check_noise_std` and :func:`check_positive_int` validate what the other modules are given.

This module never imports TensorFlow, so a notebook imports it in a moment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import threading
import urllib.parse
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

import atomic_files
from synthetic_letters import generator_key, synthetic_letters

LOGGER = logging.getLogger("data_prepro")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IMAGE_SIZE = 28
# EMNIST balanced labels: 0-9 digits, 10-35 capitals A-Z, 36-46 some lower case.
FIRST_CAPITAL_LABEL = 10
# Full EMNIST balanced capitals: 2,400 train and 400 test images per letter.
EMNIST_TRAIN_CAPITALS = 62_400
EMNIST_TEST_CAPITALS = 10_400

NIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
# MD5 of NIST's gzip.zip as torchvision's EMNIST loader pins it; the archive
# cannot be fetched here, so no other digest of it can be pinned honestly.
NIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"
# No EMNIST split has more images (byclass train: 697,932): an IDX header
# declaring more is damaged or hostile, and bounds how far a member may inflate.
MAX_IDX_ITEMS = 1_000_000
MEMBER_TEMPLATE = "gzip/emnist-balanced-{usage}-{kind}-idx{dims}-ubyte.gz"
SOURCE_WORDS = ("auto", "emnist", "synthetic")
# Connect/read timeouts (s) of a download; ``auto`` probes with a shorter one.
DOWNLOAD_TIMEOUT = (10.0, 60.0)
AUTO_PROBE_TIMEOUT = 3.0
# Bump when the prepared-array format changes, so stale caches are rebuilt
# instead of trusted (synthetic sets are also keyed by the generator's code).
CACHE_VERSION = 2

GET_REAL_DATA_HINT = (
    f"to use real EMNIST, download {NIST_URL} (536 MB) to ~/.cache/emnist/emnist.zip, "
    "or set EMNIST_PATH, or pass its path as source"
)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a data set came from, for logs, results and reports.

    Attributes:
        kind: ``"emnist"`` (real NIST data) or ``"synthetic"``.
        path: the archive or folder read, for ``"emnist"``; else ``None``.
        seed: the seed of the subsample or of the synthetic generator.
        note: why ``auto`` chose this source, empty when it was asked for.
    """

    kind: str
    path: str | None = None
    seed: int = 0
    note: str = ""
    verified: bool | None = None  # real data: whether the archive's MD5 is NIST's (None: a folder)
    md5: str | None = None

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``EMNIST balanced capitals from /x/gzip.zip``."""
        if self.kind == "emnist":
            text = f"EMNIST balanced capitals from {self.path}"
            if self.verified is False:
                text += f" (unverified archive, MD5 {self.md5})"
            elif self.verified is None:
                text += " (unverified: a folder of .gz files)"
        else:
            text = f"synthetic capitals written with pen strokes (seed {self.seed})"
        return f"{text} [{self.note}]" if self.note else text


class LoadedData(tuple):
    """``((x_train, y_train), (x_test, y_test))`` that also carries ``.source``."""

    def __new__(cls, train, test, source: DataSource):
        loaded = super().__new__(cls, (train, test))
        loaded.source = source
        return loaded


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def input_read(source="auto", *, train_size=None, test_size=None, seed=0, cache_dir=None):
    """Load EMNIST balanced capital letters (the report's ``Input_read``).

    Args:
        source: ``"auto"`` (real EMNIST when present or downloadable in a few
            seconds, else synthetic with a warning), ``"emnist"`` (real data:
            ``EMNIST_PATH``, then ``~/.cache/emnist/emnist.zip``, then a
            download), ``"synthetic"`` (offline stand-in), or a path to NIST's
            ``gzip.zip`` or to a folder holding its four balanced ``.gz`` files.
        train_size, test_size: ``None`` for everything (62,400 / 10,400 for
            full EMNIST), else a subsample balanced across letters,
            deterministic for ``seed``.
        seed: seed of the subsample and of the synthetic generator.
        cache_dir: folder for downloads and prepared arrays; default
            ``~/.cache/emnist``.

    Returns:
        ``LoadedData`` unpacking as ``(x_train, y_train), (x_test, y_test)``:
        ``x`` float32 (N, 28, 28, 1) in [0, 1], upright; ``y`` int64 (N,) in
        0-25 (index into ``LETTERS``). ``.source`` is a :class:`DataSource`.
    """
    train_size = _check_size("train_size", train_size)
    test_size = _check_size("test_size", test_size)
    seed = _check_seed(seed)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    if isinstance(source, Path) or (isinstance(source, str) and source not in SOURCE_WORDS):
        archive = _resolve_path_source(source)
        return _load_emnist(archive, train_size, test_size, seed, cache_dir, note="")
    if not isinstance(source, str):
        raise ValueError(f"Expected source to be one of {SOURCE_WORDS} or a path. "
                         f"Received: source={source!r}")
    if source == "synthetic":
        return _load_synthetic(train_size, test_size, seed, cache_dir, note="")
    archive = _find_archive(cache_dir)
    if source == "emnist":
        archive = archive or download_emnist(cache_dir / "emnist.zip")
        return _load_emnist(archive, train_size, test_size, seed, cache_dir, note="")
    # auto
    if archive is None:
        try:
            archive = download_emnist(cache_dir / "emnist.zip", probe_timeout=AUTO_PROBE_TIMEOUT)
        except OSError as error:
            note = "real EMNIST unavailable: no archive on disk and no download"
            warnings.warn(f"Using SYNTHETIC letters, not EMNIST: {note} ({_first_line(error)}); "
                          f"{GET_REAL_DATA_HINT}", stacklevel=2)
            return _load_synthetic(train_size, test_size, seed, cache_dir, note=note)
    return _load_emnist(archive, train_size, test_size, seed, cache_dir, note="")


def default_cache_dir() -> Path:
    """``~/.cache/emnist``: the ``emnist`` package's cache folder."""
    return Path(os.path.expanduser("~/.cache/emnist"))


def _check_size(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Expected {name} to be a positive integer or None. Received: {name}={value!r}")
    return int(value)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative integer. Received: seed={seed!r}")
    return int(seed)


def _first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------

def noise_addition(x, noise_std=0.5, seed=None):
    """Add Gaussian noise and clip (the report's ``Noise_addition``).

    Returns ``clip(x + N(0, noise_std**2), 0, 1)`` as a new float32 array of
    ``x``'s shape; ``x`` itself is never modified.

    Args:
        x: images, shape (N, 28, 28) or (N, 28, 28, 1), values in [0, 1].
        noise_std: standard deviation of the noise, finite and >= 0;
            0 returns an equal copy.
        seed: ``None`` for fresh noise, an int for reproducible noise.
    """
    x = check_images(x, "x")
    noise_std = check_noise_std(noise_std)
    if noise_std == 0:
        return x.astype(np.float32, copy=True)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise *= np.float32(noise_std)
    noise += x
    return np.clip(noise, 0.0, 1.0, out=noise)


def noisy_test_copy(x_test, noise_std, study_seed):
    """The study's one fixed noisy copy of the test set: :func:`noise_addition` seeded ``study_seed + 7``.

    One definition, so a study in one process, its worker processes and the
    sweep cells of that seed all test on the same noisy images.
    """
    return noise_addition(x_test, noise_std, seed=study_seed + 7)


def check_images(x, name="x"):
    """Validate a batch of images; return it as a numpy array (no copy when possible).

    Expected: shape (N, 28, 28) or (N, 28, 28, 1) with N >= 1, real finite
    values in [0, 1]. Raises a one-line ``ValueError`` naming ``name`` otherwise.
    """
    x = np.asarray(x)
    expected = f"shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}) or (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1)"
    if x.ndim not in (3, 4) or x.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE) \
            or (x.ndim == 4 and x.shape[3] != 1) or x.shape[0] < 1:
        raise ValueError(f"Expected {name} with {expected}. Received: {name}.shape={x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) \
            or np.issubdtype(x.dtype, np.bool_):
        raise ValueError(f"Expected {name} with a real numeric dtype. Received: {name}.dtype={x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"Expected {name} with finite values. Received: {bad} NaN or inf values in {name}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"Expected {name} with values in [0, 1]. Received: {name} in [{low:g}, {high:g}]")
    return x


def check_positive_int(name, value):
    """``value`` as an int if it is an integer >= 1, else a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return int(value)


def check_noise_std(noise_std):
    """``noise_std`` as a float if it is a finite number >= 0, else a one-line ``ValueError``."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, np.integer, np.floating)) \
            or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"Expected noise_std to be a finite number >= 0. Received: noise_std={noise_std!r}")
    return float(noise_std)


def check_pair(noisy, clean, noisy_name="x_noisy", clean_name="x_clean"):
    """Validate matching (noisy, clean) image arrays; return them as float32 (N, 28, 28, 1)."""
    noisy = check_images(noisy, noisy_name)
    clean = check_images(clean, clean_name)
    if len(noisy) != len(clean):
        raise ValueError(f"Expected {noisy_name} and {clean_name} of the same length. "
                         f"Received: {len(noisy)} and {len(clean)} images")
    return as_model_input(noisy), as_model_input(clean)


def as_model_input(x):
    """(N, 28, 28[, 1]) -> float32 (N, 28, 28, 1) without copying when already so."""
    x = np.asarray(x, dtype=np.float32)
    return x[..., None] if x.ndim == 3 else x


# --------------------------------------------------------------------------
# Real EMNIST: finding, downloading and reading NIST's archive
# --------------------------------------------------------------------------

def _resolve_path_source(source) -> Path:
    text = str(source)
    looks_like_path = isinstance(source, Path) or os.sep in text or "/" in text or text.endswith(".zip") \
        or os.path.exists(text)
    if not looks_like_path:
        raise ValueError(f"Expected source to be one of {SOURCE_WORDS} or a path to NIST's gzip.zip. "
                         f"Received: source={source!r}")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source path {str(path)!r} does not exist: expected NIST's gzip.zip "
                                "or a folder holding its emnist-balanced-*-ubyte.gz files")
    return path


def _find_archive(cache_dir: Path):
    """The first existing archive: ``$EMNIST_PATH``, then ``cache_dir/emnist.zip``; else None."""
    from_env = os.environ.get("EMNIST_PATH")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"EMNIST_PATH={from_env!r} does not exist: expected NIST's gzip.zip "
                                    "or a folder holding its emnist-balanced-*-ubyte.gz files")
        return path
    cached = cache_dir / "emnist.zip"
    return cached if cached.is_file() else None


def download_urls():
    """Addresses tried in order: NIST's current one, then the ``emnist`` package's own list."""
    urls = [NIST_URL]
    try:
        import emnist  # only for its list of mirrors; its parser fails on NumPy >= 2.4

        urls += [url for url in emnist.SOURCE_URLS if url not in urls]
    except ImportError:
        pass
    return urls


def download_emnist(destination, urls=None, timeout=DOWNLOAD_TIMEOUT, probe_timeout=None, expected_md5=None):
    """Download NIST's ``gzip.zip`` to ``destination``, accepting only NIST's bytes; return its path.

    Data go to ``destination + '.part'``; MD5 and SHA-256 are computed while
    the bytes stream in. The archive is renamed into place only when its MD5
    is ``expected_md5`` and it is a zip with the balanced members; its digests
    are then recorded (see :func:`archive_digests`) so later runs trust it
    without hashing it again. A download from an address whose bytes do not
    match is deleted and the next address tried, with both digests in the log.

    An interrupted transfer keeps its ``.part`` file (and ``.part.json``: the
    address and expected size); the next call continues it with an HTTP
    ``Range`` request where the server accepts ranges, and starts again from
    zero where it does not or the address changed.

    Args:
        destination: the archive's final path (parent folders are created).
        urls: addresses to try in order; default :func:`download_urls`.
        timeout: ``(connect, read)`` seconds for each request.
        probe_timeout: if given, first check within this many seconds (name
            lookup included) that some address's host answers at all.
        expected_md5: the digest to accept; default :data:`NIST_MD5`.

    Raises:
        OSError (``ConnectionError``) naming every address tried when none worked.
    """
    import requests

    expected_md5 = (expected_md5 or NIST_MD5).lower()
    destination = Path(destination)
    urls = list(urls) if urls is not None else download_urls()
    if probe_timeout is not None and not any(_host_answers(url, probe_timeout) for url in urls):
        raise ConnectionError(f"no EMNIST download address answered within {probe_timeout:g} s "
                              f"(offline?): {', '.join(urls)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    failures = []
    for url in urls:
        try:
            md5, sha256 = _fetch(url, partial, timeout, desc=f"EMNIST {destination.name}")
            if md5 != expected_md5:
                LOGGER.warning("%s served an archive with MD5 %s (SHA-256 %s), not NIST's %s; deleted it, "
                               "trying the next address", url, md5, sha256, expected_md5)
                _forget_partial(partial)
                failures.append(f"{url}: MD5 {md5} is not NIST's {expected_md5}")
                continue
            _check_archive(partial)
            os.replace(partial, destination)
            _forget_partial(partial)
            _record_digests(destination, md5, sha256)
            LOGGER.info("downloaded EMNIST from %s to %s (MD5 %s verified)", url, destination, md5)
            return destination
        except ValueError as error:  # not a zip with the balanced members: not worth resuming
            _forget_partial(partial)
            failures.append(f"{url}: {_first_line(error)}")
        except (OSError, requests.RequestException) as error:  # the .part stays, to be continued
            failures.append(f"{url}: {_first_line(error)}")
    raise ConnectionError("could not download EMNIST: " + "; ".join(failures))


def _fetch(url, partial: Path, timeout, desc):
    """Stream ``url`` into ``partial``, continuing it when it came from ``url``; ``(md5, sha256)`` hex digests.

    Raises ``OSError`` when fewer bytes arrive than announced (the partial
    file and its ``.json`` stay for the next call).
    """
    import requests
    from tqdm import tqdm

    meta_path = partial.with_name(partial.name + ".json")
    meta = _read_meta(meta_path)
    have = partial.stat().st_size if partial.is_file() and meta.get("url") == url else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]  # the server sends everything if the file changed
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
        response.raise_for_status()
        length = int(response.headers.get("content-length", 0)) or None
        resumed = have and response.status_code == 206 \
            and response.headers.get("content-range", "").startswith(f"bytes {have}-")
        if resumed:
            with open(partial, "rb") as file:  # the digest covers the bytes kept from before
                for block in iter(lambda: file.read(1 << 20), b""):
                    md5.update(block)
                    sha256.update(block)
            LOGGER.info("continuing the EMNIST download from %s at byte %d", url, have)
        else:
            have = 0
        total = have + length if length is not None else None
        validator = response.headers.get("etag") or response.headers.get("last-modified")
        _write_meta(meta_path, {"url": url, "total": total, "validator": validator})
        with open(partial, "ab" if resumed else "wb") as file, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                     disable=None) as progress:
            # Small chunks: a connection that dies loses at most the chunk in flight.
            for chunk in response.iter_content(chunk_size=1 << 16):
                file.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                progress.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        raise OSError(f"got {size} of {total} bytes; the next download continues from there")
    return md5.hexdigest(), sha256.hexdigest()


def _read_meta(path):
    try:
        meta = json.loads(Path(path).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path, meta):
    try:
        atomic_files.write_text(path, json.dumps(meta))
    except OSError as error:
        LOGGER.warning("could not write %s (%s); an interrupted download will start again", path, error)


def _forget_partial(partial: Path):
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def archive_digests(path):
    """``(md5, sha256)`` of an archive file, from its record when size and modification time still match.

    The record, ``<archive>.digests.json``, is written after a verified
    download or the first time an archive is hashed (when the folder is
    writable), so 536 MB are hashed once, not on every run.
    """
    path = Path(path)
    stat = path.stat()
    record = _read_meta(_digest_record(path))
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns \
            and record.get("md5") and record.get("sha256"):
        return record["md5"], record["sha256"]
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    _record_digests(path, md5.hexdigest(), sha256.hexdigest())
    return md5.hexdigest(), sha256.hexdigest()


def _digest_record(path):
    return Path(path).with_name(Path(path).name + ".digests.json")


def _record_digests(path, md5, sha256):
    stat = Path(path).stat()
    try:
        _digest_record(path).write_text(json.dumps({"md5": md5, "sha256": sha256, "size": stat.st_size,
                                                    "mtime_ns": stat.st_mtime_ns}))
    except OSError:
        pass  # a read-only folder: the archive is hashed again next time


def _host_answers(url, timeout) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` s.

    Runs in a daemon thread because a name lookup ignores socket timeouts.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answered = []

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _members(usage):
    return (MEMBER_TEMPLATE.format(usage=usage, kind="images", dims=3),
            MEMBER_TEMPLATE.format(usage=usage, kind="labels", dims=1))


def _check_archive(path):
    """Raise ValueError unless ``path`` is a zip holding the four balanced members."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a zip archive ({error})") from None
    missing = [m for usage in ("train", "test") for m in _members(usage) if m not in names]
    if missing:
        raise ValueError(f"archive {path} lacks {missing[0]}: expected NIST's gzip.zip layout "
                         "with the four gzip/emnist-balanced-*-ubyte.gz members")


def _read_member(archive: Path, member: str, ndim: int) -> bytes:
    """The decompressed bytes of one ``.gz`` IDX member (``ndim`` dimensions), from a zip or a folder.

    Nothing is extracted to disk, and only the expected member names are
    opened. Inflation streams and stops as soon as the output exceeds what
    the member's IDX header declares (a "gzip bomb" never fills memory).
    """
    where = f"{member} in {archive}"
    try:
        if archive.is_dir():
            candidates = [archive / member, archive / Path(member).name]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"folder {archive} lacks {Path(member).name}: expected the four "
                                        "emnist-balanced-*-ubyte.gz files of NIST's gzip.zip")
            with open(found, "rb") as stream:
                return _inflate_idx(stream, str(found), ndim)
        with zipfile.ZipFile(archive) as zipped:
            if member not in zipped.namelist():
                raise ValueError(f"archive {archive} lacks {member}: expected NIST's gzip.zip layout "
                                 "with the four gzip/emnist-balanced-*-ubyte.gz members")
            with zipped.open(member) as stream:
                return _inflate_idx(stream, where, ndim)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive} is not a readable zip archive ({error}): "
                         "delete it and download NIST's gzip.zip again") from None
    except (EOFError, zlib.error) as error:
        raise ValueError(f"{where} is not a complete gzip file ({_first_line(error)}): "
                         "delete the archive and download NIST's gzip.zip again") from None


def _inflate_idx(stream, where, ndim, piece=1 << 20):
    """Inflate a gzip stream of an IDX file, at most ``piece`` bytes of output at a time, never
    beyond the size its header declares (header + item count x item size)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    header_size = 4 + 4 * ndim
    parts, produced, bound = [], 0, None
    pending = b""
    while not inflater.eof:
        if not pending:
            pending = stream.read(1 << 16)
            if not pending:
                raise ValueError(f"{where} is not a complete gzip file (it ends early): "
                                 "delete the archive and download NIST's gzip.zip again")
        out = inflater.decompress(pending, piece)
        pending = inflater.unconsumed_tail
        parts.append(out)
        produced += len(out)
        if bound is None and produced >= header_size:
            bound = _declared_size(b"".join(parts)[:header_size], where, ndim)
        if bound is not None and produced > bound:
            raise ValueError(f"{where} inflates beyond the {bound:,} bytes its IDX header declares: "
                             "the archive is damaged or hostile; delete it and download NIST's gzip.zip again")
    return b"".join(parts)


def _declared_size(header, where, ndim):
    """Bytes an IDX file with this header may hold; a one-line error for an impossible header."""
    if header[:2] != b"\0\0" or header[2] != 0x08 or header[3] != ndim:
        parse_idx(header, (None,) * ndim, where)  # raises its one-line error naming the wrong magic
    shape = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if shape[0] > MAX_IDX_ITEMS:
        raise ValueError(f"{where} declares {shape[0]:,} items, more than any EMNIST split "
                         f"({MAX_IDX_ITEMS:,}): the archive is damaged or hostile")
    return len(header) + math.prod(shape)


def parse_idx(data: bytes, expected_dims, where="IDX data"):
    """Decode an unsigned-byte IDX file (LeCun's MNIST format) into a uint8 array.

    Header: two zero bytes, type code 0x08 (ubyte), the number of dimensions,
    then each dimension as a big-endian uint32.

    Args:
        data: the file's bytes.
        expected_dims: required shape with ``None`` for the free count, e.g.
            ``(None, 28, 28)``.
        where: the file's name, for error messages.
    """
    ndim = len(expected_dims)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise ValueError(f"{where} has IDX magic {data[:4].hex() or 'missing'}: expected 000008{ndim:02x} "
                         f"(unsigned bytes, {ndim} dimensions); the file is not what its name says")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{where} is truncated inside its IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if any(e is not None and e != s for e, s in zip(expected_dims, shape)):
        raise ValueError(f"{where} holds arrays of shape {shape}: expected {tuple(expected_dims)}".replace(
            "None", "N"))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(f"{where} has {len(data) - header} data bytes: its header announces {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_emnist_capitals(archive, usage):
    """Read one split of EMNIST balanced capitals from NIST's archive.

    Args:
        archive: NIST's ``gzip.zip`` or a folder holding its ``.gz`` files.
        usage: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 (N, 28, 28) upright, int64 (N,) in 0-25.
    """
    archive = Path(archive)
    images_member, labels_member = _members(usage)
    images = parse_idx(_read_member(archive, images_member, 3), (None, IMAGE_SIZE, IMAGE_SIZE),
                       where=f"{images_member} in {archive}")
    labels = parse_idx(_read_member(archive, labels_member, 1), (None,), where=f"{labels_member} in {archive}")
    if len(images) != len(labels):
        raise ValueError(f"{archive}: {usage} split has {len(images)} images but {len(labels)} labels; "
                         "expected equal counts: the archive is damaged, download it again")
    keep = (labels >= FIRST_CAPITAL_LABEL) & (labels < FIRST_CAPITAL_LABEL + len(LETTERS))
    # NIST stores each image transposed (column-major); swap the axes to make letters upright.
    upright = np.ascontiguousarray(images[keep].transpose(0, 2, 1))
    return upright, labels[keep].astype(np.int64) - FIRST_CAPITAL_LABEL


def _load_emnist(archive, train_size, test_size, seed, cache_dir, note):
    archive = Path(archive).resolve()
    stat = archive.stat()
    key = f"emnist|{archive}|{stat.st_size}|{stat.st_mtime_ns}|{train_size}|{test_size}|{seed}"

    def build():
        splits = []
        for usage, size, offset in (("train", train_size, 0), ("test", test_size, 1)):
            images, labels = read_emnist_capitals(archive, usage)
            chosen = balanced_subsample(labels, size, seed + offset, name=f"{usage}_size")
            splits.append((images[chosen], labels[chosen]))
        return splits

    verified, md5 = None, None
    if archive.is_file():
        md5, _ = archive_digests(archive)
        verified = md5 == NIST_MD5
        if not verified:
            warnings.warn(f"{archive} is not NIST's gzip.zip byte for byte (MD5 {md5}, NIST's is {NIST_MD5}); "
                          "reading it since its structure is checked, and results will say 'unverified "
                          "archive'", stacklevel=3)
    source = DataSource("emnist", path=str(archive), seed=seed, note=note, verified=verified, md5=md5)
    return _finish(_cached(cache_dir, key, build), source)


def balanced_subsample(labels, size, seed, name="size"):
    """Indices (sorted) of ``size`` items spread as evenly as possible over the labels.

    Every letter gets ``size // 26`` or one more where it has enough; letters
    with too few give all they have and the rest is spread over the others.
    ``None`` selects everything. Deterministic for ``seed``.
    """
    if size is None:
        return np.arange(len(labels))
    if size > len(labels):
        raise ValueError(f"Expected {name} <= {len(labels)} (the images available). Received: {name}={size}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=len(LETTERS))
    quota = np.zeros_like(counts)
    remaining = size
    order = np.argsort(counts, kind="stable")
    for position, letter in enumerate(order):
        quota[letter] = min(counts[letter], remaining // (len(order) - position))
        remaining -= quota[letter]
    spare = np.flatnonzero(counts > quota)
    quota[rng.permutation(spare)[:remaining]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == letter), quota[letter], replace=False)
              for letter in range(len(LETTERS)) if quota[letter]]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------
# Prepared-array cache
# --------------------------------------------------------------------------

def package_cache_dir() -> Path:
    """The package's own cache folder (fast-path timings, the synthetic glyph bank):
    ``$XDG_CACHE_HOME/denoising_vae`` or ``~/.cache/denoising_vae``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "denoising_vae"


def caching_disabled():
    """Whether ``DENOISING_VAE_NO_CACHE=1`` asks every cache of the package to be left alone."""
    return os.environ.get("DENOISING_VAE_NO_CACHE") == "1"


def _cached(cache_dir: Path, key: str, build):
    """``build()``'s ``[(x_u8, y), (x_u8, y)]``, stored as a compressed .npz under ``cache_dir``.

    A cache that cannot be read completely (zip CRCs are checked on read) or
    holds unexpected arrays is rebuilt, never trusted. With
    :func:`caching_disabled`, nothing is read or written.
    """
    if caching_disabled():
        return build()
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{key}".encode()).hexdigest()[:20]
    path = cache_dir / "prepared" / f"{key.split('|')[0]}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) != key:
                    raise ValueError("key mismatch")
                splits = [(stored[f"x{i}"], stored[f"y{i}"]) for i in range(2)]
            for x, y in splits:
                if x.dtype != np.uint8 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(x) != len(y) \
                        or y.min(initial=0) < 0 or y.max(initial=0) >= len(LETTERS):
                    raise ValueError("unexpected arrays")
            return splits
        except Exception as error:  # any failure to read means: rebuild
            LOGGER.warning("prepared cache %s is unreadable (%s); rebuilding it", path, _first_line(error))
    splits = build()
    try:
        with atomic_files.replacing(path) as partial, open(partial, "wb") as file:
            np.savez_compressed(file, key=np.array(key), x0=splits[0][0], y0=splits[0][1],
                                x1=splits[1][0], y1=splits[1][1])
    except OSError as error:
        LOGGER.warning("could not write the prepared cache %s (%s); continuing without it", path, error)
    return splits


def _finish(splits, source: DataSource) -> LoadedData:
    """uint8 images -> float32 (N, 28, 28, 1) in [0, 1]; log the source once."""
    out = []
    for images, labels in splits:
        x = images.astype(np.float32)[..., None]
        x *= np.float32(1 / 255)
        out.append((x, labels.astype(np.int64)))
    LOGGER.info("data: %s; %d train and %d test images", source.describe(), len(out[0][0]), len(out[1][0]))
    return LoadedData(out[0], out[1], source)


def _load_synthetic(train_size, test_size, seed, cache_dir, note):
    sizes = (train_size or EMNIST_TRAIN_CAPITALS, test_size or EMNIST_TEST_CAPITALS)
    # The generator's code is part of the key: a changed generator draws new letters.
    key = f"synthetic|{sizes[0]}|{sizes[1]}|{seed}|{generator_key()}"

    def build():
        splits = []
        bank_cache = None if caching_disabled() else package_cache_dir()
        for split, size in enumerate(sizes):
            rng = np.random.default_rng([seed, split])
            labels = rng.permutation(np.arange(size) % len(LETTERS))
            splits.append((synthetic_letters(labels, (seed, split), bank_cache=bank_cache), labels))
        return splits

    source = DataSource("synthetic", seed=seed, note=note)
    return _finish(_cached(cache_dir, key, build), source)
