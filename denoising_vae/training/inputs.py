"""What a training step eats: the arrays resident in TensorFlow, shuffled index batches, fresh noise.

* :class:`ResidentData` and :func:`index_dataset`: the training arrays stay
  in TensorFlow and batches arrive as shuffled indices, gathered (and, by
  default, corrupted with fresh noise from a :class:`NoiseRing`) inside the
  compiled step.
* :func:`standard_normal`: Box-Muller over whole tensors from a stateless seed.
"""
from __future__ import annotations

import math

import tensorflow as tf

from ..core.checks import as_model_input, check_noise_std, check_positive_int
from ..core.constants import IMAGE_SIZE


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


def standard_normal(shape, seed):
    """Standard-normal float32 values of ``shape`` (an even number of them), from a
    stateless ``seed`` (two int64s): Box-Muller (Box & Muller 1958) on TensorFlow's
    Philox uniforms, z = sqrt(-2 ln u1) * (cos, sin)(2 pi u2).

    The same method as ``tf.random.stateless_normal``, which computes it one
    value at a time; as whole-tensor ops it costs less (timed in
    ``benchmarks/results/intel-xeon-167/README.md``). u1 lies in [2**-24, 1], so |z| <= 5.77 (TensorFlow's own
    bound is 5.68): a normal passes 5.77 once in 10**8 draws.
    """
    count = math.prod(shape)
    if count % 2:
        raise ValueError(f"Expected shape to hold an even number of values. Received: shape={shape!r}")
    uniforms = tf.random.stateless_uniform((2, count // 2), seed=seed, minval=2.0 ** -24, maxval=1.0)
    radius = tf.sqrt(-2.0 * tf.math.log(uniforms[0]))
    angle = (2 * math.pi) * uniforms[1]
    return tf.reshape(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0), shape)


class NoiseRing:
    """Fresh Gaussian noise for every training image at a fraction of the cost of drawing every value.

    Drawing 784 normal values per image in every step is a sizeable share of
    a training step of these small models (measured in
    ``benchmarks/results/intel-xeon-207/README.md``). The ring instead holds ``rows`` rows of 784 standard-normal
    values (:func:`standard_normal`). Each step first replaces the
    ``ceil(batch_size / reuse)`` oldest rows with new draws, then gives image i
    of the batch ring row r_i,
    cyclically shifted by the step's shift s and multiplied by a random sign.
    The rows of one step are distinct (a random start and an odd stride over
    a power-of-two ring), and s = (97 * step + offset) mod 784 differs for any
    two steps less than 784 apart, which is longer than a row lives.

    What this keeps exactly: every field is 784 independent N(0, 1) values
    (a shift only permutes a row's independent values, and the normal is
    symmetric), and no field is ever repeated: a row's uses differ in their
    shift. What it gives up: a row lives ``rows / ceil(batch_size / reuse)``
    steps and serves about ``reuse`` images in that time, each a different
    permutation of the same 784 values.

    Call :meth:`noisy` inside the compiled training step (``ResidentData(clean,
    noise_std=...)`` does); the state is two variables.

    Args:
        noise_std: std of the noise, >= 0.
        batch_size: the largest batch :meth:`fields` is asked for (>= 1).
        seed: int seeding the ring's first fill and every step's draws.
        reuse: average images per drawn row, 1 to 64 (1: every value new).
        start_step: steps already taken (a resumed run's): the ring starts as
            that many steps left it, so a resumed run draws what an
            uninterrupted one would have.
    """

    PIXELS = IMAGE_SIZE * IMAGE_SIZE
    SHIFT_STRIDE = 97  # coprime with 784 = 2**4 * 7**2

    def __init__(self, noise_std, batch_size, seed=0, reuse=8, start_step=0):
        self.noise_std = check_noise_std(noise_std)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.reuse = check_positive_int("reuse", reuse)
        if self.reuse > 64:  # keeps a batch of distinct rows within a ring whose rows live < 784 steps
            raise ValueError(f"Expected reuse to be at most 64. Received: reuse={reuse!r}")
        self.seed = int(seed)
        self.renewed = -(-self.batch_size // self.reuse)
        # The largest power of two up to 4,096 rows (12.8 MB) whose rows live at
        # most 784 steps, and at least one batch of distinct rows.
        self.rows = max(1 << (self.batch_size - 1).bit_length(),
                        1 << (min(4096, self.PIXELS * self.renewed).bit_length() - 1))
        first_fill = standard_normal((self.rows, self.PIXELS), tf.constant([self.seed, -1], tf.int64))
        self.ring = tf.Variable(first_fill, trainable=False, name="noise_ring")
        start_step = int(start_step)
        # Every row holds its newest draw: replaying the steps that wrote the rows
        # still alive rebuilds the ring exactly.
        for step in range(max(1, start_step - -(-self.rows // self.renewed) + 1), start_step + 1):
            self._renew(tf.constant(step, tf.int64))
        self.steps = tf.Variable(start_step, dtype=tf.int64, trainable=False, name="noise_ring_steps")

    def _renew(self, step):
        """Replace the ring's ``renewed`` oldest rows with the draws of ``step``; return the step's seed."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        positions = (step * self.renewed + tf.range(self.renewed, dtype=tf.int64)) % self.rows
        self.ring.scatter_nd_update(positions[:, None], standard_normal((self.renewed, self.PIXELS), seed))
        return seed

    def _scaled_fields(self, count, scale):
        """:meth:`fields` times ``scale``, the scale folded into the per-image signs."""
        if isinstance(count, int) and count > self.batch_size:
            raise ValueError(f"Expected count to be at most batch_size={self.batch_size}. Received: count={count!r}")
        step = self.steps.assign_add(1)
        seed = self._renew(step)
        # The step's rows: a random start and an odd stride over the power-of-two
        # ring, so distinct. Full-range integers reduced modulo small counts:
        # the bias is below 1e-15.
        count = tf.cast(count, tf.int64)
        picks = tf.random.stateless_uniform(tf.reshape(count + 2, (1,)), seed=seed + [0, 1 << 40],
                                            minval=None, maxval=None, dtype=tf.int64)
        start, stride = picks[0] % self.rows, 2 * (picks[1] % max(1, self.rows // 2)) + 1
        rows = (start + stride * tf.range(count, dtype=tf.int64)) % self.rows
        shift = (self.SHIFT_STRIDE * step + self.seed) % self.PIXELS
        signs = tf.cast(1 - 2 * (picks[2:] % 2), tf.float32)
        # sparse_read gathers the rows only; reading the whole ring could copy it in every step.
        values = tf.roll(self.ring.sparse_read(rows), shift, axis=1) * (scale * signs)[:, None]
        return tf.reshape(values, (-1, IMAGE_SIZE, IMAGE_SIZE, 1))

    def fields(self, count):
        """``count`` noise fields, (count, 28, 28, 1) float32, N(0, 1) per pixel.

        ``count``: an int or int scalar tensor (a batch's size, known only when
        the step runs), at most ``batch_size``; larger would repeat rows.
        """
        return self._scaled_fields(count, 1.0)

    def noisy(self, clean):
        """``clip(clean + noise_std * fields, 0, 1)`` for a batch (B, 28, 28, 1), B <= ``batch_size``."""
        # The std rides on the per-image signs: one pass over the batch fewer.
        noise = self._scaled_fields(tf.shape(clean)[0], self.noise_std)
        return tf.clip_by_value(clean + tf.cast(noise, clean.dtype), 0.0, 1.0)


class ResidentData:
    """Training arrays kept as TensorFlow tensors, gathered by index inside the compiled step.

    Holding the data in TensorFlow and feeding only index batches keeps the
    input pipeline off the cores that train. Attach with
    ``model.resident_data = ResidentData(clean, noise_std=0.5, batch_size=100, seed=0)``
    (fresh noise from a :class:`NoiseRing` in every step),
    ``ResidentData(noisy, clean)`` or ``ResidentData(clean)``.
    """

    def __init__(self, *arrays, noise_std=None, batch_size=100, seed=0, start_step=0):
        self.tensors = tuple(tf.constant(as_model_input(a)) for a in arrays)
        if noise_std is not None and len(arrays) != 1:
            raise ValueError(f"Expected one array (the clean images) with noise_std. Received: {len(arrays)} arrays")
        self.noise = None if noise_std is None else NoiseRing(noise_std, batch_size, seed=seed, start_step=start_step)

    def __len__(self):
        return int(self.tensors[0].shape[0])

    def gather(self, index):
        """The batch at ``index``: clean images, ``(noisy, clean)`` pairs, or with
        ``noise_std`` the clean images and a freshly noised copy as ``(noisy, clean)``."""
        picked = tuple(tf.gather(t, index) for t in self.tensors)
        if self.noise is not None:
            return self.noise.noisy(picked[0]), picked[0]
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
