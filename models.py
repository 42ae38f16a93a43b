"""Denoising VAEs of the study (the report's Architecture_1/2/3_Variation_AE) and its plain autoencoder.

* :func:`build_model` builds ``"arch1"``, ``"arch2"``, ``"arch3"`` (VAEs) or
  ``"ae"`` (the report's "Architecture_1_VAE": architecture 1 with a
  deterministic code). Each is a :class:`DenoisingVAE` exposing ``.encoder``
  and ``.decoder``; with ``latent_dim=2`` parameter counts equal the report.
* :func:`train_model` fits a model to map noisy images to clean ones into a run
  folder, resuming from the last finished epoch after any interruption.
* :func:`evaluate` computes test metrics in batches, including an
  importance-weighted estimate of log p(x) (Burda et al. 2016).

The models' layers, weights and saved files are the report's. For speed,
training and evaluation compute two kinds of adjacent layer pairs in one
go with the same result (:func:`upsample_conv`, :func:`conv_relu_pool`),
and :class:`FusedAdam` updates each variable with one kernel.

Everything here uses Keras 3 on the TensorFlow backend. Importing this module
sets, unless already set, ``TF_ENABLE_ONEDNN_OPTS=1``, ``TF_NUM_INTRAOP_THREADS=1``
and ``TF_NUM_INTEROP_THREADS`` = CPU cores (read by TensorFlow when it starts,
so import this module first), and has no other effect.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

# These must precede the first TensorFlow import to take effect. oneDNN's
# CPU kernels speed up the conv models considerably where TF leaves them off.
# Single-threaded ops with one inter-op thread per core let the independent
# batch shards of DenoisingVAE run side by side (measurements: README.md, "Speed").
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(os.cpu_count() or 1))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

from data_prepro import IMAGE_SIZE, check_images  # noqa: E402

LOGGER = logging.getLogger("models")
ARCHITECTURES = ("arch1", "arch2", "arch3", "ae")
PIXELS = IMAGE_SIZE * IMAGE_SIZE
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
METRIC_NAMES = ("loss", "reconstruction", "kl", "accuracy")


# --------------------------------------------------------------------------
# Layers and the model
# --------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="denoising_vae")
class Sampling(layers.Layer):
    """Draws z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (the reparameterisation trick).

    Example:
        >>> z = Sampling(seed=0)([z_mean, z_log_var])  # (B, latent_dim)

    Args:
        seed: seed of the layer's own random stream (``None``: from Keras' global seed).
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _conv_encoder_trunk(inputs, filters, prefix):
    """Conv(3x3, relu, same) + MaxPool(2, same) blocks, then Flatten."""
    x = inputs
    for index, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, 3, activation="relu", padding="same", name=f"{prefix}_conv{index}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"{prefix}_maxpool{index}")(x)
    return layers.Flatten(name="flatten")(x)


def _encoder(architecture, latent_dim, seed):
    """The encoder of the report's tables: VAEs give [z_mean, z_log_var, z], ``ae`` gives [code]."""
    inputs = keras.Input(INPUT_SHAPE, name="input_encoder")
    if architecture in ("arch1", "ae"):
        hidden = _conv_encoder_trunk(inputs, (16, 8), "encoder")  # (B, 392)
    elif architecture == "arch2":
        hidden = layers.Flatten(name="flat_encoder")(inputs)
        hidden = layers.Dense(512, activation="relu", name="encoding_dense")(hidden)  # (B, 512)
    else:
        hidden = _conv_encoder_trunk(inputs, (16, 8, 8), "encoder")  # (B, 128)
    if architecture == "ae":
        code = layers.Dense(latent_dim, name="code")(hidden)
        return keras.Model(inputs, code, name="encoder")
    z_mean = layers.Dense(latent_dim, name="mean")(hidden)
    z_log_var = layers.Dense(latent_dim, name="log_var")(hidden)
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def _decoder(architecture, latent_dim):
    """The decoder of the report's tables: (B, latent_dim) -> (B, 28, 28, 1) in (0, 1)."""
    inputs = keras.Input((latent_dim,), name="decoder_input")
    if architecture in ("arch1", "ae"):
        x = layers.Dense(512, activation="relu", name="decoding")(inputs)
        x = layers.Dense(256, activation="relu", name="decoding1")(x)
        x = layers.Dense(PIXELS, activation="sigmoid", name="flat_decoded")(x)
        outputs = layers.Reshape(INPUT_SHAPE, name="out_decoded")(x)
    elif architecture == "arch2":
        x = layers.Dense(512, activation="relu", name="decoding_dense")(inputs)
        x = layers.Dense(PIXELS, activation="sigmoid", name="flat_decoder")(x)
        outputs = layers.Reshape(INPUT_SHAPE, name="output_decoder")(x)
    else:
        x = layers.Dense(128, activation="relu", name="decoder_dense1")(inputs)
        x = layers.Reshape((4, 4, 8), name="decoder_reshape")(x)
        x = layers.Conv2D(8, 3, activation="relu", padding="same", name="decoder_conv1")(x)
        x = layers.UpSampling2D(name="decoder_upsampling1")(x)  # (B, 8, 8, 8)
        x = layers.Conv2D(8, 3, activation="relu", padding="same", name="decoder_conv2")(x)
        x = layers.UpSampling2D(name="decoder_upsampling2")(x)  # (B, 16, 16, 8)
        x = layers.Conv2D(16, 3, activation="relu", padding="valid", name="decoder_conv3")(x)  # (B, 14, 14, 16)
        x = layers.UpSampling2D(name="decoder_upsampling3")(x)  # (B, 28, 28, 16)
        outputs = layers.Conv2D(1, 3, activation="sigmoid", padding="same", name="decoder_conv4")(x)
    return keras.Model(inputs, outputs, name="decoder")


