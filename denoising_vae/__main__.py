"""``python -m denoising_vae``: the study's command line, as ``python assignment_5.py``."""
import sys

from .study.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m denoising_vae"))
