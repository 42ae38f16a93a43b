"""A slow disk for one file, for a test to stop a run while it writes that file.

Put this folder first on ``PYTHONPATH`` and set ``SLOW_WRITE=NAME`` and
``SLOW_WRITE_MARKER=PATH``: the first time the run opens ``NAME``'s
temporary file (``.NAME.<pid>.part...``, see ``denoising_vae.core.files``)
for writing, it creates ``PATH`` and then stalls for up to a minute inside the
write, as on a stalled network disk. Every other file is written as usual.
"""
import builtins
import io
import os
import time

NAME, MARKER = os.environ.get("SLOW_WRITE"), os.environ.get("SLOW_WRITE_MARKER")

if NAME and MARKER:
    real_open = io.open

    def stalling_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        base = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if "w" in mode and base.startswith(f".{NAME}.") and ".part" in base and not os.path.exists(MARKER):
            with real_open(MARKER, "w"):
                pass
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)
        return handle

    builtins.open = io.open = stalling_open