# --------------------------------------------------------------------------
# Upsampling followed by a convolution, computed on the small map
# --------------------------------------------------------------------------

def _phase_taps(padding):
    """taps[a, r, d] = 1 where tap d of a 3-tap kernel, applied after 2x nearest
    upsampling, reads source offset r (shifted to start at 0) for output parity a.

    Output row p = 2i + a reads upsampled row p + d - 1 ("same") or p + d
    ("valid"), which is source row i + floor((a + d - 1) / 2) or i + floor((a + d) / 2).
    """
    low = -1 if padding == "same" else 0
    taps = np.zeros((2, 3 if padding == "same" else 2, 3), np.float32)
    for parity in range(2):
        for tap in range(3):
            taps[parity, (parity + tap + low) // 2 - low, tap] = 1.0
    return taps


_PHASE_TAPS = {padding: _phase_taps(padding) for padding in ("same", "valid")}


def _is_upsample_conv(upsampling, conv):
    """Whether ``conv(upsampling(x))`` is a 2x nearest upsampling then a plain 3x3 convolution."""
    return (isinstance(upsampling, layers.UpSampling2D) and isinstance(conv, layers.Conv2D)
            and tuple(upsampling.size) == (2, 2) and upsampling.interpolation == "nearest"
            and tuple(conv.kernel_size) == (3, 3) and tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1) and conv.groups == 1 and conv.padding in _PHASE_TAPS
            and upsampling.data_format == conv.data_format == "channels_last")


def upsample_conv(x, conv):
    """``conv(UpSampling2D(2)(x))`` computed as one convolution on ``x`` itself.

    Each of the four parities (row, column) of the upsampled output is a
    convolution of the small map with taps of ``conv.kernel`` summed where they
    read the same source pixel (the sub-pixel view of upsampling, Shi et al.
    2016); the four results are interleaved into the larger map. Same
    weights, same function, up to float rounding: the 4x larger upsampled map
    and its gradient are never formed.

    Args:
        x: (B, H, W, C_in) tensor.
        conv: a built 3x3, stride-1 ``Conv2D`` with ``"same"`` or ``"valid"`` padding.

    Returns:
        (B, 2H, 2W, C_out) for ``"same"``, (B, 2H - 2, 2W - 2, C_out) for ``"valid"``,
        in ``conv``'s compute dtype, activation applied.
    """
    taps = _PHASE_TAPS[conv.padding]
    rows = taps.shape[1]
    channels_in, channels_out = conv.kernel.shape[2], conv.kernel.shape[3]
    # kernel[r, s, c, (a, b, o)] = sum over taps (y, x) mapped to offsets (r, s) for parities (a, b)
    kernel = tf.einsum("ary,bsx,yxio->rsiabo", taps, taps, tf.convert_to_tensor(conv.kernel))
    kernel = tf.reshape(kernel, (rows, rows, channels_in, 4 * channels_out))
    dtype = conv.compute_dtype
    y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(kernel, dtype), 1, conv.padding.upper())
    # Channel (a * 2 + b) * C_out + o goes to pixel (2i + a, 2j + b), as depth_to_space
    # does; a reshape and transpose is faster here, its gradient most of all.
    shape = tf.shape(y)
    y = tf.reshape(y, (shape[0], shape[1], shape[2], 2, 2, channels_out))
    y = tf.reshape(tf.transpose(y, (0, 1, 3, 2, 4, 5)), (shape[0], 2 * shape[1], 2 * shape[2], channels_out))
    if conv.use_bias:
        y = y + tf.cast(tf.convert_to_tensor(conv.bias), dtype)
    return conv.activation(y)


def _is_conv_relu_pool(conv, pooling):
    """Whether ``pooling(conv(x))`` is a ReLU convolution then max pooling."""
    return (isinstance(conv, layers.Conv2D) and isinstance(pooling, layers.MaxPooling2D)
            and conv.activation is keras.activations.relu)


def conv_relu_pool(x, conv, pooling):
    """``pooling(conv(x))`` for a ReLU convolution and max pooling, the ReLU applied after the pooling.

    Max pooling and ReLU commute (ReLU is non-decreasing, and padded cells
    never win a max), so outputs and gradients are the same while the ReLU
    and its gradient run on the 4x smaller pooled map.

    Args:
        x: (B, H, W, C_in) tensor.
        conv: a built ``Conv2D`` with ``activation="relu"``.
        pooling: a ``MaxPooling2D``.

    Returns:
        the pooled map, in ``conv``'s compute dtype.
    """
    dtype = conv.compute_dtype
    y = conv.convolution_op(tf.cast(x, dtype), tf.cast(tf.convert_to_tensor(conv.kernel), dtype))
    if conv.use_bias:
        y = y + tf.cast(tf.convert_to_tensor(conv.bias), dtype)
    return tf.nn.relu(pooling(y))


