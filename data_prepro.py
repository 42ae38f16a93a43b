"""The report's ``data_prepro.py``: its data functions, served by the package ``denoising_vae.data``.

This face keeps the report's file and names for its readers; the code lives
in the package, which never imports this file.

* ``Input_read`` (the report's name) is :func:`input_read`: EMNIST balanced
  capitals, ``(x_train, y_train), (x_test, y_test)``, ``x`` float32
  (N, 28, 28, 1) in [0, 1], ``y`` int64 0-25; offline, synthetic letters.
* ``Noise_addition`` is :func:`noise_addition`: ``clip(x + N(0, std^2), 0, 1)``.
"""
from denoising_vae.core.checks import as_model_input, check_images, check_noise_std, check_pair, check_positive_int
from denoising_vae.core.constants import EMNIST_TEST_CAPITALS, EMNIST_TRAIN_CAPITALS, IMAGE_SIZE, LETTERS
from denoising_vae.data import (NIST_MD5, NIST_URL, DataSource, LoadedData, archive_digests, balanced_subsample,
                                download_emnist, input_read, noise_addition, noisy_test_copy, parse_idx,
                                read_emnist_capitals)

Input_read = input_read
Noise_addition = noise_addition

__all__ = ["EMNIST_TEST_CAPITALS", "EMNIST_TRAIN_CAPITALS", "IMAGE_SIZE", "Input_read", "LETTERS", "NIST_MD5",
           "NIST_URL", "DataSource", "LoadedData", "Noise_addition", "archive_digests", "as_model_input",
           "balanced_subsample", "check_images", "check_noise_std", "check_pair", "check_positive_int",
           "download_emnist", "input_read", "noise_addition", "noisy_test_copy", "parse_idx", "read_emnist_capitals"]
