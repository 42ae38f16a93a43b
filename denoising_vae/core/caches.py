"""Where the package keeps its caches, and whether it may.

Two folders: ``~/.cache/emnist`` (NIST's archive and the prepared arrays,
the ``emnist`` package's folder) and ``$XDG_CACHE_HOME/denoising_vae``
(fast-path timings, the synthetic glyph bank). ``DENOISING_VAE_NO_CACHE=1``
leaves both alone; :func:`caches_disabled` is how a caller turns them off
for a block of code without changing the environment for good.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

NO_CACHE_VARIABLE = "DENOISING_VAE_NO_CACHE"


def default_cache_dir() -> Path:
    """``~/.cache/emnist``: the ``emnist`` package's cache folder."""
    return Path(os.path.expanduser("~/.cache/emnist"))


def package_cache_dir() -> Path:
    """The package's own cache folder (fast-path timings, the synthetic glyph bank):
    ``$XDG_CACHE_HOME/denoising_vae`` or ``~/.cache/denoising_vae``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "denoising_vae"


def caching_disabled():
    """Whether ``DENOISING_VAE_NO_CACHE=1`` asks every cache of the package to be left alone."""
    return os.environ.get(NO_CACHE_VARIABLE) == "1"


def unwritable_cache_folder():
    """``(folder, error)`` for the first cache folder that cannot be written, or ``None`` when both can."""
    for folder in (default_cache_dir(), package_cache_dir()):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            return folder, error
    return None


@contextlib.contextmanager
def caches_disabled():
    """Within the block, every cache is off (``DENOISING_VAE_NO_CACHE=1``); the variable is restored after.

    The variable, not a flag, because a sweep's worker processes inherit it.
    """
    previous = os.environ.get(NO_CACHE_VARIABLE)
    os.environ[NO_CACHE_VARIABLE] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(NO_CACHE_VARIABLE, None)
        else:
            os.environ[NO_CACHE_VARIABLE] = previous