def _layer_chain(output, start):
    """The layers leading from tensor ``start`` to tensor ``output`` of a functional
    model, first to last, when each takes the previous one's output alone; else ``None``."""
    chain, tensor = [], output
    while tensor is not start:
        layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
        if not isinstance(layer, layers.Layer) or isinstance(layer, layers.InputLayer):
            return None
        try:
            tensor = layer.input
        except (AttributeError, ValueError):  # a layer called at several places
            return None
        if not isinstance(tensor, keras.KerasTensor):  # several inputs
            return None
        chain.append(layer)
    return chain[::-1]


def _fused_steps(chain):
    """``chain`` as ``(kind, layers)`` steps: ``"upsample_conv"`` and ``"conv_relu_pool"``
    for the pairs :func:`upsample_conv` and :func:`conv_relu_pool` compute, else ``"layer"``."""
    steps, index = [], 0
    while index < len(chain):
        pair = tuple(chain[index:index + 2])
        if len(pair) == 2 and _is_upsample_conv(*pair):
            steps.append(("upsample_conv", pair))
        elif len(pair) == 2 and _is_conv_relu_pool(*pair):
            steps.append(("conv_relu_pool", pair))
        else:
            pair = pair[:1]
            steps.append(("layer", pair))
        index += len(pair)
    return steps


def _run_steps(steps, x, training):
    for kind, pair in steps:
        if kind == "upsample_conv":
            x = upsample_conv(x, pair[1])
        elif kind == "conv_relu_pool":
            x = conv_relu_pool(x, *pair)
        else:
            x = pair[0](x, training=training)
    return x


def _encoder_plan(encoder, outputs):
    """``(steps, heads)``: the fused steps of the encoder's trunk and the layers
    that each map the trunk's output to one of ``outputs``; ``None`` if the
    encoder is not shaped so."""
    heads = [getattr(getattr(t, "_keras_history", None), "operation", None) for t in outputs]
    try:
        trunk_output = heads[0].input
        shared = all(head.input is trunk_output for head in heads)
    except (AttributeError, ValueError):
        return None
    chain = _layer_chain(trunk_output, encoder.inputs[0]) if shared else None
    return None if chain is None else (_fused_steps(chain), heads)


def reconstruction_loss(clean, predicted):
    """Binary cross-entropy summed over the 784 pixels: (B, 28, 28, 1) x2 -> (B,) nats.

    Probabilities are clipped to [1e-7, 1 - 1e-7] as Keras does.
    """
    predicted = ops.clip(ops.cast(ops.reshape(predicted, (-1, PIXELS)), "float32"), 1e-7, 1 - 1e-7)
    clean = ops.cast(ops.reshape(clean, (-1, PIXELS)), "float32")
    return -ops.sum(clean * ops.log(predicted) + (1 - clean) * ops.log(1 - predicted), axis=1)


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


