"""The report's ``assignment_5.py``: the whole study from the command line.

    python assignment_5.py                 # the default study
    python assignment_5.py --quick         # everything on a small subset
    python assignment_5.py --help          # every flag with its default

Everything goes under ``--out``. Each model's results are written as soon as
it finishes; running the same command again skips finished models and
resumes an interrupted one from its last finished epoch. The same command
line is ``denoising-vae`` and ``python -m denoising_vae`` once the package
is installed; the code lives in ``denoising_vae.study``, which never imports
this file.
"""
import sys

from denoising_vae.study.cli import main
from denoising_vae.study.config import StudyConfig
from denoising_vae.study.study import run_study
from denoising_vae.study.sweep import run_sweep

__all__ = ["StudyConfig", "main", "run_study", "run_sweep"]

if __name__ == "__main__":
    sys.exit(main())
