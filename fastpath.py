"""The fast path: the same functions as the report's layers, computed with less work on a CPU.

What it fuses, and how each is proven equal (``tests/test_fastpath.py``):

* **Upsampling + 3x3 convolution** (arch3's decoder), :func:`upsample_conv`:
  one convolution on the small map per output parity (the sub-pixel view of
  upsampling, Shi et al. 2016). Tested against ``conv(UpSampling2D(x))``,
  outputs and gradients, for ``"same"`` and ``"valid"`` padding.
* **ReLU convolution + max pooling** (the convolutional encoders),
  :func:`conv_relu_pool`: the ReLU runs after the pooling, on the 4x smaller
  map (max commutes with it), and so does the bias in float32; in bfloat16
  the bias stays inside the convolution. Tested against the two layers with gradients.
* **Output sigmoid + cross-entropy**, :func:`plan_logits` / :func:`run_logits`:
  the decoder is run up to its sigmoid's input, and the loss
  (``models.reconstruction_loss_from_logits``) takes the sigmoid in float32
  with a two-operation gradient, p - x. Tested against the layers and
  ``models.reconstruction_loss``: bit-equal losses in float32, and in mixed
  bfloat16 closer to the float32 loss than the layers' bfloat16 sigmoid.
* **Adam** (:class:`FusedAdam`): one ``ResourceApplyAdam`` kernel per
  variable, the update of ``keras.optimizers.Adam``. Tested against it step by step.
* **Batch shards** (:func:`default_shards`): a batch split into slices that
  run on separate cores; the per-image losses are concatenated before the
  mean, so the gradient is the whole batch's. Tested against one shard.
* **Precision** (:func:`resolve_precision`): float32 or mixed bfloat16.

Which precision and how many shards are fastest depends on the chip, so
:func:`choose_path` decides by timing a few dozen training steps of the real
model per candidate (as ``torch.backends.cudnn.benchmark`` does for
convolution algorithms) and caches the decision per machine, TensorFlow
version and model.

:func:`plan_encoder` and :func:`plan_decoder` find those pairs in a functional
model's layer chain; :func:`run_steps` runs the plan with the model's own
layers and weights, so nothing is copied and saved files are the plain
models'. ``models.DenoisingVAE`` uses the plan when there is one and its own
layers otherwise; tests compare both for every architecture.

This module knows nothing of the study's architectures, training or data (it takes only the
cache folder from ``data_prepro``).
Importing it sets, unless already set, ``TF_ENABLE_ONEDNN_OPTS=1``,
``TF_NUM_INTRAOP_THREADS=1`` and ``TF_NUM_INTEROP_THREADS`` = CPU cores (read
by TensorFlow when it starts, so this module is imported before TensorFlow),
and has no other effect.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
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

import atomic_files  # noqa: E402
from data_prepro import caching_disabled, package_cache_dir  # noqa: E402

LOGGER = logging.getLogger("fastpath")

# --------------------------------------------------------------------------
# Fused layer pairs
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


def upsample_conv(x, conv, activate=True):
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
        activate: apply ``conv``'s activation (false: the pre-activation values).

    Returns:
        (B, 2H, 2W, C_out) for ``"same"``, (B, 2H - 2, 2W - 2, C_out) for ``"valid"``,
        in ``conv``'s compute dtype.
    """
    taps = _PHASE_TAPS[conv.padding]
    rows = taps.shape[1]
    channels_in, channels_out = conv.kernel.shape[2], conv.kernel.shape[3]
    # kernel[r, s, c, (a, b, o)] = sum over taps (y, x) mapped to offsets (r, s) for parities (a, b)
    kernel = tf.einsum("ary,bsx,yxio->rsiabo", taps, taps, tf.convert_to_tensor(conv.kernel))
    kernel = tf.reshape(kernel, (rows, rows, channels_in, 4 * channels_out))
    dtype = conv.compute_dtype
    y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(kernel, dtype), 1, conv.padding.upper())
    # Bias and activation act per channel and per value, so they go before the
    # interleaving: channel (a, b, o) takes bias o, hence the bias tiled 4x. A
    # bias_add (not an add) lets TensorFlow fuse it into the convolution.
    if conv.use_bias:
        y = tf.nn.bias_add(y, tf.tile(tf.cast(tf.convert_to_tensor(conv.bias), dtype), [4]))
    if activate:
        y = conv.activation(y)
    # Channel (a * 2 + b) * C_out + o goes to pixel (2i + a, 2j + b), as depth_to_space
    # does; a reshape and transpose is faster here, its gradient most of all.
    shape = tf.shape(y)
    y = tf.reshape(y, (shape[0], shape[1], shape[2], 2, 2, channels_out))
    return tf.reshape(tf.transpose(y, (0, 1, 3, 2, 4, 5)), (shape[0], 2 * shape[1], 2 * shape[2], channels_out))


