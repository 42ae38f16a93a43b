"""fastpath: each fused computation equals the plain layers, with gradients; FusedAdam, shards, precision."""
import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from denoising_vae.core import constants
from denoising_vae.models import fast_path
from denoising_vae.models import fused as fused_layers, losses, vae
from denoising_vae.training import step_timing
from conftest import weights_of


@pytest.mark.parametrize("padding, size", [("same", 14), ("valid", 8), ("same", 4)])
def test_upsample_conv_equals_upsampling_then_conv(padding, size):
    """The convolution on the small map gives the layers' outputs and gradients."""
    rng = np.random.default_rng(size)
    upsampling = keras.layers.UpSampling2D()
    conv = keras.layers.Conv2D(5, 3, padding=padding, activation="sigmoid")
    x = tf.constant(rng.normal(size=(3, size, size, 4)).astype(np.float32))
    conv.build((None, 2 * size, 2 * size, 4))
    conv.kernel.assign(rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
    conv.bias.assign(rng.normal(size=(5,)).astype(np.float32))
    weights = [conv.kernel.value, conv.bias.value]
    outputs, gradients = [], []
    for compute in (lambda: conv(upsampling(x)), lambda: fused_layers.upsample_conv(x, conv)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = compute()
            loss = tf.reduce_sum(y * np.arange(y.shape[-1], dtype=np.float32))
        outputs.append(np.asarray(y))
        gradients.append([np.asarray(g) for g in tape.gradient(loss, [x, *weights])])
    expected_size = 2 * size if padding == "same" else 2 * size - 2
    assert outputs[1].shape == outputs[0].shape == (3, expected_size, expected_size, 5)
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    for fused, plain in zip(gradients[1], gradients[0]):
        np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-4)


def fused_pairs(steps):
    return [(kind, [layer.name for layer in pair]) for kind, pair in steps if kind != "layer"]


def test_arch3_runs_its_layer_pairs_fused_and_matches_the_models():
    model = vae.build_model("arch3", seed=0)
    assert fused_pairs(model._decoder_steps) == [
        ("upsample_conv", ["decoder_upsampling1", "decoder_conv2"]),
        ("upsample_conv", ["decoder_upsampling2", "decoder_conv3"]),
        ("upsample_conv", ["decoder_upsampling3", "decoder_conv4"])]
    steps, heads = model._encoder_plan
    assert fused_pairs(steps) == [("conv_relu_pool", [f"encoder_conv{i}", f"encoder_maxpool{i}"]) for i in (1, 2, 3)]
    assert [head.name for head in heads] == ["mean", "log_var"]
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.decode(z)), np.asarray(model.decoder(z)), atol=1e-6)
    x = rng.random((6, 28, 28, 1)).astype(np.float32)
    fused = model.moments(x)
    model.fused = False  # the same model, its layers one by one
    for fused_output, plain in zip(fused, model.moments(x)):
        np.testing.assert_allclose(np.asarray(fused_output), np.asarray(plain), atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.decode(z)), np.asarray(model.decoder(z)), atol=0)


def test_a_loaded_model_keeps_its_fused_pairs(tmp_path):
    model = vae.build_model("arch3", seed=0)
    model.save(tmp_path / "arch3.keras")
    loaded = vae.load_model(tmp_path / "arch3.keras")
    assert fused_pairs(loaded._decoder_steps) == fused_pairs(model._decoder_steps)
    assert fused_pairs(loaded._encoder_plan[0]) == fused_pairs(model._encoder_plan[0])