@keras.saving.register_keras_serializable(package="denoising_vae")
class DenoisingVAE(keras.Model):
    """Encoder + decoder trained to map noisy images to clean ones.

    Loss per batch = mean over images of [reconstruction + beta * KL], with
    reconstruction the summed binary cross-entropy against the *clean* image
    and KL as in :func:`kl_divergence` (absent for the deterministic ``ae``).

    Training data are either clean images alone, corrupted inside the
    compiled step with fresh noise of std ``train_noise_std`` (then > 0), or
    ``(noisy, clean)`` pairs. Evaluation never adds noise: it expects pairs.

    Each compiled step runs its batch as ``shards`` independent slices whose
    per-image losses are concatenated before the batch mean, so the
    gradient is the same as for the whole batch; on a CPU the slices run on
    separate cores (see :func:`default_shards`).

    Args:
        encoder: model (B, 28, 28, 1) -> [z_mean, z_log_var, z] (VAE) or code.
        decoder: model (B, latent_dim) -> (B, 28, 28, 1) in (0, 1).
        architecture: the name it was built as (``"arch1"`` ...).
        beta: weight of the KL term, >= 0.
        train_noise_std: std of the noise drawn in each training step (0: none).
        seed: seed of the training-noise and sampling streams.
    """

    def __init__(self, encoder, decoder, architecture="", beta=1.0, train_noise_std=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.architecture = architecture
        self.beta = float(beta)
        self.train_noise_std = float(train_noise_std)
        self.seed = seed
        self.variational = len(encoder.outputs) == 3  # [z_mean, z_log_var, z]; the AE has one code
        self.latent_dim = int(decoder.inputs[0].shape[-1])
        self.shards = default_shards()
        self.resident_data = None  # a ResidentData while train_model runs: batches arrive as indices
        # Separate streams: two draws from one generator in one graph could race.
        self.noise_seed_generator = keras.random.SeedGenerator(seed)
        self.sampling_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        # The encoder up to (z_mean, z_log_var), sharing its layers: steps draw
        # epsilon once per batch instead of in each shard's Sampling layer.
        moments = encoder.outputs[:2] if self.variational else encoder.outputs[0]
        self._moments = keras.Model(encoder.inputs[0], moments, name="encoder_moments")
        # The same layers run pairwise where a fused computation gives the same
        # function faster (upsample_conv, conv_relu_pool); None: run the models.
        self._encoder_plan = _encoder_plan(encoder, encoder.outputs[:2] if self.variational else encoder.outputs)
        decoder_chain = _layer_chain(decoder.outputs[0], decoder.inputs[0])
        self._decoder_steps = None if decoder_chain is None else _fused_steps(decoder_chain)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, inputs, training=False):
        """``(z_mean, z_log_var, z)`` (B, D) each; for the AE ``(code, None, code)``."""
        encoded = self.encoder(inputs, training=training)
        return tuple(encoded) if self.variational else (encoded, None, encoded)

    def moments(self, inputs, training=False):
        """The encoder's outputs before sampling: ``(z_mean, z_log_var)``, (B, D) each,
        for a VAE; the code (B, D) for the AE. Same function as the encoder's
        layers, with pairs fused as in :func:`conv_relu_pool`."""
        if self._encoder_plan is None:
            return self._moments(inputs, training=training)
        steps, heads = self._encoder_plan
        hidden = _run_steps(steps, inputs, training)
        outputs = tuple(head(hidden, training=training) for head in heads)
        return outputs if self.variational else outputs[0]

    def decode(self, z, training=False):
        """``self.decoder(z)`` with each upsampling + convolution pair computed by
        :func:`upsample_conv`: (B, latent_dim) -> (B, 28, 28, 1) in (0, 1)."""
        if self._decoder_steps is None:
            return self.decoder(z, training=training)
        return _run_steps(self._decoder_steps, z, training)

    def call(self, inputs, training=False):
        """Reconstruction through a sampled z (VAE) or the code (AE): (B, 28, 28, 1)."""
        return self.decode(self.encode(inputs, training=training)[2], training=training)

    def losses_per_image(self, noisy, clean, epsilon=None, training=False):
        """Per-image reconstruction, KL and accuracy, (B,) each.

        ``epsilon`` (B, D) are the standard normal draws of z = mean + std * epsilon;
        ``None`` lets the encoder's Sampling layer draw them.
        """
        if epsilon is None:
            z_mean, z_log_var, z = self.encode(noisy, training=training)
        elif self.variational:
            z_mean, z_log_var = self.moments(noisy, training=training)
            z = z_mean + ops.exp(0.5 * z_log_var) * ops.cast(epsilon, z_mean.dtype)
        else:
            z_mean = z = self.moments(noisy, training=training)
        predicted = self.decode(z, training=training)
        reconstruction = reconstruction_loss(clean, predicted)
        kl = kl_divergence(z_mean, z_log_var) if self.variational else ops.zeros_like(reconstruction)
        return reconstruction, kl, pixel_accuracy(clean, predicted)

    def _sharded_losses(self, noisy, clean, training, add_noise=False):
        """:meth:`losses_per_image` over ``self.shards`` slices of the batch, concatenated.

        Random draws are made per slice from stateless seeds taken once per
        step, so the slices' draws run in parallel too and never race for a
        generator. With ``add_noise``, ``noisy`` is ignored and each slice of
        ``clean`` gets fresh Gaussian noise of std ``train_noise_std``, clipped
        to [0, 1].
        """
        size = ops.shape(clean)[0]
        bounds = [size * index // self.shards for index in range(self.shards + 1)]
        sampling_seed = tf.cast(self.sampling_seed_generator.next(), tf.int64)
        noise_seed = tf.cast(self.noise_seed_generator.next(), tf.int64) if add_noise else None
        parts = []
        for index, (low, high) in enumerate(zip(bounds[:-1], bounds[1:])):
            offset = tf.constant([0, index], dtype=sampling_seed.dtype)
            shard_clean = clean[low:high]
            if add_noise:
                noise = tf.random.stateless_normal(tf.shape(shard_clean), seed=noise_seed + offset,
                                                   dtype=shard_clean.dtype)
                shard_noisy = ops.clip(shard_clean + self.train_noise_std * noise, 0.0, 1.0)
            else:
                shard_noisy = noisy[low:high]
            epsilon = tf.random.stateless_normal((high - low, self.latent_dim), seed=sampling_seed + offset)
            parts.append(self.losses_per_image(shard_noisy, shard_clean, epsilon, training=training))
        return [ops.concatenate(values, axis=0) for values in zip(*parts)]

    def _update(self, reconstruction, kl, accuracy):
        loss = ops.mean(reconstruction) + self.beta * ops.mean(kl)
        for name, value in zip(METRIC_NAMES, (loss, ops.mean(reconstruction), ops.mean(kl), ops.mean(accuracy))):
            self.trackers[name].update_state(value)
        return loss

    def _pair(self, data):
        """``(noisy, clean)`` from a batch of pairs, or ``(None, clean)`` from clean images alone."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return (x, y) if y is not None else (None, x)

    def train_step(self, data):
        if isinstance(data, tf.Tensor) and data.dtype.is_integer:
            data = self.resident_data.gather(data)
        noisy, clean = self._pair(data)
        add_noise = noisy is None and self.train_noise_std > 0
        with tf.GradientTape() as tape:
            reconstruction, kl, accuracy = self._sharded_losses(clean if noisy is None else noisy, clean,
                                                                training=True, add_noise=add_noise)
            loss = ops.mean(reconstruction) + self.beta * ops.mean(kl)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        self._update(reconstruction, kl, accuracy)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data):
        noisy, clean = self._pair(data)
        self._update(*self._sharded_losses(clean if noisy is None else noisy, clean, training=False))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "architecture": self.architecture, "beta": self.beta,
                "train_noise_std": self.train_noise_std, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="denoising_vae")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with each variable updated by one fused TensorFlow kernel.

    The update is Keras' (Kingma & Ba 2015, Algorithm 1 with epsilon added to
    sqrt(v)): m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
    w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon),
    computed by ``ResourceApplyAdam`` in one pass over each variable instead
    of about ten separate operations. Same arguments and state as Adam;
    ``amsgrad`` and sparse gradients fall back to Keras' own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=ops.power(beta_1, step), beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype), grad=ops.cast(gradient, dtype))


def default_shards():
    """Slices per batch: one per CPU core (at most 4) on a CPU, 1 where a GPU is visible.

    Batch-100 steps of these small models are made of ops too small to keep
    several cores busy each; independent slices on single-threaded ops do
    (see ``TF_NUM_INTRAOP_THREADS`` at the top of this module).
    """
    if tf.config.list_physical_devices("GPU"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def resolve_precision(precision="auto"):
    """``"auto"`` -> ``"mixed_bfloat16"`` on a CPU with native bfloat16 arithmetic
    (AVX512-BF16 or AMX) and no GPU, else ``"float32"``; other values unchanged.

    Mixed bfloat16 computes layers in bfloat16 and keeps weights, losses and
    optimizer state in float32 (Kalamkar et al. 2019); the benchmark checks
    that the loss after the same epochs matches float32 within run-to-run noise.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Expected precision to be one of {PRECISIONS}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def build_model(name, latent_dim=2, *, beta=1.0, seed=None, precision="float32"):
    """Build one of the study's models, uncompiled.

    Args:
        name: ``"arch1"``, ``"arch2"``, ``"arch3"`` or ``"ae"``.
        latent_dim: size of the latent space, >= 1 (the report uses 2).
        beta: weight of the KL term (ignored by ``"ae"``), >= 0.
        seed: seeds the initial weights (through ``keras.utils.set_random_seed``,
            which also seeds Python, NumPy and TensorFlow) and the sampling
            layer's stream; ``None`` leaves them unseeded.
        precision: ``"float32"``, ``"mixed_bfloat16"`` or ``"auto"`` (see
            :func:`resolve_precision`); weights are float32 either way.

    Returns:
        :class:`DenoisingVAE` with ``.encoder`` and ``.decoder``; call it on
        (B, 28, 28, 1) images for (B, 28, 28, 1) reconstructions.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Expected name to be one of {ARCHITECTURES}. Received: name={name!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ValueError(f"Expected latent_dim to be an integer >= 1. Received: latent_dim={latent_dim!r}")
    _check_beta(beta)
    policy = resolve_precision(precision)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # layers take the policy current when they are made
    try:
        encoder = _encoder(name, int(latent_dim), seed)
        decoder = _decoder(name, int(latent_dim))
        model = DenoisingVAE(encoder, decoder, architecture=name, beta=beta, seed=seed, name=name)
    finally:
        keras.config.set_dtype_policy(previous)
    model.build((None, *INPUT_SHAPE))
    return model


def precision_of(model):
    """The model's dtype policy name, e.g. ``"float32"`` or ``"mixed_bfloat16"``."""
    return model.decoder.layers[-1].dtype_policy.name


def as_float32(model):
    """``model`` itself if it computes in float32, else a float32 copy with the same weights."""
    if precision_of(model) == "float32":
        return model
    twin = build_model(model.architecture, model.latent_dim, beta=model.beta, precision="float32")
    twin.set_weights(model.get_weights())
    return twin


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) \
            or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"Expected beta to be a finite number >= 0. Received: beta={beta!r}")


