"""The study's models: the report's three denoising VAEs (Architecture_1/2/3_Variation_AE) and its autoencoder.

* :func:`build_model` builds ``"arch1"``, ``"arch2"``, ``"arch3"`` (VAEs) or
  ``"ae"`` (the report's "Architecture_1_VAE": architecture 1 with a
  deterministic code), with the layers of the report's tables; with
  ``latent_dim=2`` parameter counts equal the report's.
* Each is a :class:`DenoisingVAE` exposing ``.encoder`` and ``.decoder``,
  trained on (noisy, clean) pairs with the loss
  ``losses.reconstruction_loss`` + beta * ``losses.kl_divergence``.
* :func:`load_model` reads a saved ``.keras`` file.

Where ``fused.py`` finds layer pairs it computes faster with the same
result, the model runs them so (``model.fused``); its layers, weights and
saved files are the report's either way.
"""
from __future__ import annotations

import math
import random

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ..core import files
from ..core.constants import ARCHITECTURES, IMAGE_SIZE
from . import fast_path, fused
from .losses import (PIXELS, kl_divergence, pixel_accuracy, reconstruction_loss, reconstruction_loss_from_logits)

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)

METRIC_NAMES = ("loss", "reconstruction", "kl", "accuracy")


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


def _kernel_initializers(seed):
    """A function giving the next layer's kernel initializer: Glorot uniform (Keras' default)
    with a seed of its own, drawn from ``random.Random(seed)``.

    Keras draws an unseeded initializer's seed from Python's process-wide
    ``random`` when the layer is made. In a Dask worker other threads (its
    event loop, heartbeats) draw from it too, so the same seed gave other
    initial weights from run to run. The private generator draws exactly what
    ``keras.utils.set_random_seed(seed)`` made Keras draw in a process of its
    own, so the weights are those of before. ``seed=None``: Keras' default.
    """
    if seed is None:
        return lambda: "glorot_uniform"
    draws = random.Random(seed)
    return lambda: keras.initializers.GlorotUniform(seed=draws.randint(1, int(1e9)))  # as Keras draws it


def _conv_encoder_trunk(inputs, filters, prefix, kernel):
    """Conv(3x3, relu, same) + MaxPool(2, same) blocks, then Flatten; ``kernel()`` gives each
    convolution's kernel initializer."""
    x = inputs
    for index, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, 3, activation="relu", padding="same", name=f"{prefix}_conv{index}",
                          kernel_initializer=kernel())(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"{prefix}_maxpool{index}")(x)
    return layers.Flatten(name="flatten")(x)