@pytest.mark.parametrize("name, encoder_pairs", [("arch1", 2), ("ae", 2), ("arch2", 0)])
def test_other_models_fuse_only_their_conv_pool_pairs(name, encoder_pairs):
    model = vae.build_model(name, seed=0)
    assert fused_pairs(model._decoder_steps) == []
    steps, _ = model._encoder_plan
    assert [kind for kind, _ in fused_pairs(steps)] == ["conv_relu_pool"] * encoder_pairs
    x = np.random.default_rng(1).random((5, 28, 28, 1)).astype(np.float32)
    fused, plain = model.moments(x), model._moments(x)
    for a, b in zip(*(([f] if name == "ae" else f) for f in (fused, plain))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_conv_relu_pool_equals_the_layers_with_gradients(policy, tolerance):
    # float32 adds the bias after the pooling, bfloat16 inside the convolution: both are checked.
    rng = np.random.default_rng(3)
    conv = keras.layers.Conv2D(6, 3, padding="same", activation="relu", dtype=policy)
    pooling = keras.layers.MaxPooling2D(2, padding="same", dtype=policy)
    x = tf.constant(rng.normal(size=(4, 7, 7, 3)).astype(np.float32))  # odd size: a padded pool
    conv.build((None, 7, 7, 3))
    conv.bias.assign(rng.normal(size=(6,)).astype(np.float32))  # moved by the fused path: not zero here
    results = []
    for compute in (lambda: pooling(conv(x)), lambda: fused_layers.conv_relu_pool(x, conv, pooling)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = compute()
            loss = tf.reduce_sum(y * np.arange(1, 7, dtype=np.float32))
        results.append([np.asarray(y)] + [np.asarray(g) for g in tape.gradient(loss, [x, conv.kernel.value,
                                                                                       conv.bias.value])])
    assert results[1][0].shape == (4, 4, 4, 6)
    for fused, plain in zip(*results):
        fused, plain = fused.astype(np.float32), plain.astype(np.float32)
        np.testing.assert_allclose(fused, plain, rtol=tolerance, atol=tolerance * np.abs(plain).max())


def test_fused_adam_follows_keras_adam():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(30, 7)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
    finals = []
    for optimizer in (keras.optimizers.Adam(0.01), fused_layers.FusedAdam(0.01)):
        variables = [keras.Variable(value) for value in start]
        step = tf.function(lambda grads: optimizer.apply(grads, variables))
        for index in range(40):
            step([np.random.default_rng(index).normal(size=v.shape).astype(np.float32) for v in start])
        finals.append([np.asarray(v) for v in variables])
    for plain, fused, first in zip(*finals, start):
        assert np.abs(plain - first).max() > 0.1  # the variables moved
        np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_fused_adam_round_trips_through_a_saved_model(letters, tmp_path):
    model = vae.build_model("arch2", seed=0)
    model.compile(optimizer=fused_layers.FusedAdam(2e-3))
    model.fit(letters[0][:200], letters[0][:200], batch_size=100, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = vae.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is fused_layers.FusedAdam
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(2e-3)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))


def test_resolve_precision():
    assert fast_path.resolve_precision("float32") == "float32"
    assert fast_path.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert fast_path.resolve_precision("auto") == "float32"  # auto is decided by choose_path
    with pytest.raises(ValueError, match=r"Expected precision to be one of .* Received: precision='fp8'"):
        vae.build_model("arch1", precision="fp8")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ae", "arch3", "arch1"])
def test_shards_give_the_same_step_as_the_whole_batch(letters, name):
    # A VAE's sampling epsilon is drawn for the whole batch and sliced (the AE draws nothing), so
    # shards change only the order of floating-point sums.
    x, _ = letters
    results = []
    for shards in (1, 2, 3, 4):
        model = vae.build_model(name, seed=3)
        model.shards = shards
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        logs = model.train_on_batch(x[:100], x[:100], return_dict=True)
        results.append((logs, weights_of(model)))
    for logs, weights in results[1:]:
        assert logs["loss"] == pytest.approx(results[0][0]["loss"], rel=1e-5)
        for a, b in zip(weights, results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def loss_and_gradients(model, noisy, clean, epsilon, fused):
    """The training loss and its gradients, compiled as in training (eager bfloat16
    convolution gradients differ), with the fast path or the layers one by one."""
    model.fused = fused

    @tf.function
    def compute():
        with tf.GradientTape() as tape:
            reconstruction, kl, _ = model.losses_per_image(noisy, clean, epsilon, training=True)
            loss = ops.mean(reconstruction) + ops.mean(kl)
        return loss, tape.gradient(loss, model.trainable_weights)

    loss, gradients = compute()
    return float(loss), [np.asarray(g) for g in gradients]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", constants.ARCHITECTURES)
def test_training_loss_and_gradients_equal_the_plain_layers(name, precision, letters):
    """The fused computations of the training step change nothing but speed (and bfloat16 rounding).

    In bfloat16 the fast path takes the output sigmoid in float32, so both
    are compared with the float32 model: the fast path's loss must be as close
    to it as 5e-5 of it (the plain layers' bfloat16 sigmoid is up to 0.4 nats,
    7e-4, off for arch3), and each gradient no further from it than the plain layers'
    bfloat16 gradient is (relative norms, 10 % + 0.005 of slack)."""
    x, _ = letters
    clean = x[:40]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.5, clean.shape), 0, 1).astype(np.float32)
    epsilon = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    model = vae.build_model(name, seed=0, precision=precision)
    plain_loss, plain_gradients = loss_and_gradients(model, noisy, clean, epsilon, fused=False)
    fused_loss, fused_gradients = loss_and_gradients(model, noisy, clean, epsilon, fused=True)
    assert len(fused_gradients) == len(plain_gradients) == len(model.trainable_weights)
    if precision == "float32":
        exact_loss, exact_gradients = plain_loss, plain_gradients
        for fused, plain in zip(fused_gradients, plain_gradients):
            np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
    else:
        exact_loss, exact_gradients = loss_and_gradients(vae.build_model(name, seed=0), noisy, clean, epsilon,
                                                         fused=False)
        for fused, plain, exact in zip(fused_gradients, plain_gradients, exact_gradients):
            def error(gradient):
                return np.linalg.norm(gradient - exact) / np.linalg.norm(exact)
            assert error(fused) <= 1.1 * error(plain) + 0.005
    assert fused_loss == pytest.approx(exact_loss, rel=1e-6 if precision == "float32" else 5e-5)


