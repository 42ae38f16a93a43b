"""The data layer: EMNIST capitals from NIST's archive (downloaded and verified), the offline
synthetic letters, and Gaussian noise.

numpy, scipy and matplotlib's fonts only: importing it never starts TensorFlow.

    >>> from denoising_vae.data import input_read, noise_addition
    >>> (x_train, y_train), (x_test, y_test) = input_read("synthetic", train_size=2600, test_size=520)
    >>> x_noisy = noise_addition(x_test, noise_std=0.5, seed=0)
"""
from .download import NIST_MD5, NIST_URL, archive_digests, download_emnist, download_urls
from .idx import parse_idx, read_emnist_capitals
from .noise import noise_addition, noisy_test_copy
from .sources import DataSource, LoadedData, balanced_subsample, input_read

__all__ = ["NIST_MD5", "NIST_URL", "DataSource", "LoadedData", "archive_digests", "balanced_subsample",
           "download_emnist", "download_urls", "input_read", "noise_addition", "noisy_test_copy", "parse_idx",
           "read_emnist_capitals"]
