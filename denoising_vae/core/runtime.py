"""Starting TensorFlow: its thread options set first, its C++ start-up lines kept off the user's terminal.

TensorFlow 2.21 writes absl, oneDNN and CUDA notices straight to file
descriptor 2 while it loads and looks for devices ("WARNING: All log messages
before absl::InitializeLog() ...", "oneDNN custom operations are on",
"Could not find cuda drivers", "failed call to cuInit"), whatever
``TF_CPP_MIN_LOG_LEVEL`` says. :func:`start_tensorflow` imports TensorFlow and
lists its devices with descriptor 2 pointed at a temporary file, then writes
back every line that is not one of those notices, so real errors still show.
``DENOISING_VAE_TF_LOGS=1`` leaves TensorFlow's output untouched.

Nothing happens at import. :func:`start_tensorflow` is the one place that
changes the process for TensorFlow: before TensorFlow loads it sets, unless
already set, ``TF_ENABLE_ONEDNN_OPTS=1``, ``TF_NUM_INTRAOP_THREADS=1`` and
``TF_NUM_INTEROP_THREADS`` = CPU cores (:func:`thread_options`), which
TensorFlow reads once as it starts. Single-threaded ops with one inter-op
thread per core let a batch's independent shards run side by side
(``denoising_vae.models.fast_path``); oneDNN's kernels speed up the
convolutional models where TensorFlow leaves them off. The command line,
its workers and the tests call it first; a notebook should too (a
TensorFlow already started keeps its own threads, and results stay the same).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

# TensorFlow's own start-up notices (absl prefix "I0000 00:00:... file.cc:N]").
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\s+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas"
    r"|cpu_feature_guard|gpu_device)\.cc:\d+\].*"
    r"|To enable the following instructions: .*|.*rebuild TensorFlow with the appropriate compiler flags.*)$")


def is_startup_noise(line):
    """Whether ``line`` is one of TensorFlow's start-up notices."""
    return bool(_NOISE.match(line.rstrip("\n")))


def thread_options(cores=None):
    """The environment TensorFlow should start with: oneDNN on, one intra-op thread, one inter-op
    thread per core (``cores``, default all of this machine's)."""
    return {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": str(cores or os.cpu_count() or 1)}


def start_tensorflow():
    """Import TensorFlow (and find its devices) with its start-up notices filtered from stderr.

    Returns the ``tensorflow`` module. A second call costs nothing.
    """
    if "tensorflow" not in sys.modules:
        for name, value in thread_options().items():
            os.environ.setdefault(name, value)
    if "tensorflow" in sys.modules or os.environ.get("DENOISING_VAE_TF_LOGS") == "1":
        import tensorflow as tf

        if os.environ.get("DENOISING_VAE_TF_LOGS") != "1":
            tf.get_logger().setLevel("ERROR")  # retracing notices: each model builds its own steps
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe prints here
            tf.get_logger().setLevel("ERROR")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_startup_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tf
