"""The models' losses and per-image metrics, in float32 whatever the layers compute in.

Reconstruction is the summed binary cross-entropy against the clean image,
its probabilities clipped to [1e-7, 1 - 1e-7] as Keras does; KL is the
closed form for a diagonal Gaussian against N(0, I) (Kingma & Welling 2014).
Each takes a batch and returns one value per image, (B,).
"""
from __future__ import annotations

import tensorflow as tf
from keras import ops

from ..core.constants import IMAGE_SIZE

PIXELS = IMAGE_SIZE * IMAGE_SIZE

PROBABILITY_CLIP = 1e-7  # probabilities are clipped to [1e-7, 1 - 1e-7] before the logarithms, as Keras does


def reconstruction_loss(clean, predicted):
    """Binary cross-entropy summed over the 784 pixels: (B, 28, 28, 1) x2 -> (B,) nats.

    Probabilities are clipped to [1e-7, 1 - 1e-7] as Keras does.
    """
    predicted = ops.cast(ops.reshape(predicted, (-1, PIXELS)), "float32")
    clean = ops.cast(ops.reshape(clean, (-1, PIXELS)), "float32")
    return -bernoulli_log_likelihood(clean, predicted)


def bernoulli_log_likelihood(clean, predicted):
    """sum over the last axis of x log p + (1 - x) log(1 - p), p = ``predicted`` clipped to
    [1e-7, 1 - 1e-7]: float32 tensors (..., P) that broadcast -> (...) nats. The negative
    of :func:`reconstruction_loss`, for shapes like the likelihood estimate's (K, B, P)."""
    predicted = ops.clip(predicted, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return ops.sum(clean * ops.log(predicted) + (1 - clean) * ops.log(1 - predicted), axis=-1)


def reconstruction_loss_from_logits(clean, logits):
    """:func:`reconstruction_loss` of ``sigmoid(logits)``, and those probabilities:
    (B, 28, 28, 1) x2 -> ((B,) nats, (B, 784) float32 in (0, 1)).

    The same value as ``reconstruction_loss(clean, sigmoid(logits))`` with the
    sigmoid taken in float32 (bit for bit where the logits are float32), but a
    gradient of two operations instead of the dozen automatic differentiation
    makes through the sigmoid, clip and both logarithms: d loss / d logit =
    p - x where the clip leaves p alone, else 0 (Bishop 2006, eq. 4.91 for the
    unclipped case).
    """
    logits = ops.cast(ops.reshape(logits, (-1, PIXELS)), "float32")
    clean = ops.cast(ops.reshape(clean, (-1, PIXELS)), "float32")
    probabilities = ops.sigmoid(logits)
    return _clipped_cross_entropy(clean, logits, tf.stop_gradient(probabilities)), probabilities


@tf.custom_gradient
def _clipped_cross_entropy(clean, logits, probabilities):
    """:func:`reconstruction_loss` of ``probabilities`` = sigmoid(``logits``), (B, 784) each,
    with its gradient with respect to ``logits`` written out (none to the others)."""
    def gradient(upstream):
        # The clip passes the gradient where the value is inside [low, high] (clip_by_value's gradient).
        inside = (probabilities >= PROBABILITY_CLIP) & (probabilities <= 1 - PROBABILITY_CLIP)
        return None, tf.where(inside, probabilities - clean, 0.0) * upstream[:, None], None

    return reconstruction_loss(clean, probabilities), gradient


def kl_divergence(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per image, (B, D) x2 -> (B,) nats.

    -1/2 * sum(1 + log var - mean^2 - var) (Kingma & Welling 2014, appendix B).
    """
    z_mean, z_log_var = ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")
    return -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)


def pixel_accuracy(clean, predicted):
    """Per image, the fraction of pixels on the same side of 0.5 in both: (B,)."""
    agree = ops.equal(ops.reshape(clean, (-1, PIXELS)) > 0.5, ops.reshape(predicted, (-1, PIXELS)) > 0.5)
    return ops.mean(ops.cast(agree, "float32"), axis=1)
