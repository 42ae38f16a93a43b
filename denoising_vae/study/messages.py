"""The terminal's lines: progress with the elapsed time, one-line warnings.

Every line the package prints to the user goes through here, so they read
alike: ``[   12.3 s] arch1: training 20 epochs`` on stdout,
``assignment_5.py: warning: ...`` on stderr.
"""
from __future__ import annotations

import sys
import time

from ..core import stopping

PROGRAM = "assignment_5.py"


def warn(message):
    """One warning line on stderr."""
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """One status line per phase with the elapsed time since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def __call__(self, message):
        stopping.check()  # a stop that library code swallowed ends the run here, not after the next phase
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)
