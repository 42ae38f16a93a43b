"""Constants of the study that every layer shares: the letters, the image size, the models' names.

EMNIST *balanced* (Cohen et al. 2017) labels its capitals 10-35; the
package keeps them as 0-25, an index into :data:`LETTERS`.
"""
ARCHITECTURES = ("arch1", "arch2", "arch3", "ae")

# The classical denoisers measured beside the models (``denoising_vae.baselines``); BM3D only when
# asked, its cost per image being hundreds of times the others'.
BASELINES = ("gaussian", "median", "nl_means", "tv", "bm3d")
DEFAULT_BASELINES = ("gaussian", "median", "nl_means", "tv")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

IMAGE_SIZE = 28

# EMNIST balanced labels: 0-9 digits, 10-35 capitals A-Z, 36-46 some lower case.
FIRST_CAPITAL_LABEL = 10

# Full EMNIST balanced capitals: 2,400 train and 400 test images per letter.
EMNIST_TRAIN_CAPITALS = 62_400

EMNIST_TEST_CAPITALS = 10_400
