"""The training layer: resumable training into a run folder, the batches and their fresh noise,
and timing the real training step to choose each model's fast path.

``loop.train_model`` is the entry point; ``step_timing.choose_fast_path`` decides how it computes.
"""
from .loop import NonFiniteLossError, TrainingResult, read_history, train_model
from .step_timing import choose_fast_path

__all__ = ["NonFiniteLossError", "TrainingResult", "choose_fast_path", "read_history", "train_model"]