def _is_conv_relu_pool(conv, pooling):
    """Whether ``pooling(conv(x))`` is a ReLU convolution then max pooling."""
    return (isinstance(conv, layers.Conv2D) and isinstance(pooling, layers.MaxPooling2D)
            and conv.activation is keras.activations.relu)


def conv_relu_pool(x, conv, pooling):
    """``pooling(conv(x))`` for a ReLU convolution and max pooling, the ReLU applied after the pooling.

    Max pooling commutes with ReLU and with adding a per-channel bias (both
    non-decreasing, and so is rounding; padded cells never win a max), so
    outputs and gradients are the same while the ReLU and its gradient run
    on the 4x smaller pooled map. Where the bias goes depends on the compute
    dtype, by measurement (epochs of arch1 and arch3 timed in turn on the
    Xeon of ``benchmarks/results/intel-xeon-207``, README "Speed"):

    * float32: after the pooling too, a cheap add on the small map.
    * bfloat16: inside the convolution, as a ``bias_add`` that oneDNN fuses
      into it (and its gradient into the filter's backward pass). TensorFlow's
      bfloat16 element-wise operations run at a half to a quarter of the
      float32 ones' speed on these CPUs, so a separate add, even on the small
      map, cost more than the fused one (about 250 us for a (50, 14, 14, 16)
      map on one core).

    Args:
        x: (B, H, W, C_in) tensor.
        conv: a built ``Conv2D`` with ``activation="relu"``.
        pooling: a ``MaxPooling2D``.

    Returns:
        the pooled map, in ``conv``'s compute dtype.
    """
    dtype = conv.compute_dtype
    y = conv.convolution_op(tf.cast(x, dtype), tf.cast(tf.convert_to_tensor(conv.kernel), dtype))
    bias = tf.cast(tf.convert_to_tensor(conv.bias), dtype) if conv.use_bias else None
    fuse_bias = bias is not None and dtype == "bfloat16"
    if fuse_bias:
        y = tf.nn.bias_add(y, bias)
    y = pooling(y)
    if bias is not None and not fuse_bias:
        y = y + bias
    return tf.nn.relu(y)


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


def run_steps(steps, x, training=False):
    """Run a plan of :func:`plan_encoder` / :func:`plan_decoder` on ``x`` with the layers' own weights."""
    for kind, pair in steps:
        if kind == "upsample_conv":
            x = upsample_conv(x, pair[1])
        elif kind == "conv_relu_pool":
            x = conv_relu_pool(x, *pair)
        else:
            x = pair[0](x, training=training)
    return x


def plan_logits(steps):
    """``(steps, last, after)`` for a decoder plan whose output is a sigmoid: the
    steps before the last weighted layer, that step with its activation left
    out, and the reshapes after it; ``None`` for any other plan.

    The sigmoid's input (the logits) then reaches the loss, which can take
    the sigmoid and its gradient together (``models.reconstruction_loss_from_logits``).
    """
    for index in range(len(steps) - 1, -1, -1):
        kind, pair = steps[index]
        if not all(isinstance(layer, layers.Reshape) for _, after in steps[index + 1:] for layer in after):
            return None
        layer = pair[-1]
        if isinstance(layer, layers.Reshape):
            continue
        supported = kind == "upsample_conv" or (kind == "layer" and (
            isinstance(layer, layers.Dense) or (isinstance(layer, layers.Conv2D)
                                                and layer.data_format == "channels_last")))
        if not supported or layer.activation is not keras.activations.sigmoid:
            return None
        return steps[:index], steps[index], steps[index + 1:]
    return None


