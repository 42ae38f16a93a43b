"""Files of a run folder and of the caches: written whole or not at all, read tolerantly.

Every file the package keeps (run folders, caches, checkpoints) is written
through :func:`replacing`: the data go to a temporary file beside the
target, which then replaces the target in one step (``os.replace`` is
atomic on POSIX and Windows within one file system). The temporary name
holds the process id, so processes writing the same file (a sweep's
workers filling a shared cache) never write into each other's; the ones a
killed writer left are removed by :func:`remove_partial_files`.

:func:`read_json_object` is the one reader of the package's JSON files: a
missing or damaged file gives ``None``, never an exception.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import numpy as np

from . import stopping
from .checks import first_line


@contextlib.contextmanager
def replacing(path, suffix=""):
    """Yield a temporary path to write; on leaving without an error it replaces ``path``.

    Args:
        path: the file to write (str or Path); its folder is created.
        suffix: ending the temporary name must keep (``".keras"`` for Keras,
            which checks the extension; ``".png"`` for matplotlib).

    On an error the temporary file is removed and ``path`` is left as it was;
    an ``OSError`` (a full disk, say) is raised again naming ``path``, not the
    temporary file.
    """
    stopping.check()  # a stop that library code swallowed ends the run before it writes on
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")  # see PARTIAL_NAME
    try:
        yield partial
        os.replace(partial, path)
    except OSError as error:
        raise OSError(error.errno, error.strerror or first_line(error), str(path)) from error
    finally:
        partial.unlink(missing_ok=True)


# The temporary files :func:`replacing` writes: ``.NAME.PID.part`` and an optional suffix.
PARTIAL_NAME = re.compile(r"^\..+\.\d+\.part(\.\w+)?$")


def remove_partial_files(folder):
    """Remove the temporary files that killed writers left anywhere under ``folder``; return their paths.

    A process killed while it wrote (SIGKILL, a power cut) leaves its
    temporary file; the target itself is whole. Call this only while no
    process of the folder's run writes (under its lock, before any work).
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.part*")):
        if PARTIAL_NAME.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as partial:
        partial.write_text(text)


def _numpy_scalars(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path, data, indent=2):
    """Write ``data`` as JSON to ``path`` atomically; numpy scalars are written as Python numbers."""
    write_text(path, json.dumps(data, indent=indent, default=_numpy_scalars))


def read_json_object(path):
    """The JSON object (a dict) in ``path``, or ``None`` when it is absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
