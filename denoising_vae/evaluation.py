"""Evaluation: test metrics of a trained model, and its encoder and decoder applied to arrays.

* :func:`evaluate`: test loss, reconstruction, KL and pixel accuracy as in
  training; PSNR and SSIM of the noisy input and of the reconstruction; an
  importance-weighted estimate of log p(x) (Burda et al. 2016), all in
  batches of bounded memory.
* :func:`encode_mean`, :func:`reconstruct`, :func:`decode`: numpy in, numpy out.
* :func:`psnr` of numpy arrays, and :func:`image_quality`: PSNR and SSIM per
  image of any denoiser's output, as :func:`evaluate` computes them.
* :func:`log_likelihood_from_logits`: the Bernoulli log-likelihood of a
  decoder's logits, compiled with XLA (the likelihood estimate's inner loop).

Metrics are computed in float32 whatever precision the model trained in;
only the likelihood estimate's decodes run in the model's own precision
(``evaluate``'s ``iw_precision``).
Nothing here trains, plots or writes files.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import tensorflow as tf
from keras import ops

from .core import stopping
from .core.checks import as_model_input, check_images, check_pair, check_positive_int
from .models import fast_path
from .models.losses import (PIXELS, PROBABILITY_CLIP, bernoulli_log_likelihood, kl_divergence, pixel_accuracy,
                            reconstruction_loss)
from .models.vae import as_float32, precision_of, with_precision

# One compiled function per model and part, made on first use: Keras' predict sets
# itself up on every call, and the figures call it a dozen times per model.
_COMPILED = weakref.WeakKeyDictionary()


def _apply(model, part, inputs, batch_size):
    """``model.<part>`` (``"encoder"`` or ``"decoder"``) applied in batches.

    Returns float32 numpy arrays: one, or a list of the encoder's three.
    """
    functions = _COMPILED.setdefault(model, {})
    if part not in functions:
        layer = getattr(model, part)
        signature = [tf.TensorSpec((None,) + tuple(inputs.shape[1:]), tf.float32)]
        functions[part] = tf.function(lambda batch: layer(batch, training=False), input_signature=signature)
    outputs = []
    for start in range(0, len(inputs), batch_size):
        outputs.append(functions[part](tf.constant(inputs[start:start + batch_size])))
        stopping.check()  # a stop the tracing swallowed
    if isinstance(outputs[0], (list, tuple)):
        return [np.concatenate([np.asarray(o[i], np.float32) for o in outputs]) for i in range(len(outputs[0]))]
    return np.concatenate([np.asarray(o, np.float32) for o in outputs])


def encode_mean(model, x, batch_size=1000):
    """Encoder means (VAE) or codes (AE) of images x: float32 (N, latent_dim)."""
    x = as_model_input(check_images(x, "x"))
    batch_size = check_positive_int("batch_size", batch_size)
    encoded = _apply(model, "encoder", x, batch_size)
    return encoded[0] if model.variational else encoded


def reconstruct(model, x, batch_size=1000):
    """Deterministic reconstructions decoder(encoder mean): float32 (N, 28, 28, 1) in (0, 1)."""
    z = encode_mean(model, x, batch_size)
    return decode(model, z, batch_size)


def decode(model, z, batch_size=1000):
    """Decode latent points z (N, latent_dim) into float32 images (N, 28, 28, 1)."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != model.latent_dim or len(z) == 0:
        raise ValueError(f"Expected z of shape (N, {model.latent_dim}) with N >= 1. Received: z.shape={z.shape}")
    return _apply(model, "decoder", z, check_positive_int("batch_size", batch_size))


