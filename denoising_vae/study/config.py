"""The study's settings: one frozen :class:`StudyConfig`, saved as ``config.json`` in the run folder.

Defaults are the report's (20 epochs, batch 100, a 2-D latent space, noise
std 0.5); a tuple for ``latent_dim``, ``noise_std`` or ``beta`` makes a sweep.
"""
from __future__ import annotations

import dataclasses

from ..core.constants import ARCHITECTURES, DEFAULT_BASELINES

# Test noise levels of the robustness curve; the study's own level is added when it is not one of them.
ROBUSTNESS_STDS = (0.0, 0.25, 0.5, 0.75, 1.0)

QUICK = {"train_size": 2600, "test_size": 520, "epochs": 2}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Every setting that shapes the results; saved as config.json in the run folder."""

    data: str = "auto"              # auto, emnist, synthetic or a path to NIST's gzip.zip
    models: tuple = ARCHITECTURES   # which of arch1, arch2, arch3, ae to train
    epochs: int = 20                # epochs per model
    batch_size: int = 100           # images per step, as in the report
    latent_dim: int | tuple = 2     # size of the latent space, as in the report (a tuple: swept)
    noise_std: float | tuple = 0.5  # std of the Gaussian noise added to the inputs (a tuple: swept)
    beta: float | tuple = 1.0       # weight of the KL term (a tuple: swept)
    learning_rate: float = 1e-3     # Adam's step size
    train_size: int | None = None   # None: all 62,400 training images
    test_size: int | None = None    # None: all 10,400 test images
    seed: int = 0                   # seeds data subsets, noise, initial weights
    precision: str = "auto"         # auto, float32 or mixed_bfloat16 (training only)
    quick: bool = False
    seeds: int = 1                  # replicates: --seed, --seed + 1, ...
    baselines: tuple = DEFAULT_BASELINES  # classical denoisers measured beside the models

    def noise_levels(self):
        """The robustness curve's noise levels and every noise std the study trains with, sorted."""
        return sorted({float(std) for std in ROBUSTNESS_STDS} | {float(std) for std in self.values("noise_std")})

    def values(self, setting):
        """The list of values of ``latent_dim``, ``noise_std`` or ``beta``."""
        value = getattr(self, setting)
        return list(value) if isinstance(value, tuple) else [value]

    @property
    def is_sweep(self):
        """Several seeds or several values of a setting."""
        return self.seeds > 1 or any(len(self.values(s)) > 1 for s in ("latent_dim", "noise_std", "beta"))