def parameter_counts(model):
    """``{"encoder": n, "decoder": n, "total": n}`` trainable + non-trainable parameters."""
    encoder, decoder = model.encoder.count_params(), model.decoder.count_params()
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def load_model(path):
    """Load a saved ``.keras`` model (``safe_mode=True``)."""
    return keras.models.load_model(path, safe_mode=True)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingResult:
    """What :func:`train_model` returns.

    Attributes:
        model: the trained model (loaded from the run folder when resumed).
        history: per epoch lists: ``loss``, ``reconstruction``, ``kl``,
            ``accuracy`` and the same with ``val_`` for validation.
        epochs: epochs finished in total (previous runs included).
        train_seconds: training time summed over all runs of this folder.
        resumed_from: epochs found finished when this call started.
        stopped_early: whether early stopping ended training.
    """

    model: DenoisingVAE
    history: dict
    epochs: int
    train_seconds: float
    resumed_from: int = 0
    stopped_early: bool = False


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (optimizer state included) and the history after every epoch.

    Order matters for a kill at any instant: the history row is written
    first, then ``checkpoint-epochN.keras`` (atomically), then older
    checkpoints are removed. On resume the newest loadable checkpoint decides
    the epoch, and history rows after it are dropped.
    """

    def __init__(self, run_dir, history, seconds_before, metadata):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.history = history
        self.seconds_before = seconds_before
        self.metadata = metadata
        self.started = None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        bad = [key for key, value in logs.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLossError(
                f"training diverged: {bad[0]} became {logs[bad[0]]} in epoch {epoch + 1}; "
                f"the run folder keeps epoch {epoch}; lower the learning rate or check the data")
        seconds = self.seconds_before + time.perf_counter() - self.started
        row = {"epoch": epoch + 1, **logs, "seconds": seconds}
        self.history.append(row)
        _write_history(self.run_dir / "history.csv", self.history)
        path = self.run_dir / f"checkpoint-epoch{epoch + 1}.keras"
        partial = self.run_dir / f".checkpoint-epoch{epoch + 1}.keras.part.keras"
        self.model.save(partial)
        os.replace(partial, path)
        _atomic_json(self.run_dir / "progress.json", {**self.metadata, "epochs_done": epoch + 1,
                                                       "train_seconds": seconds})
        for old in self.run_dir.glob("checkpoint-epoch*.keras"):
            if old != path:
                old.unlink(missing_ok=True)


class _StopOnNonFiniteBatch(keras.callbacks.Callback):
    """Raises as soon as a batch's running loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training diverged: loss became {loss} at batch {batch + 1}; "
                "lower the learning rate or check the data")