def evaluate(model, x_noisy, x_clean, *, batch_size=500, seed=0, iw_samples=None, iw_precision=None):
    """Test metrics of a model on (noisy, clean) pairs, computed in batches.

    ``loss``, ``reconstruction`` and ``kl`` (nats per image) and ``accuracy``
    are computed exactly as in training, with z sampled from q(z | noisy)
    (seeded, so deterministic). PSNR and SSIM (against the clean image)
    compare the noisy input and the deterministic reconstruction
    decoder(encoder mean) that the figures show.

    Computed in float32 even for a model trained in mixed precision, but for
    the K decodes of the likelihood estimate (``iw_precision``).

    For VAEs, ``log_likelihood`` estimates log p(x_clean) in nats with K
    importance samples from q(z | x_noisy) (Burda et al. 2016, eq. 8):
    log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), with p(x|z) the Bernoulli
    likelihood of the grey levels (the negative reconstruction loss) and
    p(z) = N(0, I). For ``ae``, ``kl`` and ``log_likelihood`` are absent.

    Args:
        x_noisy, x_clean: (N, 28, 28[, 1]) in [0, 1], same N.
        batch_size: images per batch (bounds memory).
        seed: seed of the sampled z.
        iw_samples: K; default :func:`default_iw_samples` for the model.
        iw_precision: the precision of the likelihood estimate's decodes:
            ``"float32"`` or ``"mixed_bfloat16"``; ``None``: the one the
            model computes in (``--precision auto`` chooses it by measuring).
            The decoder stops at its logits and the likelihood is taken
            from them in float32 (:func:`log_likelihood_from_logits`).
            bfloat16 decodes move the estimate by about its spread over
            sampling seeds and make the evaluation faster on a CPU with AMX
            (``benchmarks/results/intel-xeon-207/README.md``).

    Returns:
        dict of floats; ``iw_samples`` says which K was used.
    """
    x_noisy, x_clean = check_pair(x_noisy, x_clean)
    batch_size = check_positive_int("batch_size", batch_size)
    if iw_precision not in IW_PRECISIONS:
        raise ValueError(f"Expected iw_precision to be one of {IW_PRECISIONS}. Received: iw_precision={iw_precision!r}")
    logits_model = _likelihood_logits_model(model, iw_precision)
    model = as_float32(model)  # metrics in full precision whatever the training precision
    variational = model.variational
    if iw_samples is None:
        iw_samples = default_iw_samples(model)
    if variational:
        iw_samples = check_positive_int("iw_samples", iw_samples)
    rng = np.random.default_rng(seed)
    step = _evaluation_step(model)
    if variational:
        iw_step = _iw_step(model, logits_model)
    sums = {"log_likelihood": 0.0} if variational else {}
    for start in range(0, len(x_clean), batch_size):
        noisy = x_noisy[start:start + batch_size]
        clean = x_clean[start:start + batch_size]
        epsilon = rng.standard_normal((iw_samples + 1 if variational else 1, len(clean), model.latent_dim),
                                      dtype=np.float32)
        batch_sums, z_mean, z_log_var = step(noisy, clean, epsilon[0])
        for name, value in batch_sums.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        if variational:
            # The K samples go through the decoder a chunk at a time (memory stays
            # bounded); log-sum-exps of chunks combine exactly into the whole one.
            chunk = max(1, IW_DECODES_PER_SHARD * fast_path.default_shards() // len(clean))
            parts = [np.asarray(iw_step(z_mean, z_log_var, clean, epsilon[1 + first:1 + first + chunk]), np.float64)
                     for first in range(0, iw_samples, chunk)]
            sums["log_likelihood"] += float(np.sum(np.logaddexp.reduce(parts, axis=0) - math.log(iw_samples)))
    count = len(x_clean)
    results = {name: value / count for name, value in sums.items()}
    results["loss"] = results["reconstruction"] + (model.beta * results["kl"] if variational else 0.0)
    if variational:
        results["iw_samples"] = iw_samples
    order = ("loss", "reconstruction", "kl", "accuracy", "psnr_noisy", "psnr_reconstructed",
             "ssim_noisy", "ssim_reconstructed", "log_likelihood", "iw_samples")
    return {name: results[name] for name in order if name in results}


IW_PRECISIONS = (None, "float32", "mixed_bfloat16")


def _likelihood_logits_model(model, precision):
    """The lower-precision model whose logits the likelihood estimate decodes, or ``None`` for
    float32 decodes (see :func:`evaluate`'s ``iw_precision``)."""
    precision = precision_of(model) if precision is None else precision
    if precision == "float32" or not model.variational:
        return None
    twin = with_precision(model, precision)
    # Without logits the likelihood would come from bfloat16 probabilities: off by tenths of a nat.
    return twin if twin.has_logits else None


def default_iw_samples(model):
    """K for the likelihood estimate: 100 for every model.

    The estimate is a lower bound that tightens as K grows (Burda et al. 2016,
    theorem 1), so one K for all models keeps their estimates comparable.
    """
    return 100


# Images each shard of the likelihood estimate decodes per call: smaller calls keep
# their activations nearer the core, much smaller ones pay the cost of each call
# (measured in benchmarks/results/intel-xeon-167/README.md).
IW_DECODES_PER_SHARD = 2_500


def _shards(size, shards):
    """``(low, high)`` bounds of ``shards`` near-equal slices of ``size`` items (a tensor inside a step)."""
    bounds = [size * index // shards for index in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _evaluation_step(model):
    """A compiled function: (noisy, clean, epsilon) batch -> (sums of every per-image
    metric but the likelihood, z_mean, z_log_var), epsilon (B, D) drawing the z
    of the loss terms. For ``ae``, z_log_var is None and there is no ``kl``.
    """

    @tf.function(reduce_retracing=True)
    def step(noisy, clean, epsilon):
        per_image = {}
        z_log_var = None
        if model.variational:
            z_mean, z_log_var = model.moments(noisy)
            sampled = model.decode(z_mean + ops.exp(0.5 * z_log_var) * epsilon, training=False)
            deterministic = model.decode(z_mean, training=False)
            per_image["kl"] = kl_divergence(z_mean, z_log_var)
        else:
            z_mean = model.moments(noisy)
            sampled = deterministic = model.decode(z_mean, training=False)
        per_image.update({
            "reconstruction": reconstruction_loss(clean, sampled),
            "accuracy": pixel_accuracy(clean, sampled),
            "psnr_noisy": _psnr(clean, noisy),
            "psnr_reconstructed": _psnr(clean, deterministic),
            "ssim_noisy": tf.image.ssim(clean, noisy, max_val=1.0),
            "ssim_reconstructed": tf.image.ssim(clean, deterministic, max_val=1.0),
        })
        sums = {name: ops.sum(ops.cast(value, "float64")) for name, value in per_image.items()}
        return sums, z_mean, z_log_var

    return step


def _iw_step(model, logits_model=None):
    """A compiled function: (z_mean, z_log_var, clean, epsilon (K, B, D)) -> (B,)
    log sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k = mean + std * epsilon[k]
    (Burda et al. 2016, eq. 8, before dividing by K).

    ``logits_model``: ``None`` to decode with the float32 ``model``, or a twin
    computing in lower precision. Either decoder stops at its logits where it
    can (``has_logits``), and :func:`log_likelihood_from_logits` takes the
    Bernoulli likelihood from them in float32.

    Decoding the K x B samples is most of an evaluation's time; the images run
    as ``fast_path.default_shards()`` independent slices, one per core.
    """
    shards = fast_path.default_shards()
    log_two_pi = math.log(2 * math.pi)
    decoder = model if logits_model is None else logits_model

    def log_weights(z_mean, z_log_var, clean, epsilon):
        samples = ops.shape(epsilon)[0]
        batch = ops.shape(z_mean)[0]
        z = z_mean[None] + ops.exp(0.5 * z_log_var)[None] * epsilon  # (K, B, D)
        # Gaussian log densities summed over latent dimensions: (K, B).
        log_prior = -0.5 * ops.sum(ops.square(z) + log_two_pi, axis=-1)
        log_posterior = -0.5 * ops.sum(ops.square(epsilon) + log_two_pi + z_log_var[None], axis=-1)
        flat_z = ops.reshape(z, (-1, model.latent_dim))
        if decoder.has_logits:
            log_likelihood = log_likelihood_from_logits(ops.reshape(clean, (batch, PIXELS)),
                                                        decoder.decode_logits(flat_z, training=False))
        else:  # a decoder without a sigmoid output: the training loss's formula on its output
            predicted = ops.reshape(model.decode(flat_z, training=False), (samples, batch, PIXELS))
            log_likelihood = bernoulli_log_likelihood(ops.reshape(clean, (1, batch, PIXELS)), predicted)
        return ops.logsumexp(log_likelihood + log_prior - log_posterior, axis=0)

    @tf.function(reduce_retracing=True)
    def step(z_mean, z_log_var, clean, epsilon):
        return ops.concatenate([log_weights(z_mean[low:high], z_log_var[low:high], clean[low:high],
                                            epsilon[:, low:high])
                                for low, high in _shards(ops.shape(z_mean)[0], shards)], 0)

    return step


# logit(1 - 1e-7): clipping the logits to +-16.118 is clipping sigmoid(logits) to
# [1e-7, 1 - 1e-7], as the training loss clips its probabilities.
LOGIT_BOUND = math.log((1 - PROBABILITY_CLIP) / PROBABILITY_CLIP)


def log_likelihood_from_logits(clean, logits):
    """Bernoulli log-likelihood of K decodes per image from the decoder's logits.

    sum_p x_p log s_p + (1 - x_p) log(1 - s_p) with s = sigmoid(l), l the
    logits clipped to +-``LOGIT_BOUND``: the training loss's formula with its
    clip, negated. Since s = e^l / (1 + e^l), log s = l - log(1 + e^l) and
    log(1 - s) = -log(1 + e^l), so the sum is sum_p x_p l_p - log(1 + e^(l_p)).
    That log is taken once per four pixels, of the product of their
    1 + e^l (at most (1 + 1e7)^4 ~ 1e28 after the clip, inside float32).

    Taken from the logits in float32, this is also more exact than the
    logarithms of float32 probabilities: a probability within 1e-6 of 1 keeps
    one or two significant digits in 1 - s. The function is compiled with XLA,
    which runs it as one loop over the logits rather than TensorFlow's kernels,
    one pass per operation (timed in ``benchmarks/results/intel-xeon-167/README.md``).

    Args:
        clean: (B, P) float32 targets in [0, 1].
        logits: (K * B, P), or (K * B, ...) of P values each (a
            convolutional decoder's (K * B, 28, 28, 1)), any float dtype,
            sample-major (row k * B + i is sample k of image i); P a
            multiple of 4.

    Returns:
        (K, B) float32 nats.
    """
    clean, logits = tf.convert_to_tensor(clean), tf.convert_to_tensor(logits)
    pixels = clean.shape[-1] if clean.shape.rank == 2 else None
    if not pixels or pixels % 4 or logits.shape[1:].num_elements() != pixels:
        raise ValueError(f"Expected clean of shape (B, P) and logits of shape (K * B, P) or (K * B, ...) of P values "
                         f"each, P a multiple of 4. Received: clean.shape={tuple(clean.shape)}, "
                         f"logits.shape={tuple(logits.shape)}")
    return _log_likelihood_from_logits(clean, logits)


@tf.function(jit_compile=True)
def _log_likelihood_from_logits(clean, logits):
    batch = tf.shape(clean)[0]
    logits = tf.reshape(tf.cast(logits, tf.float32), (-1, batch, clean.shape[-1]))
    logits = tf.clip_by_value(logits, -LOGIT_BOUND, LOGIT_BOUND)
    groups = tf.reshape(1.0 + tf.exp(logits), (-1, batch, clean.shape[-1] // 4, 4))
    log_one_plus_exp = tf.reduce_sum(tf.math.log(tf.reduce_prod(groups, axis=-1)), axis=-1)
    return tf.reduce_sum(clean[None] * logits, axis=-1) - log_one_plus_exp


def psnr(clean, other):
    """Peak signal-to-noise ratio per image in dB (peak 1) of numpy arrays (N, ...) -> (N,).

    10 log10(1 / MSE), capped at 100 dB (MSE floored at 1e-10) for equal images.
    """
    clean = np.asarray(clean, np.float64).reshape(len(clean), -1)
    other = np.asarray(other, np.float64).reshape(len(other), -1)
    return 10 * np.log10(1 / np.maximum(np.mean((clean - other) ** 2, axis=1), 1e-10))


def image_quality(clean, images, batch_size=1000):
    """PSNR (dB, peak 1) and SSIM per image of ``images`` against ``clean``, as :func:`evaluate` computes them.

    SSIM is ``tf.image.ssim`` (11 x 11 Gaussian window, sigma 1.5; Wang et
    al. 2004) with ``max_val=1``, so any denoiser's output is scored exactly
    as the models' reconstructions are.

    Args:
        clean, images: (N, 28, 28[, 1]) in [0, 1], same N.

    Returns:
        ``{"psnr": (N,), "ssim": (N,)}`` float64 arrays.
    """
    images, clean = check_pair(images, clean, "images", "clean")
    batch_size = check_positive_int("batch_size", batch_size)
    ssim = np.concatenate([np.asarray(tf.image.ssim(tf.constant(clean[start:start + batch_size]),
                                                    tf.constant(images[start:start + batch_size]), max_val=1.0),
                                      np.float64) for start in range(0, len(clean), batch_size)])
    return {"psnr": psnr(clean, images), "ssim": ssim}


def _psnr(clean, other):
    """:func:`psnr` inside a compiled step: (B, 28, 28, 1) tensors -> (B,)."""
    mse = ops.mean(ops.square(ops.reshape(clean - other, (-1, PIXELS))), axis=1)
    return 10.0 * ops.log(1.0 / ops.maximum(mse, 1e-10)) / math.log(10.0)
