"""What a run needs from the machine, checked before anything large is allocated: memory and caches.

:func:`check_memory` refuses sizes whose data cannot fit (one line naming
the flag and the largest size that fits); :func:`usable_caches` runs a block
without caches, after one warning, when a cache folder cannot be written.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..core.caches import caches_disabled, caching_disabled, unwritable_cache_folder
from ..core.checks import UsageError
from ..core.constants import EMNIST_TEST_CAPITALS, EMNIST_TRAIN_CAPITALS
from .messages import warn

# Bytes per image held at once (float32 28x28 = 3,136 B): training images as
# float32, their TensorFlow-resident copy and the uint8 cache; test images as
# float32, the noisy test copy, the fixed noisy validation copy, its resident
# pair and the uint8 cache; BASE_BYTES is the rest, set against /usr/bin/time's
# peak of the default study.
TRAIN_BYTES_PER_IMAGE = 784 * (4 + 4 + 1)

TEST_BYTES_PER_IMAGE = 784 * (4 + 4 + 4 + 8 + 1)

BASE_BYTES = 1.5 * 2 ** 30  # TensorFlow, the models, evaluation buffers, figures


def processes_holding_data(workers):
    """Processes that each hold a copy of the data: this one, plus its workers when there are several."""
    return workers + 1 if workers > 1 else 1


def memory_needed(train_size, test_size, processes=1):
    """Estimated peak bytes of a run: the data (each process holds its own) plus a fixed base."""
    train = train_size or EMNIST_TRAIN_CAPITALS
    test = test_size or EMNIST_TEST_CAPITALS
    return processes * (BASE_BYTES + train * TRAIN_BYTES_PER_IMAGE + test * TEST_BYTES_PER_IMAGE)


def available_memory():
    """Bytes the system can give without swapping (MemAvailable), or ``None`` where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(config, processes=1):
    """Refuse, before anything large is allocated, sizes whose data cannot fit in this machine's memory."""
    available = available_memory()
    need = memory_needed(config.train_size, config.test_size, processes)
    if available is None or need <= available:
        return
    test = config.test_size or EMNIST_TEST_CAPITALS
    train = config.train_size or EMNIST_TRAIN_CAPITALS
    flag, size, per_image = (("--train-size", train, TRAIN_BYTES_PER_IMAGE)
                             if train * TRAIN_BYTES_PER_IMAGE >= test * TEST_BYTES_PER_IMAGE
                             else ("--test-size", test, TEST_BYTES_PER_IMAGE))
    room = available / processes - (need / processes - size * per_image)
    largest = max(0, int(room // per_image))
    raise UsageError(f"{flag} {size:,} needs about {need / 2 ** 30:.1f} GiB of memory"
                     f"{f' over {processes} workers' if processes > 1 else ''}, and this machine has "
                     f"{available / 2 ** 30:.1f} GiB available; the largest {flag} that fits is about {largest:,}")


@contextlib.contextmanager
def usable_caches():
    """Run the block with the package's caches, or without them (one warning) when a cache folder
    cannot be written; the environment is as before afterwards.

    The folders are ``~/.cache/emnist`` (data) and ``$XDG_CACHE_HOME/denoising_vae``
    (timings); ``DENOISING_VAE_NO_CACHE=1``, inherited by sweep workers, turns
    every cache off.
    """
    unwritable = None if caching_disabled() else unwritable_cache_folder()
    if unwritable is None:
        yield
        return
    folder, error = unwritable
    warn(f"no writable cache folder ({folder}: {error.strerror or error}); running without caches, "
         "so data are prepared and timings measured again on every run")
    with caches_disabled():
        yield