def _encoder(architecture, latent_dim, seed, kernel):
    """The encoder of the report's tables: VAEs give [z_mean, z_log_var, z], ``ae`` gives [code].

    ``kernel()`` gives each weighted layer's kernel initializer, in the order the layers are made.
    """
    inputs = keras.Input(INPUT_SHAPE, name="input_encoder")
    if architecture in ("arch1", "ae"):
        hidden = _conv_encoder_trunk(inputs, (16, 8), "encoder", kernel)  # (B, 392)
    elif architecture == "arch2":
        hidden = layers.Flatten(name="flat_encoder")(inputs)
        hidden = layers.Dense(512, activation="relu", name="encoding_dense",
                              kernel_initializer=kernel())(hidden)  # (B, 512)
    else:
        hidden = _conv_encoder_trunk(inputs, (16, 8, 8), "encoder", kernel)  # (B, 128)
    if architecture == "ae":
        code = layers.Dense(latent_dim, name="code", kernel_initializer=kernel())(hidden)
        return keras.Model(inputs, code, name="encoder")
    z_mean = layers.Dense(latent_dim, name="mean", kernel_initializer=kernel())(hidden)
    z_log_var = layers.Dense(latent_dim, name="log_var", kernel_initializer=kernel())(hidden)
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def _decoder(architecture, latent_dim, kernel):
    """The decoder of the report's tables: (B, latent_dim) -> (B, 28, 28, 1) in (0, 1); ``kernel`` as for
    :func:`_encoder`."""
    inputs = keras.Input((latent_dim,), name="decoder_input")
    if architecture in ("arch1", "ae"):
        x = layers.Dense(512, activation="relu", name="decoding", kernel_initializer=kernel())(inputs)
        x = layers.Dense(256, activation="relu", name="decoding1", kernel_initializer=kernel())(x)
        x = layers.Dense(PIXELS, activation="sigmoid", name="flat_decoded", kernel_initializer=kernel())(x)
        outputs = layers.Reshape(INPUT_SHAPE, name="out_decoded")(x)
    elif architecture == "arch2":
        x = layers.Dense(512, activation="relu", name="decoding_dense", kernel_initializer=kernel())(inputs)
        x = layers.Dense(PIXELS, activation="sigmoid", name="flat_decoder", kernel_initializer=kernel())(x)
        outputs = layers.Reshape(INPUT_SHAPE, name="output_decoder")(x)
    else:
        x = layers.Dense(128, activation="relu", name="decoder_dense1", kernel_initializer=kernel())(inputs)
        x = layers.Reshape((4, 4, 8), name="decoder_reshape")(x)
        x = layers.Conv2D(8, 3, activation="relu", padding="same", name="decoder_conv1",
                          kernel_initializer=kernel())(x)
        x = layers.UpSampling2D(name="decoder_upsampling1")(x)  # (B, 8, 8, 8)
        x = layers.Conv2D(8, 3, activation="relu", padding="same", name="decoder_conv2",
                          kernel_initializer=kernel())(x)
        x = layers.UpSampling2D(name="decoder_upsampling2")(x)  # (B, 16, 16, 8)
        x = layers.Conv2D(16, 3, activation="relu", padding="valid", name="decoder_conv3",
                          kernel_initializer=kernel())(x)  # (B, 14, 14, 16)
        x = layers.UpSampling2D(name="decoder_upsampling3")(x)  # (B, 28, 28, 16)
        outputs = layers.Conv2D(1, 3, activation="sigmoid", padding="same", name="decoder_conv4",
                                kernel_initializer=kernel())(x)
    return keras.Model(inputs, outputs, name="decoder")


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
    separate cores (``fast_path.default_shards``).

    With ``fused`` true (the default), :meth:`moments` and :meth:`decode` run
    the layer pairs that ``fused`` computes faster with the same result,
    and the training loss takes the decoder's logits
    (:func:`reconstruction_loss_from_logits`); set it false to run the
    encoder's and decoder's layers one by one.

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
        self.shards = fast_path.default_shards()
        self.resident_data = None  # a ResidentData while train_model runs: batches arrive as indices
        # Separate streams: two draws from one generator in one graph could race.
        self.noise_seed_generator = keras.random.SeedGenerator(seed)
        self.sampling_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        # The encoder up to (z_mean, z_log_var), sharing its layers: steps draw
        # epsilon once per batch instead of in each shard's Sampling layer.
        moments = encoder.outputs[:2] if self.variational else encoder.outputs[0]
        self._moments = keras.Model(encoder.inputs[0], moments, name="encoder_moments")
        # The same layers run pairwise where a fused computation gives the same
        # function faster (fused.upsample_conv, conv_relu_pool); None: no such plan.
        self.fused = True
        self._encoder_plan = fused.plan_encoder(encoder, encoder.outputs[:2] if self.variational
                                                   else encoder.outputs)
        self._decoder_steps = fused.plan_decoder(decoder)
        # The same decoder up to its sigmoid: the training loss takes the logits.
        self._decoder_logits = None if self._decoder_steps is None else fused.plan_logits(self._decoder_steps)
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
        layers, with pairs fused as in ``fused.conv_relu_pool``."""
        if not self.fused or self._encoder_plan is None:
            return self._moments(inputs, training=training)
        steps, heads = self._encoder_plan
        hidden = fused.run_steps(steps, inputs, training)
        outputs = tuple(head(hidden, training=training) for head in heads)
        return outputs if self.variational else outputs[0]

    def decode(self, z, training=False):
        """``self.decoder(z)`` with each upsampling + convolution pair computed by
        ``fused.upsample_conv``: (B, latent_dim) -> (B, 28, 28, 1) in (0, 1)."""
        if not self.fused or self._decoder_steps is None:
            return self.decoder(z, training=training)
        return fused.run_steps(self._decoder_steps, z, training)

    @property
    def has_logits(self):
        """Whether :meth:`decode_logits` can stop the decoder before its sigmoid: the model
        runs fused and its decoder ends in a sigmoid."""
        return self.fused and self._decoder_logits is not None

    def decode_logits(self, z, training=False):
        """The decoder's output before its sigmoid, (B, latent_dim) -> (B, 28, 28, 1)
        in the compute dtype: ``sigmoid(decode_logits(z))`` is ``decode(z)``.
        ``None`` where :attr:`has_logits` is false."""
        if not self.has_logits:
            return None
        return fused.run_logits(self._decoder_logits, z, training)

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
        logits = self.decode_logits(z, training=training)
        if logits is not None:
            reconstruction, predicted = reconstruction_loss_from_logits(clean, logits)
        else:
            predicted = self.decode(z, training=training)
            reconstruction = reconstruction_loss(clean, predicted)
        kl = kl_divergence(z_mean, z_log_var) if self.variational else ops.zeros_like(reconstruction)
        return reconstruction, kl, pixel_accuracy(clean, predicted)

    def _sharded_losses(self, noisy, clean, training, add_noise=False):
        """:meth:`losses_per_image` over ``self.shards`` slices of the batch, concatenated.

        The random draws (the sampling's epsilon and, with ``add_noise``, the
        noise) are made for the whole batch from stateless seeds taken once
        per step, then sliced: the same numbers for any number of shards, so
        shards change only the order of floating-point sums. With
        ``add_noise``, ``noisy`` is ignored and ``clean`` gets fresh Gaussian
        noise of std ``train_noise_std``, clipped to [0, 1].
        """
        size = ops.shape(clean)[0]
        bounds = [size * index // self.shards for index in range(self.shards + 1)]
        sampling_seed = tf.cast(self.sampling_seed_generator.next(), tf.int64)
        epsilon = tf.random.stateless_normal(tf.stack([size, self.latent_dim]), seed=sampling_seed)
        if add_noise:
            noise_seed = tf.cast(self.noise_seed_generator.next(), tf.int64)
            noise = tf.random.stateless_normal(tf.shape(clean), seed=noise_seed, dtype=clean.dtype)
            noisy = ops.clip(clean + self.train_noise_std * noise, 0.0, 1.0)
        parts = [self.losses_per_image(noisy[low:high], clean[low:high], epsilon[low:high], training=training)
                 for low, high in zip(bounds[:-1], bounds[1:])]
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

    # The random streams' positions go into saved files with the weights, so a run resumed from a
    # checkpoint draws what an uninterrupted run would have; files without them load as before.
    _SEED_STATES = ("noise_seed_state", "sampling_seed_state")

    def _random_streams(self):
        return dict(zip(self._SEED_STATES, (self.noise_seed_generator, self.sampling_seed_generator)))

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for key, generator in self._random_streams().items():
            store[key] = np.array(generator.state.numpy())

    def load_own_variables(self, store):
        super().load_own_variables({key: store[key] for key in store.keys() if key not in self._SEED_STATES})
        for key, generator in self._random_streams().items():
            if key in store.keys():
                generator.state.assign(np.array(store[key]))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


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
            ``fast_path.resolve_precision``); weights are float32 either way.

    Returns:
        :class:`DenoisingVAE` with ``.encoder`` and ``.decoder``; call it on
        (B, 28, 28, 1) images for (B, 28, 28, 1) reconstructions.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Expected name to be one of {ARCHITECTURES}. Received: name={name!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ValueError(f"Expected latent_dim to be an integer >= 1. Received: latent_dim={latent_dim!r}")
    _check_beta(beta)
    policy = fast_path.resolve_precision(precision)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # layers take the policy current when they are made
    try:
        kernel = _kernel_initializers(seed)
        encoder = _encoder(name, int(latent_dim), seed, kernel)
        decoder = _decoder(name, int(latent_dim), kernel)
        model = DenoisingVAE(encoder, decoder, architecture=name, beta=beta, seed=seed, name=name)
    finally:
        keras.config.set_dtype_policy(previous)
    model.build((None, *INPUT_SHAPE))
    return model


def precision_of(model):
    """The model's dtype policy name, e.g. ``"float32"`` or ``"mixed_bfloat16"``."""
    return model.decoder.layers[-1].dtype_policy.name


def with_precision(model, precision):
    """``model`` itself if it computes in ``precision``, else a copy computing in it with the same weights."""
    if precision_of(model) == precision:
        return model
    twin = build_model(model.architecture, model.latent_dim, beta=model.beta, precision=precision)
    twin.set_weights(model.get_weights())
    return twin


def as_float32(model):
    """``model`` itself if it computes in float32, else a float32 copy with the same weights."""
    return with_precision(model, "float32")


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) \
            or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"Expected beta to be a finite number >= 0. Received: beta={beta!r}")


def parameter_counts(model):
    """``{"encoder": n, "decoder": n, "total": n}`` trainable + non-trainable parameters."""
    encoder, decoder = model.encoder.count_params(), model.decoder.count_params()
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def save_model(model, path):
    """Save ``model`` to ``path`` (``.keras``) atomically: a run killed while saving leaves the old file or none."""
    with files.replacing(path, suffix=".keras") as partial:
        model.save(partial)


def load_model(path):
    """Load a saved ``.keras`` model (``safe_mode=True``)."""
    return keras.models.load_model(path, safe_mode=True)