def test_sharded_vae_losses_cover_every_image_once(letters):
    x, _ = letters
    model = vae.build_model("arch1", seed=0)
    whole = losses.kl_divergence(*model.encode(x[:100])[:2])
    for shards in (1, 2, 3):
        model.shards = shards
        reconstruction, kl, accuracy = model._sharded_losses(x[:100], x[:100], training=False)
        assert tuple(reconstruction.shape) == (100,) and tuple(accuracy.shape) == (100,)
        np.testing.assert_allclose(np.asarray(kl), np.asarray(whole), rtol=1e-5)



# ---------------------------------------------------------------- the measured choice

class StandInTimer:
    """Seconds per step from a table instead of a clock; records what was timed."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, precision, shards):
        self.calls.append((precision, shards))
        return lambda: self.table[(precision, shards)]


TABLE = {("float32", 1): 0.010, ("float32", 2): 0.006, ("mixed_bfloat16", 1): 0.009, ("mixed_bfloat16", 2): 0.008}


@pytest.fixture
def two_cores_with_bfloat16(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "2")
    monkeypatch.setattr(fast_path, "_native_bfloat16", lambda: True)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])


def test_choose_path_times_every_candidate_and_takes_the_fastest(tmp_path, two_cores_with_bfloat16):
    timer = StandInTimer(TABLE)
    choice = fast_path.choose_path({"architecture": "arch1"}, timer, cache_file=tmp_path / "c.json")
    assert sorted(timer.calls) == sorted(TABLE)
    assert (choice.precision, choice.shards, choice.source) == ("float32", 2, "measured")
    assert choice.step_ms == {"float32/1": 10.0, "float32/2": 6.0, "mixed_bfloat16/1": 9.0, "mixed_bfloat16/2": 8.0}
    assert "float32, 2 shards (measured: float32/1 10.00 ms" in choice.describe()


def test_choose_path_reuses_the_cached_decision(tmp_path, two_cores_with_bfloat16):
    fast_path.choose_path({"architecture": "arch1"}, StandInTimer(TABLE), cache_file=tmp_path / "c.json")
    timer = StandInTimer({key: 1.0 for key in TABLE})  # would choose otherwise if it timed
    choice = fast_path.choose_path({"architecture": "arch1"}, timer, cache_file=tmp_path / "c.json")
    assert timer.calls == [] and (choice.precision, choice.shards, choice.source) == ("float32", 2, "cached")
    # Another architecture is another decision.
    other = fast_path.choose_path({"architecture": "arch3"}, timer, cache_file=tmp_path / "c.json")
    assert len(timer.calls) == 4 and other.source == "measured"


@pytest.mark.parametrize("field, value", [("tensorflow", "2.0.0"), ("cpu", "Another CPU"), ("cores", 16)])
def test_a_decision_from_another_machine_or_tensorflow_is_ignored(tmp_path, two_cores_with_bfloat16, monkeypatch,
                                                                  field, value):
    fast_path.choose_path({"architecture": "arch1"}, StandInTimer(TABLE), cache_file=tmp_path / "c.json")
    real_key = fast_path.machine_key
    monkeypatch.setattr(fast_path, "machine_key", lambda: {**real_key(), field: value})
    timer = StandInTimer(TABLE)
    choice = fast_path.choose_path({"architecture": "arch1"}, timer, cache_file=tmp_path / "c.json")
    assert len(timer.calls) == 4 and choice.source == "measured"


def test_two_cpus_of_one_name_are_two_machines():
    # What two KVM guests on different Xeons showed in /proc/cpuinfo (two processors each).
    def cpuinfo(model):
        processor = (f"processor\t: {{}}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {model}\n"
                     "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 1\nflags\t\t: fpu avx512f\n")
        return "\n".join(processor.format(index) for index in range(2))
    assert fast_path.cpu_name(cpuinfo(207)) == "Intel(R) Xeon(R) Processor (family 6, model 207, stepping 1)"
    assert fast_path.cpu_name(cpuinfo(167)) == "Intel(R) Xeon(R) Processor (family 6, model 167, stepping 1)"
    assert fast_path.cpu_name("processor\t: 0\nBogoMIPS\t: 48.00\n") is None  # no model name (some ARM kernels)


def test_a_damaged_cache_is_rebuilt(tmp_path, two_cores_with_bfloat16, caplog):
    cache = tmp_path / "c.json"
    cache.write_text('{"entries": {"trunc')
    choice = fast_path.choose_path({"architecture": "arch1"}, StandInTimer(TABLE), cache_file=cache)
    assert choice.source == "measured"
    assert "fast-path cache" in caplog.text and "unreadable" in caplog.text
    assert len(json.loads(cache.read_text())["entries"]) == 1  # rewritten whole


def test_an_unwritable_cache_folder_warns_and_still_decides(tmp_path, two_cores_with_bfloat16, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    choice = fast_path.choose_path({"architecture": "arch1"}, StandInTimer(TABLE), cache_file=blocker / "c.json")
    assert choice.precision == "float32" and "could not write the fast-path cache" in caplog.text


def test_explicit_precision_is_never_overridden(tmp_path, two_cores_with_bfloat16):
    timer = StandInTimer(TABLE)
    choice = fast_path.choose_path({"architecture": "arch1"}, timer, precision="mixed_bfloat16",
                                  cache_file=tmp_path / "c.json")
    assert {precision for precision, _ in timer.calls} == {"mixed_bfloat16"}
    assert (choice.precision, choice.shards) == ("mixed_bfloat16", 2)
    # With the shards given too there is nothing to time.
    given = fast_path.choose_path({"architecture": "arch1"}, timer, precision="float32", shards=1)
    assert (given.precision, given.shards, given.source, given.step_ms) == ("float32", 1, "given", {})


def test_candidates_follow_the_hardware(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    monkeypatch.setattr(fast_path, "_native_bfloat16", lambda: False)
    assert fast_path.candidate_paths("auto") == [("float32", 1)]  # emulated bfloat16 is not worth timing
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "8")
    monkeypatch.setattr(fast_path, "_native_bfloat16", lambda: True)
    assert fast_path.candidate_paths("auto") == [("float32", 1), ("float32", 4), ("mixed_bfloat16", 1),
                                                ("mixed_bfloat16", 4)]
    with pytest.raises(ValueError, match=r"Expected shards to be an integer >= 1 or None. Received: shards=0"):
        fast_path.candidate_paths("auto", shards=0)


def test_candidates_are_timed_in_turn_and_keep_their_fastest_block(tmp_path, two_cores_with_bfloat16):
    order = []
    spells = iter([5.0] * 2 + [1.0] * 14)  # a slow spell in the first round hits both alike

    def prepare(precision, shards):
        def timer():
            order.append((precision, shards))
            return TABLE[(precision, shards)] * next(spells)
        return timer

    choice = fast_path.choose_path({"architecture": "arch1"}, prepare, cache_file=tmp_path / "c.json", blocks=5)
    candidates = fast_path.candidate_paths("auto")
    one_shard = [("float32", 1), ("mixed_bfloat16", 1)]
    assert order == one_shard * 2 + candidates * 3
    assert choice.step_ms == {"float32/1": 10.0, "float32/2": 6.0, "mixed_bfloat16/1": 9.0, "mixed_bfloat16/2": 8.0}


def test_the_choice_compares_blocks_of_one_round(tmp_path, two_cores_with_bfloat16):
    # A quiet first round, then a slow spell over the whole second: one shard's
    # first-round block must not beat two shards' second-round ones.
    rounds = {("float32", 1): [0.0082, 0.0085, 0.0100, 0.0102, 0.0101], ("mixed_bfloat16", 1): [0.0053, 0.0055, 0.0066,
              0.0069, 0.0067], ("mixed_bfloat16", 2): [0.0056, 0.0057, 0.0058]}

    def prepare(precision, shards):
        blocks = iter(rounds[(precision, shards)])
        return lambda: next(blocks)

    choice = fast_path.choose_path({"architecture": "arch1"}, prepare, cache_file=tmp_path / "c.json", blocks=5)
    assert (choice.precision, choice.shards) == ("mixed_bfloat16", 2)
    assert choice.step_ms == {"float32/1": 8.2, "mixed_bfloat16/1": 6.6, "mixed_bfloat16/2": 5.6}


def test_a_precision_much_slower_at_one_shard_is_not_traced_at_more(tmp_path, two_cores_with_bfloat16):
    # arch3 on the model-167 Xeon (ms per step): float32 is 1.6x slower at one shard.
    table = {("float32", 1): 0.0119, ("float32", 2): 0.0093, ("mixed_bfloat16", 1): 0.0075,
             ("mixed_bfloat16", 2): 0.0062}
    timer = StandInTimer(table)
    choice = fast_path.choose_path({"architecture": "arch3"}, timer, cache_file=tmp_path / "c.json")
    assert timer.calls == [("float32", 1), ("mixed_bfloat16", 1), ("mixed_bfloat16", 2)]
    assert (choice.precision, choice.shards) == ("mixed_bfloat16", 2)
    assert choice.step_ms == {"float32/1": 11.9, "mixed_bfloat16/1": 7.5, "mixed_bfloat16/2": 6.2}
    # Within the margin, both precisions are timed at every shard count.
    close = {**table, ("float32", 1): 0.0097}
    assert len(fast_path.choose_path({"architecture": "arch3"}, StandInTimer(close), cache_file=False).step_ms) == 4


def test_training_step_timer_times_the_real_model():
    timer = step_timing.training_step_timer("arch2", precision="float32", shards=2, steps=3)
    assert all(0 < timer() < 5 for _ in range(2))


def test_choose_fast_path_times_the_real_model_then_reads_the_cache(tmp_path):
    cache_file = tmp_path / "fast_path.json"
    measured = step_timing.choose_fast_path("ae", cache_file=cache_file)
    candidates = fast_path.candidate_paths("auto")
    timed = set(measured.step_ms)
    assert measured.source == "measured" and timed <= {f"{p}/{n}" for p, n in candidates}
    assert {f"{p}/{n}" for p, n in candidates if n == 1} <= timed  # every precision at one shard
    assert all(0 < ms < 5000 for ms in measured.step_ms.values()) and measured.decide_seconds > 0
    # The winner is the fastest of the last round: a precision dropped after the first round keeps that
    # round's time, which a slower spell of the machine in the second round can undercut.
    fewest = min(n for _, n in candidates)
    kept = {p for p, n in candidates if n != fewest and f"{p}/{n}" in timed} | {measured.precision}
    last_round = [ms for name, ms in measured.step_ms.items() if name.split("/")[0] in kept]
    assert measured.step_ms[f"{measured.precision}/{measured.shards}"] == min(last_round)
    again = step_timing.choose_fast_path("ae", cache_file=cache_file)
    assert (again.source, again.precision, again.shards, again.step_ms) == \
        ("cached", measured.precision, measured.shards, measured.step_ms)


def test_loss_from_logits_equals_the_loss_of_the_sigmoid_with_its_gradient():
    rng = np.random.default_rng(5)
    # Logits beyond +-16.1 put sigmoid(logit) outside the clip [1e-7, 1 - 1e-7]: no gradient there.
    logits = tf.constant(np.concatenate([rng.normal(0, 4, (3, 784)), rng.choice([-30.0, 30.0], (1, 784))])
                         .astype(np.float32))
    clean = tf.constant(rng.random((4, 28, 28, 1)).astype(np.float32))
    results = []
    for compute in (lambda a: losses.reconstruction_loss(clean, tf.sigmoid(a)),
                    lambda a: losses.reconstruction_loss_from_logits(clean, a)[0]):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = compute(logits)
            total = tf.reduce_sum(loss * np.arange(1, 5, dtype=np.float32))
        results.append((np.asarray(loss), np.asarray(tape.gradient(total, logits))))
    (plain_loss, plain_gradient), (loss, gradient) = results
    assert loss.shape == (4,)
    np.testing.assert_array_equal(loss, plain_loss)  # float32 logits: the very same operations
    np.testing.assert_allclose(gradient, plain_gradient, rtol=1e-4, atol=1e-6)
    assert np.all(gradient[3] == 0)  # every probability clipped
    probabilities = losses.reconstruction_loss_from_logits(clean, logits)[1]
    np.testing.assert_array_equal(np.asarray(probabilities), np.asarray(tf.sigmoid(logits)))


@pytest.mark.parametrize("name, last", [("arch1", "flat_decoded"), ("ae", "flat_decoded"), ("arch2", "flat_decoder"),
                                        ("arch3", "decoder_conv4")])
def test_the_decoders_logits_are_the_sigmoids_input(name, last):
    model = vae.build_model(name, seed=0)
    _, (kind, pair), after = model._decoder_logits
    assert pair[-1].name == last and kind == ("upsample_conv" if name == "arch3" else "layer")
    assert all(isinstance(layer, keras.layers.Reshape) for _, reshapes in after for layer in reshapes)
    z = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    logits = fused_layers.run_logits(model._decoder_logits, z)
    assert tuple(logits.shape) == (5, 28, 28, 1)
    np.testing.assert_allclose(np.asarray(tf.sigmoid(logits)), np.asarray(model.decoder(z)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(model.decode_logits(z)), np.asarray(logits))
    model.fused = False
    assert model.decode_logits(z) is None


def test_a_decoder_without_a_sigmoid_output_has_no_logits_plan():
    inputs = keras.Input((2,))
    outputs = keras.layers.Reshape((28, 28, 1))(keras.layers.Dense(784, activation="relu")(inputs))
    assert fused_layers.plan_logits(fused_layers.plan_decoder(keras.Model(inputs, outputs))) is None
    outputs = keras.layers.Activation("sigmoid")(keras.layers.Dense(784)(inputs))
    assert fused_layers.plan_logits(fused_layers.plan_decoder(keras.Model(inputs, outputs))) is None


def test_a_decision_timed_on_other_training_code_is_timed_again(tmp_path, monkeypatch):
    cache_file = tmp_path / "fast_path.json"
    timed = []

    def stand_in_timer(model, shards, batch_size, steps=8):
        timed.append((model.precision, shards, model))
        return (lambda: None), (lambda: 0.001 * shards)  # one shard always wins
    monkeypatch.setattr(step_timing, "_step_timer", stand_in_timer)
    monkeypatch.setattr(step_timing, "_timing_model", lambda *args: types.SimpleNamespace(precision=args[-1]))
    first = step_timing.choose_fast_path("arch2", cache_file=cache_file)
    assert first.source == "measured" and first.shards == 1
    candidates = fast_path.candidate_paths("auto")
    assert sorted((p, n) for p, n, _ in timed) == sorted(candidates)
    # one model per precision, shared by its shard counts
    assert len({id(model) for _, _, model in timed}) == len({p for p, _ in candidates})
    assert step_timing.choose_fast_path("arch2", cache_file=cache_file).source == "cached"
    monkeypatch.setattr(step_timing, "step_code_key", lambda: "another-version")
    assert step_timing.choose_fast_path("arch2", cache_file=cache_file).source == "measured"
    assert len(json.loads(cache_file.read_text())["entries"]) == 2


def test_the_step_code_key_follows_the_code(tmp_path, monkeypatch):
    key = step_timing.step_code_key()
    assert len(key) == 16 and key == step_timing.step_code_key()
    edited = tmp_path / "fused.py"
    edited.write_text(open(fused_layers.__file__).read() + "# an edit\n")
    monkeypatch.setattr(fused_layers, "__file__", str(edited))
    assert step_timing.step_code_key() != key