def _write_history(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    partial = path.with_name(path.name + ".part")
    with open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def _atomic_json(path, data):
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)


def read_history(run_dir):
    """Rows of ``history.csv`` as a list of dicts of floats (epoch as int); [] if absent."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


def _latest_checkpoint(run_dir):
    """``(epoch, model)`` of the newest loadable checkpoint, or ``(0, None)``."""
    found = []
    for path in Path(run_dir).glob("checkpoint-epoch*.keras"):
        try:
            found.append((int(path.stem.removeprefix("checkpoint-epoch")), path))
        except ValueError:
            continue
    for epoch, path in sorted(found, reverse=True):
        try:
            return epoch, load_model(path)
        except Exception as error:  # a damaged checkpoint is skipped, never trusted
            LOGGER.warning("checkpoint %s is unreadable (%s); removing it", path, str(error).splitlines()[0:1])
            path.unlink(missing_ok=True)
    return 0, None


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return int(value)


def check_pair(noisy, clean, noisy_name="x_noisy", clean_name="x_clean"):
    """Validate matching (noisy, clean) image arrays; return them as float32 (N, 28, 28, 1)."""
    noisy = check_images(noisy, noisy_name)
    clean = check_images(clean, clean_name)
    if len(noisy) != len(clean):
        raise ValueError(f"Expected {noisy_name} and {clean_name} of the same length. "
                         f"Received: {len(noisy)} and {len(clean)} images")
    return as_model_input(noisy), as_model_input(clean)


def as_model_input(x):
    """(N, 28, 28[, 1]) -> float32 (N, 28, 28, 1) without copying when already so."""
    x = np.asarray(x, dtype=np.float32)
    return x[..., None] if x.ndim == 3 else x


def _quiet_options():
    """tf.data options for a 2-core machine: one pipeline thread, no autotuning.

    The pipelines below only shuffle and batch indices; extra threads would
    compete with the training step for the cores (measured in benchmarks/).
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    return options


def index_dataset(count, batch_size, shuffle_seed=None):
    """Batches of int64 indices 0..count-1, reshuffled every epoch when seeded."""
    indices = tf.data.Dataset.range(count)
    if shuffle_seed is not None:
        indices = indices.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size).with_options(_quiet_options())


class ResidentData:
    """Training arrays kept as TensorFlow tensors, gathered by index inside the compiled step.

    Holding the data in TensorFlow and feeding only index batches keeps the
    input pipeline off the cores that train. Attach with
    ``model.resident_data = ResidentData(clean)`` or ``ResidentData(noisy, clean)``.
    """

    def __init__(self, *arrays):
        self.tensors = tuple(tf.constant(as_model_input(a)) for a in arrays)

    def __len__(self):
        return int(self.tensors[0].shape[0])

    def gather(self, index):
        """The batch at ``index``: clean images, or ``(noisy, clean)``."""
        picked = tuple(tf.gather(t, index) for t in self.tensors)
        return picked if len(picked) > 1 else picked[0]


def _dataset(arrays, batch_size, shuffle_seed=None):
    """Batches of ``arrays`` (equally long), gathered along :func:`index_dataset` outside the step."""
    data = ResidentData(*arrays)
    return index_dataset(len(data), batch_size, shuffle_seed).map(data.gather)


