"""A stop that a signal asked for, raised again at safe points so that no library code can swallow it.

The command line's handler for Ctrl-C and SIGTERM raises the stop's
exception wherever the main thread is. Code in C++ that calls back into
Python (TensorFlow tracing a function) can print that exception and go on.
So the handler also calls :func:`request`, and :func:`check` raises the stop
again at the package's safe points: before each file it writes, each progress
line and each batch it evaluates. Only the main thread raises, where the
handler would have; worker processes never request a stop (they end at once).
"""
from __future__ import annotations

import threading

_raise_stop = None


def request(raise_stop):
    """Until :func:`clear`, :func:`check` calls ``raise_stop`` (a function raising the stop's exception)."""
    global _raise_stop
    _raise_stop = raise_stop


def clear():
    """Forget the requested stop (the run that asked for it has ended)."""
    request(None)


def check():
    """In the main thread, raise the requested stop, if any; otherwise do nothing."""
    if _raise_stop is not None and threading.current_thread() is threading.main_thread():
        _raise_stop()
