"""Writing files atomically: a run killed while writing leaves the old file or none, never half of one.

Every file the package keeps (run folders, caches, checkpoints) is written
through :func:`replacing`: the data go to a temporary file beside the
target, which then replaces the target in one step (``os.replace`` is
atomic on POSIX and Windows within one file system). The temporary name
holds the process id, so processes writing the same file (a sweep's
workers filling a shared cache) never write into each other's.

Standard library only; imported by every module that writes files.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path, suffix=""):
    """Yield a temporary path to write; on leaving without an error it replaces ``path``.

    Args:
        path: the file to write (str or Path); its folder is created.
        suffix: ending the temporary name must keep (``".keras"`` for Keras,
            which checks the extension).

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as partial:
        partial.write_text(text)


def write_json(path, data, indent=2, default=None):
    """Write ``data`` as JSON to ``path`` atomically (``default`` as in ``json.dumps``)."""
    write_text(path, json.dumps(data, indent=indent, default=default))