def default_steps_per_execution(batches_per_epoch):
    """Steps run per compiled call: many, to amortise Python overhead, but at most an epoch.

    Up to 50, preferring a divisor of the epoch's batches from 25 to 50: Keras
    counts every call as a full one, so a shorter last call would make the
    progress bar overshoot (650/624).
    """
    if batches_per_epoch <= 50:
        return max(1, batches_per_epoch)
    return next((steps for steps in range(50, 24, -1) if batches_per_epoch % steps == 0), 50)


def train_model(model, x_train, x_val, *, run_dir, epochs=20, batch_size=100, noise_std=0.5,
                fresh_noise=True, seed=0, learning_rate=1e-3, early_stopping_patience=None,
                steps_per_execution=None, jit_compile=False, callbacks=(), verbose="auto"):
    """Train ``model`` to turn noisy images into clean ones, resumably, into ``run_dir``.

    Validation uses one fixed noisy copy of ``x_val`` (seeded), so curves are
    comparable across epochs and runs. Training noise is fresh every epoch
    (drawn inside the compiled step) or, with ``fresh_noise=False``, one fixed
    noisy copy as in the report.

    ``run_dir`` receives ``history.csv``, ``progress.json`` and
    ``checkpoint-epochN.keras`` after every epoch; calling again with the same
    folder continues from the last finished epoch up to ``epochs`` in total
    (the passed ``model`` is then replaced by the checkpoint's).

    Args:
        model: a :class:`DenoisingVAE` (from :func:`build_model`).
        x_train, x_val: clean images (N, 28, 28[, 1]) in [0, 1].
        epochs: total epochs, >= 1. batch_size: >= 1 (the report: 100).
        noise_std: std of the Gaussian noise, >= 0. seed: seeds everything.
        learning_rate: Adam's step size.
        early_stopping_patience: ``None`` (off) or epochs without a better
            ``val_loss`` before stopping; the best weights are then restored.
        steps_per_execution: training steps per compiled call (default:
            :func:`default_steps_per_execution`).
        jit_compile: compile the steps with XLA (slower on CPU; see benchmarks).
        callbacks: extra Keras callbacks for ``fit``.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        :class:`TrainingResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    from data_prepro import noise_addition

    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    x_train = as_model_input(check_images(x_train, "x_train"))
    x_val = as_model_input(check_images(x_val, "x_val"))
    if early_stopping_patience is not None:
        _check_positive_int("early_stopping_patience", early_stopping_patience)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    metadata = {"architecture": model.architecture, "latent_dim": model.latent_dim, "beta": model.beta,
                "batch_size": batch_size, "noise_std": float(noise_std), "fresh_noise": bool(fresh_noise),
                "seed": seed, "learning_rate": float(learning_rate)}
    _check_same_run(run_dir, metadata)
    done, restored = _latest_checkpoint(run_dir)
    history = [row for row in read_history(run_dir) if row["epoch"] <= done]
    seconds_before = history[-1]["seconds"] if history else 0.0
    if restored is not None:
        model = restored
    if done >= epochs:
        return TrainingResult(model, _columns(history), done, seconds_before, resumed_from=done)

    keras.utils.set_random_seed(seed + done)
    val_noisy = noise_addition(x_val, noise_std, seed=seed + 1_000_003)
    if fresh_noise:
        model.train_noise_std = float(noise_std)
        model.resident_data = ResidentData(x_train)
    else:
        model.train_noise_std = 0.0
        model.resident_data = ResidentData(noise_addition(x_train, noise_std, seed=seed + 2_000_003), x_train)
    train_data = index_dataset(len(x_train), batch_size, shuffle_seed=seed)
    val_data = _dataset((val_noisy, x_val), batch_size)
    batches = math.ceil(len(x_train) / batch_size)
    if restored is None:
        model.compile(optimizer=FusedAdam(learning_rate),
                      steps_per_execution=steps_per_execution or default_steps_per_execution(batches),
                      jit_compile=jit_compile)
    callbacks = [_StopOnNonFiniteBatch(), _EpochCheckpoint(run_dir, history, seconds_before, metadata),
                 *callbacks]
    early = None
    if early_stopping_patience is not None:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping_patience,
                                              restore_best_weights=True)
        callbacks.append(early)
    try:
        model.fit(train_data, validation_data=val_data, epochs=epochs, initial_epoch=done,
                  callbacks=callbacks, shuffle=False, verbose=verbose)
    finally:
        # The compiled step captured the training arrays; drop both so they can be freed.
        model.resident_data = None
        model.train_function = None
    stopped = bool(early is not None and early.stopped_epoch > 0)
    if stopped:
        model.save(run_dir / "best.keras")
    total_seconds = history[-1]["seconds"] if history else seconds_before
    return TrainingResult(model, _columns(history), len(history), total_seconds, resumed_from=done,
                          stopped_early=stopped)


def _check_same_run(run_dir, metadata):
    """Refuse to resume a run folder that was started with other settings."""
    path = Path(run_dir) / "progress.json"
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable progress: the checkpoints decide
    differing = [key for key, value in metadata.items() if key in stored and stored[key] != value]
    if differing:
        key = differing[0]
        raise ValueError(f"run_dir {str(run_dir)!r} holds a run with {key}={stored[key]!r}, "
                         f"not {metadata[key]!r}: use another run_dir or the same settings")


def _columns(rows):
    names = [key for key in (rows[0] if rows else {}) if key not in ("epoch", "seconds")]
    return {name: [row[name] for row in rows] for name in names}


# --------------------------------------------------------------------------
# Inference and evaluation
# --------------------------------------------------------------------------

def encode_mean(model, x, batch_size=1000):
    """Encoder means (VAE) or codes (AE) of images x: float32 (N, latent_dim)."""
    x = as_model_input(check_images(x, "x"))
    encoded = model.encoder.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(encoded[0] if model.variational else encoded, dtype=np.float32)


def reconstruct(model, x, batch_size=1000):
    """Deterministic reconstructions decoder(encoder mean): float32 (N, 28, 28, 1) in (0, 1)."""
    z = encode_mean(model, x, batch_size)
    return decode(model, z, batch_size)


def decode(model, z, batch_size=1000):
    """Decode latent points z (N, latent_dim) into float32 images (N, 28, 28, 1)."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"Expected z of shape (N, {model.latent_dim}). Received: z.shape={z.shape}")
    return np.asarray(model.decoder.predict(z, batch_size=batch_size, verbose=0), dtype=np.float32)