def run_logits(plan, x, training=False):
    """The decoder's output before its sigmoid, for a plan of :func:`plan_logits`:
    ``sigmoid(run_logits(plan, x))`` equals ``run_steps(steps, x)`` (the sigmoid in the
    compute dtype there). Returns the pre-activation values in the layer's compute dtype."""
    before, (kind, pair), after = plan
    x = run_steps(before, x, training)
    layer = pair[-1]
    dtype = layer.compute_dtype
    if kind == "upsample_conv":
        x = upsample_conv(x, layer, activate=False)
    else:
        kernel = tf.cast(tf.convert_to_tensor(layer.kernel), dtype)
        x = tf.cast(x, dtype)
        # What the layer's call computes before its activation (Keras 3's Dense and Conv2D).
        x = layer.convolution_op(x, kernel) if isinstance(layer, layers.Conv2D) else ops.matmul(x, kernel)
        if layer.use_bias:
            # bias_add, not an add: TensorFlow fuses MatMul + BiasAdd into one oneDNN kernel.
            x = tf.nn.bias_add(x, tf.cast(tf.convert_to_tensor(layer.bias), dtype))
    return run_steps(after, x, training)


def plan_encoder(encoder, outputs):
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


def plan_decoder(decoder):
    """The fused steps from the decoder's input to its output; ``None`` if it is not a plain chain."""
    chain = _layer_chain(decoder.outputs[0], decoder.inputs[0])
    return None if chain is None else _fused_steps(chain)


# --------------------------------------------------------------------------
# The optimizer, batch shards and precision
# --------------------------------------------------------------------------


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
        self._apply_adam(gradient, variable, self._step_scalars(variable.dtype, learning_rate))

    def _backend_update_step(self, gradients, trainable_variables, learning_rate):
        if tf.distribute.has_strategy() or self.amsgrad:
            return super()._backend_update_step(gradients, trainable_variables, learning_rate)
        # Without a distribution strategy Keras' route to update_step (a merge
        # call, then each variable through an AutoGraph-wrapped function) gives
        # the same kernels, and took a third of the time tracing a training
        # step of arch3 took. The step's scalars are made once per dtype.
        scalars = {}
        for gradient, variable in zip(gradients, trainable_variables):
            variable = variable.value if isinstance(variable, keras.Variable) else variable
            if isinstance(gradient, tf.IndexedSlices):
                super().update_step(gradient, variable, learning_rate)
                continue
            if variable.dtype not in scalars:
                scalars[variable.dtype] = self._step_scalars(variable.dtype, learning_rate)
            self._apply_adam(gradient, variable, scalars[variable.dtype])

    def _step_scalars(self, dtype, learning_rate):
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return {"beta1_power": ops.power(beta_1, step), "beta2_power": ops.power(beta_2, step),
                "lr": ops.cast(learning_rate, dtype), "beta1": beta_1, "beta2": beta_2,
                "epsilon": ops.cast(self.epsilon, dtype)}

    def _apply_adam(self, gradient, variable, scalars):
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=self._momentums[index].handle,
                                     v=self._velocities[index].handle, grad=ops.cast(gradient, variable.dtype),
                                     **scalars)


def default_shards():
    """Slices per batch: one per core this process may use (at most 4) on a CPU, 1 where a GPU is visible.

    Batch-100 steps of these small models are made of ops too small to keep
    several cores busy each; independent slices on single-threaded ops do
    (see ``TF_NUM_INTRAOP_THREADS`` at the top of this module). The cores are
    ``TF_NUM_INTEROP_THREADS``, which a sweep worker sets to its share.
    """
    if tf.config.list_physical_devices("GPU"):
        return 1
    return max(1, min(4, _cores()))


