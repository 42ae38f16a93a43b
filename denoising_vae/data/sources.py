"""The study's letters from one entry point, :func:`input_read` (the report's ``Input_read``).

* ``input_read`` returns ``(x_train, y_train), (x_test, y_test)`` like
  ``keras.datasets``: ``x`` float32 of shape (N, 28, 28, 1) in [0, 1] with
  letters upright, ``y`` int64 labels 0-25 for ``LETTERS``. The returned pair
  also carries ``.source``, a :class:`DataSource` saying where it came from.
* Real data is EMNIST *balanced* (Cohen et al. 2017) read straight from NIST's
  ``gzip.zip`` (``idx.py``, ``download.py``); only labels 10-35 (capitals)
  are kept, as label - 10.
* Offline, a synthetic stand-in comes from ``synthetic.py``; this module
  balances, caches and labels it like the real data.

This module never imports TensorFlow, so a notebook imports it in a moment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..core import files
from ..core.caches import caching_disabled, default_cache_dir, package_cache_dir
from ..core.checks import check_non_negative_int, first_line
from ..core.constants import EMNIST_TEST_CAPITALS, EMNIST_TRAIN_CAPITALS, IMAGE_SIZE, LETTERS
from . import download
from .download import NIST_URL
from .idx import read_emnist_capitals
from .synthetic import generator_key, synthetic_letters

LOGGER = logging.getLogger(__name__)

SOURCE_WORDS = ("auto", "emnist", "synthetic")

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
    seed = check_non_negative_int("seed", seed)
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
        archive = archive or download.download_emnist(cache_dir / "emnist.zip")
        return _load_emnist(archive, train_size, test_size, seed, cache_dir, note="")
    # auto
    if archive is None:
        try:
            archive = download.download_emnist(cache_dir / "emnist.zip", probe_timeout=AUTO_PROBE_TIMEOUT)
        except OSError as error:
            note = "real EMNIST unavailable: no archive on disk and no download"
            warnings.warn(f"Using SYNTHETIC letters, not EMNIST: {note} ({first_line(error)}); "
                          f"{GET_REAL_DATA_HINT}", stacklevel=2)
            return _load_synthetic(train_size, test_size, seed, cache_dir, note=note)
    return _load_emnist(archive, train_size, test_size, seed, cache_dir, note="")


def _check_size(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Expected {name} to be a positive integer or None. Received: {name}={value!r}")
    return int(value)


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
        md5, _ = download.archive_digests(archive)
        verified = md5 == download.NIST_MD5
        if not verified:
            warnings.warn(f"{archive} is not NIST's gzip.zip byte for byte (MD5 {md5}, NIST's is {download.NIST_MD5}); "
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
            LOGGER.warning("prepared cache %s is unreadable (%s); rebuilding it", path, first_line(error))
    splits = build()
    try:
        with files.replacing(path) as partial, open(partial, "wb") as file:
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
