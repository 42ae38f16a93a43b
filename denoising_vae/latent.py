"""What a latent space knows: how much letter identity its codes hold, and how many dimensions are used.

* :func:`linear_probe_accuracy`: a multinomial logistic regression
  (scikit-learn) from the codes of training letters to their letters, scored
  on test letters.
* :func:`knn_accuracy`: the k-nearest-neighbour accuracy of the same task.
* :func:`active_units`: the latent dimensions whose posterior mean varies
  over the data by more than 0.01 (Burda et al. 2016, section 5.2).
* :func:`latent_measures`: all three for one model's codes.

Codes are numpy arrays (N, D) (``evaluation.encode_mean``); nothing here
needs TensorFlow, trains a model or writes files.
"""
from __future__ import annotations

import numpy as np

from .core.checks import check_positive_int
from .core.constants import LETTERS

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): A_u = Cov_x(E_{u ~ q(u|x)}[u]) > 0.01
PROBE_LETTERS = 10_000        # training codes the probes learn from (a seeded random subset when more)
NEIGHBOURS = 15


def _codes(name, z, labels_name=None, labels=None):
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < 2 or z.shape[1] < 1 or not np.all(np.isfinite(z)):
        raise ValueError(f"Expected {name} to be a finite array of shape (N, D) with N >= 2. "
                         f"Received: {name}.shape={z.shape}")
    if labels is None:
        return z
    labels = np.asarray(labels)
    if labels.shape != (len(z),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() >= len(LETTERS):
        raise ValueError(f"Expected {labels_name} to be {len(z)} letter indices in 0-{len(LETTERS) - 1}. "
                         f"Received: {labels_name} of shape {labels.shape} and dtype {labels.dtype}")
    return z, labels


def active_units(z, threshold=ACTIVE_UNIT_THRESHOLD):
    """``(count, variances)``: the dimensions of the posterior means ``z`` (N, D) whose variance
    over the N letters exceeds ``threshold``, and every dimension's variance (D,)."""
    variances = _codes("z", z).var(axis=0)
    return int(np.count_nonzero(variances > threshold)), variances


def _probe_subset(z, labels, seed, limit=PROBE_LETTERS):
    if len(z) <= limit:
        return z, labels
    chosen = np.sort(np.random.default_rng(seed).choice(len(z), limit, replace=False))
    return z[chosen], labels[chosen]


def linear_probe_accuracy(z_train, y_train, z_test, y_test, seed=0):
    """Accuracy on ``(z_test, y_test)`` of a logistic regression fitted on ``(z_train, y_train)``.

    The codes are standardised with the training codes' mean and deviation;
    the regression is scikit-learn's multinomial ``LogisticRegression``
    (L2, C = 1). At most :data:`PROBE_LETTERS` training codes (seeded).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z_train, y_train = _codes("z_train", z_train, "y_train", y_train)
    z_test, y_test = _codes("z_test", z_test, "y_test", y_test)
    _same_width(z_train, z_test)
    z_train, y_train = _probe_subset(z_train, y_train, seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(z_train, y_train)
    return float(probe.score(z_test, y_test))


def knn_accuracy(z_train, y_train, z_test, y_test, neighbours=NEIGHBOURS, seed=0):
    """Accuracy on the test codes of a ``neighbours``-nearest-neighbour vote (Euclidean) among the
    training codes (at most :data:`PROBE_LETTERS`, seeded)."""
    from sklearn.neighbors import KNeighborsClassifier

    z_train, y_train = _codes("z_train", z_train, "y_train", y_train)
    z_test, y_test = _codes("z_test", z_test, "y_test", y_test)
    _same_width(z_train, z_test)
    neighbours = check_positive_int("neighbours", neighbours)
    z_train, y_train = _probe_subset(z_train, y_train, seed)
    if neighbours > len(z_train):
        raise ValueError(f"Expected neighbours to be at most the {len(z_train)} training codes. "
                         f"Received: neighbours={neighbours}")
    return float(KNeighborsClassifier(n_neighbors=neighbours).fit(z_train, y_train).score(z_test, y_test))


def _same_width(z_train, z_test):
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"Expected z_train and z_test with the same number of dimensions. "
                         f"Received: {z_train.shape[1]} and {z_test.shape[1]}")


def latent_measures(z_train, y_train, z_test, y_test, *, variational=True, seed=0, neighbours=NEIGHBOURS):
    """Linear-probe and k-NN accuracy of the 26 letters, and the active units, of one model's codes.

    Args:
        z_train, y_train: codes (N, D) of training letters and their letters (N,) 0-25.
        z_test, y_test: the same of test letters.
        variational: ``False`` for the plain autoencoder, whose codes have no
            prior fixing their scale: its active units are ``None``.
        seed: seeds the probes' training subset.
        neighbours: k of the k-NN vote, at most the number of training codes.

    Returns:
        ``{"probe_accuracy", "knn_accuracy", "active_units", "latent_variances"}``;
        the variances are over the test codes, per dimension. With training
        codes of fewer than two letters there is nothing to learn: both
        accuracies are ``None``.
    """
    count, variances = active_units(z_test)
    learnable = len(np.unique(np.asarray(y_train))) >= 2
    return {"probe_accuracy": linear_probe_accuracy(z_train, y_train, z_test, y_test, seed) if learnable else None,
            "knn_accuracy": knn_accuracy(z_train, y_train, z_test, y_test, neighbours, seed) if learnable else None,
            "active_units": count if variational else None,
            "latent_variances": [round(float(v), 6) for v in variances]}