def _cores():
    try:
        return max(1, int(os.environ.get("TF_NUM_INTEROP_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def resolve_precision(precision="auto"):
    """The dtype policy to build a model with: ``"float32"`` or ``"mixed_bfloat16"`` as given;
    ``"auto"`` -> ``"float32"`` (``choose_path`` decides ``auto`` by measuring first).

    Mixed bfloat16 computes layers in bfloat16 and keeps weights, losses and
    optimizer state in float32 (Kalamkar et al. 2019).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Expected precision to be one of {PRECISIONS}. Received: precision={precision!r}")
    return "float32" if precision == "auto" else precision


# --------------------------------------------------------------------------
# The measured choice of precision and shards
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PathChoice:
    """How a model trains here: its precision and batch shards, and why.

    Attributes:
        precision: ``"float32"`` or ``"mixed_bfloat16"``.
        shards: batch slices per step (>= 1).
        source: ``"measured"`` (timed now), ``"cached"`` (timed before on
            this machine and TensorFlow) or ``"given"`` (nothing to choose).
        step_ms: milliseconds per training step of each candidate timed,
            keyed ``"precision/shards"``; empty for ``"given"``.
        decide_seconds: time spent deciding in this process.
    """

    precision: str
    shards: int
    source: str
    step_ms: dict = dataclasses.field(default_factory=dict)
    decide_seconds: float = 0.0

    def describe(self):
        """One line for the log, e.g. ``float32, 2 shards (measured: float32/2 4.1 ms, ...)``."""
        timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.step_ms.items())
        return f"{self.precision}, {self.shards} shard{'s' * (self.shards != 1)} ({self.source}" \
               f"{': ' + timings if timings else ''})"


def candidate_paths(precision="auto", shards=None):
    """The ``(precision, shards)`` pairs worth timing for these settings.

    ``precision="auto"`` times float32 and, where the hardware computes
    bfloat16 natively (a GPU, or a CPU with AVX512-BF16 or AMX; elsewhere it
    is emulated and slow), mixed bfloat16. ``shards=None`` times one shard
    and one per core. Explicit values are never overridden.
    """
    resolve_precision(precision)  # validates
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1):
        raise ValueError(f"Expected shards to be an integer >= 1 or None. Received: shards={shards!r}")
    if precision != "auto":
        precisions = [precision]
    else:
        precisions = ["float32"] + ["mixed_bfloat16"] * _native_bfloat16()
    counts = [int(shards)] if shards is not None else sorted({1, default_shards()})
    return [(p, n) for p in precisions for n in counts]


def _native_bfloat16():
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_name(cpuinfo):
    """"<model name> (family F, model M, stepping S)" of the first processor in the text of
    /proc/cpuinfo, or ``None`` where it names no model. Virtual machines name different CPUs
    alike ("Intel(R) Xeon(R) Processor"): the numbers tell them apart."""
    first = cpuinfo.split("\n\n")[0]
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    if "model name" not in info:
        return None
    return (f"{info['model name']} (family {info.get('cpu family')}, model {info.get('model')}, "
            f"stepping {info.get('stepping')})")


def machine_key():
    """What a timing depends on besides the model: CPU model, cores in use, GPUs, TensorFlow."""
    try:
        cpu = cpu_name(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = None
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": _cores(), "gpus": gpus,
            "tensorflow": tf.__version__}


TIMING_BLOCKS = 5
# A precision more than this much slower than the other at one shard is not
# timed at more shards. Of the 45 decisions in benchmarks/results (two Xeons),
# 17 had a precision that much slower; none of those won at two shards (its
# sharding gain was at most 1.23x the other precision's best).
PRECISION_MARGIN = 1.3


def choose_path(model_key, prepare_timer, precision="auto", shards=None, cache_file=None, blocks=TIMING_BLOCKS):
    """Choose precision and shards by timing each candidate, or from an earlier timing.

    Args:
        model_key: dict naming the model (architecture, latent size, batch
            size...), part of the cache key with :func:`machine_key`.
        prepare_timer: ``prepare_timer(precision, shards)`` -> ``timer``, where
            ``timer()`` runs a short block of training steps of the real model
            and returns seconds per step (``training.training_step_timer``).
        precision, shards: as :func:`candidate_paths`; explicit values are kept.
        cache_file: JSON file of earlier decisions (default
            ``data_prepro.package_cache_dir() / "fast_path.json"``); ``False`` for none, as
            ``DENOISING_VAE_NO_CACHE=1`` makes the default.
        blocks: timed blocks per candidate kept to the end (``blocks // 2`` in
            the first round, at least one, and the rest in the second).

    Preparing a candidate (tracing its step) costs far more than timing it,
    so this goes in two rounds. First every precision at its fewest shards:
    prepared, then ``blocks // 2`` blocks in turn (A B A B). A precision
    more than ``PRECISION_MARGIN`` times slower than the fastest is dropped.
    Then the kept precisions' other shard counts are prepared, and every
    kept candidate runs the remaining blocks in turn (A C D A C D ...). Each
    keeps its fastest block of that round, and the fastest candidate wins:
    a slow spell of the machine costs every candidate alike, or only one
    block of one.

    Returns:
        :class:`PathChoice`, the fastest candidate timed; its ``step_ms``
        names the candidates timed (their fastest block of the last round
        they ran in). A decision cached for the
        same model on the same machine and TensorFlow is reused; a cache
        made elsewhere is ignored, a damaged one rebuilt, an unwritable one
        skipped with a warning.
    """
    candidates = candidate_paths(precision, shards)
    if len(candidates) == 1:
        return PathChoice(*candidates[0], source="given")
    key = json.dumps({**machine_key(), **model_key, "candidates": candidates}, sort_keys=True)
    if cache_file is None and caching_disabled():
        cache_file = False
    path = None if cache_file is False else Path(cache_file) if cache_file else package_cache_dir() / "fast_path.json"
    entries = _read_cache(path)
    if key in entries:
        entry = entries[key]
        return PathChoice(entry["precision"], int(entry["shards"]), "cached", dict(entry["step_ms"]))
    started = time.perf_counter()
    fewest = min(count for _, count in candidates)
    first_round = [(p, n) for p, n in candidates if n == fewest]
    timers = {candidate: prepare_timer(*candidate) for candidate in first_round}

    def run_blocks(count, timed):
        seconds = {candidate: [] for candidate in timed}
        for _ in range(count):
            for candidate in timed:
                seconds[candidate].append(float(timers[candidate]()))
        return {candidate: min(values) for candidate, values in seconds.items()}

    first = run_blocks(max(1, blocks // 2), first_round)
    kept = {p for (p, _), best in first.items() if best <= PRECISION_MARGIN * min(first.values())}
    second_round = [(p, n) for p, n in candidates if p in kept]
    for candidate in second_round:
        if candidate not in timers:
            timers[candidate] = prepare_timer(*candidate)
    # The choice compares second-round blocks only: the same number for every
    # candidate, taken in turn. A first-round block from a quieter moment
    # would otherwise favour the candidates timed in both rounds.
    second = run_blocks(max(1, blocks - blocks // 2), second_round)
    fastest = {**first, **second}
    step_ms = {f"{p}/{n}": 1000 * fastest[(p, n)] for p, n in candidates if (p, n) in fastest}
    best = min(second, key=second.get)
    choice = PathChoice(*best, source="measured", step_ms={k: round(v, 3) for k, v in step_ms.items()},
                        decide_seconds=round(time.perf_counter() - started, 2))
    if path is not None:
        entries[key] = {"precision": choice.precision, "shards": choice.shards, "step_ms": choice.step_ms}
        _write_cache(path, entries)
    return choice


def _read_cache(path):
    if path is None or not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries is not an object")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as error:
        LOGGER.warning("fast-path cache %s is unreadable (%s); measuring again", path, error)
        return {}


def _write_cache(path, entries):
    try:
        atomic_files.write_json(path, {"entries": entries}, indent=1)
    except OSError as error:
        LOGGER.warning("could not write the fast-path cache %s (%s); the next run measures again", path, error)