def evaluate(model, x_noisy, x_clean, *, batch_size=500, seed=0, iw_samples=None):
    """Test metrics of a model on (noisy, clean) pairs, computed in batches.

    ``loss``, ``reconstruction`` and ``kl`` (nats per image) and ``accuracy``
    are computed exactly as in training, with z sampled from q(z | noisy)
    (seeded, so deterministic). PSNR and SSIM (against the clean image)
    compare the noisy input and the deterministic reconstruction
    decoder(encoder mean) that the figures show.

    Computed in float32 even for a model trained in mixed precision.

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

    Returns:
        dict of floats; ``iw_samples`` says which K was used.
    """
    x_noisy, x_clean = check_pair(x_noisy, x_clean)
    batch_size = _check_positive_int("batch_size", batch_size)
    model = as_float32(model)  # metrics in full precision whatever the training precision
    variational = model.variational
    if iw_samples is None:
        iw_samples = default_iw_samples(model)
    if variational:
        iw_samples = _check_positive_int("iw_samples", iw_samples)
    rng = np.random.default_rng(seed)
    step, iw_step = _evaluation_step(model), _iw_step(model)
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
            chunk = max(1, IW_DECODES_PER_CALL // len(clean))
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


def default_iw_samples(model):
    """K for the likelihood estimate: 100 for every model.

    The estimate is a lower bound that tightens as K grows (Burda et al. 2016,
    theorem 1), so one K for all models keeps their estimates comparable.
    """
    return 100


IW_DECODES_PER_CALL = 10_000  # images decoded at once by the likelihood estimate


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


def _iw_step(model):
    """A compiled function: (z_mean, z_log_var, clean, epsilon (K, B, D)) -> (B,)
    log sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k = mean + std * epsilon[k]
    (Burda et al. 2016, eq. 8, before dividing by K)."""

    @tf.function(reduce_retracing=True)
    def step(z_mean, z_log_var, clean, epsilon):
        samples = ops.shape(epsilon)[0]
        batch = ops.shape(z_mean)[0]
        z = z_mean[None] + ops.exp(0.5 * z_log_var)[None] * epsilon  # (K, B, D)
        log_two_pi = math.log(2 * math.pi)
        # Gaussian log densities summed over latent dimensions: (K, B).
        log_prior = -0.5 * ops.sum(ops.square(z) + log_two_pi, axis=-1)
        log_posterior = -0.5 * ops.sum(ops.square(epsilon) + log_two_pi + z_log_var[None], axis=-1)
        decoded = model.decode(ops.reshape(z, (-1, model.latent_dim)), training=False)
        predicted = ops.clip(ops.reshape(decoded, (samples, batch, PIXELS)), 1e-7, 1 - 1e-7)
        target = ops.reshape(clean, (1, batch, PIXELS))
        log_likelihood = ops.sum(target * ops.log(predicted) + (1 - target) * ops.log(1 - predicted), axis=-1)
        return ops.logsumexp(log_likelihood + log_prior - log_posterior, axis=0)

    return step


def psnr(clean, other):
    """Peak signal-to-noise ratio per image in dB (peak 1) of numpy arrays (N, ...) -> (N,).

    10 log10(1 / MSE), capped at 100 dB (MSE floored at 1e-10) for equal images.
    """
    clean = np.asarray(clean, np.float64).reshape(len(clean), -1)
    other = np.asarray(other, np.float64).reshape(len(other), -1)
    return 10 * np.log10(1 / np.maximum(np.mean((clean - other) ** 2, axis=1), 1e-10))


def _psnr(clean, other):
    """:func:`psnr` inside a compiled step: (B, 28, 28, 1) tensors -> (B,)."""
    mse = ops.mean(ops.square(ops.reshape(clean - other, (-1, PIXELS))), axis=1)
    return 10.0 * ops.log(1.0 / ops.maximum(mse, 1e-10)) / math.log(10.0)
