"""Fused layer pairs: the same functions as the report's layers, computed with less work on a CPU.

What it fuses, and how each is proven equal (``tests/test_fast_path.py``):

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
  (``losses.reconstruction_loss_from_logits``) takes the sigmoid in float32
  with a two-operation gradient, p - x. Tested against the layers and
  ``losses.reconstruction_loss``: bit-equal losses in float32, and in mixed
  bfloat16 closer to the float32 loss than the layers' bfloat16 sigmoid.
* **Adam** (:class:`FusedAdam`): one ``ResourceApplyAdam`` kernel per
  variable, the update of ``keras.optimizers.Adam``. Tested against it step by step.

:func:`plan_encoder` and :func:`plan_decoder` find those pairs in a functional
model's layer chain; :func:`run_steps` runs the plan with the model's own
layers and weights, so nothing is copied and saved files are the plain
models'. ``vae.DenoisingVAE`` uses the plan when there is one and its own
layers otherwise; tests compare both for every architecture.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops


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
    Xeon of ``benchmarks/results/intel-xeon-207/README.md``):

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
    the sigmoid and its gradient together (``losses.reconstruction_loss_from_logits``).
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
