"""models: architectures, losses against numpy, saving, training, resume and evaluation."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import data_prepro
import models
from conftest import REPO

keras = models.keras
ops = models.ops

EXPECTED_PARAMS = {
    "arch1": {"encoder": 2_892, "decoder": 334_352, "total": 337_244},
    "arch2": {"encoder": 403_972, "decoder": 403_728, "total": 807_700},
    "arch3": {"encoder": 2_420, "decoder": 2_865, "total": 5_285},
    "ae": {"encoder": 2_106, "decoder": 334_352, "total": 336_458},
}


@pytest.fixture(scope="module")
def letters():
    """Small synthetic train and validation sets, (N, 28, 28, 1) float32."""
    (x, _), (xt, _) = data_prepro.input_read("synthetic", train_size=300, test_size=100, seed=0,
                                             cache_dir=os.environ.get("TMPDIR", "/tmp") + "/vae-test-cache")
    return x, xt


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_parameter_counts_equal_the_report(name):
    model = models.build_model(name)
    assert models.parameter_counts(model) == EXPECTED_PARAMS[name]
    assert model.count_params() == EXPECTED_PARAMS[name]["total"]


@pytest.mark.parametrize("name", models.ARCHITECTURES)
@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_output_shapes(name, latent_dim):
    model = models.build_model(name, latent_dim=latent_dim, seed=0)
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    assert tuple(model(x).shape) == (3, 28, 28, 1)
    z_mean, z_log_var, z = model.encode(x)
    assert tuple(z.shape) == (3, latent_dim) and model.latent_dim == latent_dim
    assert model.variational == (name != "ae") and (z_log_var is None) == (name == "ae")
    decoded = model.decoder(np.zeros((4, latent_dim), np.float32))
    assert tuple(decoded.shape) == (4, 28, 28, 1)
    assert 0 < float(np.min(decoded)) and float(np.max(decoded)) < 1


def test_arch3_decoder_follows_the_table():
    decoder = models.build_model("arch3").decoder
    shapes = [(layer.name, tuple(layer.output.shape[1:])) for layer in decoder.layers[1:]]
    assert shapes == [("decoder_dense1", (128,)), ("decoder_reshape", (4, 4, 8)), ("decoder_conv1", (4, 4, 8)),
                      ("decoder_upsampling1", (8, 8, 8)), ("decoder_conv2", (8, 8, 8)),
                      ("decoder_upsampling2", (16, 16, 8)), ("decoder_conv3", (14, 14, 16)),
                      ("decoder_upsampling3", (28, 28, 16)), ("decoder_conv4", (28, 28, 1))]


def test_arch1_encoder_follows_the_table():
    encoder = models.build_model("arch1").encoder
    shapes = [(type(layer).__name__, tuple(layer.output.shape[1:]) if not isinstance(layer.output, list)
               else None) for layer in encoder.layers[1:]]
    assert [s for _, s in shapes[:5]] == [(28, 28, 16), (14, 14, 16), (14, 14, 8), (7, 7, 8), (392,)]
    assert [t for t, _ in shapes[-3:]] == ["Dense", "Dense", "Sampling"]


@pytest.mark.parametrize("padding, size", [("same", 14), ("valid", 8), ("same", 4)])
def test_upsample_conv_equals_upsampling_then_conv(padding, size):
    """The convolution on the small map gives the layers' outputs and gradients."""
    rng = np.random.default_rng(size)
    upsampling = keras.layers.UpSampling2D()
    conv = keras.layers.Conv2D(5, 3, padding=padding, activation="sigmoid")
    x = models.tf.constant(rng.normal(size=(3, size, size, 4)).astype(np.float32))
    conv.build((None, 2 * size, 2 * size, 4))
    conv.kernel.assign(rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
    conv.bias.assign(rng.normal(size=(5,)).astype(np.float32))
    weights = [conv.kernel.value, conv.bias.value]
    outputs, gradients = [], []
    for compute in (lambda: conv(upsampling(x)), lambda: models.upsample_conv(x, conv)):
        with models.tf.GradientTape() as tape:
            tape.watch(x)
            y = compute()
            loss = models.tf.reduce_sum(y * np.arange(y.shape[-1], dtype=np.float32))
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
    model = models.build_model("arch3", seed=0)
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
    for fused, plain in zip(model.moments(x), model._moments(x)):
        np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), atol=1e-6)


def test_a_loaded_model_keeps_its_fused_pairs(tmp_path):
    model = models.build_model("arch3", seed=0)
    model.save(tmp_path / "arch3.keras")
    loaded = models.load_model(tmp_path / "arch3.keras")
    assert fused_pairs(loaded._decoder_steps) == fused_pairs(model._decoder_steps)
    assert fused_pairs(loaded._encoder_plan[0]) == fused_pairs(model._encoder_plan[0])


@pytest.mark.parametrize("name, encoder_pairs", [("arch1", 2), ("ae", 2), ("arch2", 0)])
def test_other_models_fuse_only_their_conv_pool_pairs(name, encoder_pairs):
    model = models.build_model(name, seed=0)
    assert fused_pairs(model._decoder_steps) == []
    steps, _ = model._encoder_plan
    assert [kind for kind, _ in fused_pairs(steps)] == ["conv_relu_pool"] * encoder_pairs
    x = np.random.default_rng(1).random((5, 28, 28, 1)).astype(np.float32)
    fused, plain = model.moments(x), model._moments(x)
    for a, b in zip(*(([f] if name == "ae" else f) for f in (fused, plain))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_conv_relu_pool_equals_the_layers_with_gradients():
    rng = np.random.default_rng(3)
    conv = keras.layers.Conv2D(6, 3, padding="same", activation="relu")
    pooling = keras.layers.MaxPooling2D(2, padding="same")
    x = models.tf.constant(rng.normal(size=(4, 7, 7, 3)).astype(np.float32))  # odd size: a padded pool
    conv.build((None, 7, 7, 3))
    results = []
    for compute in (lambda: pooling(conv(x)), lambda: models.conv_relu_pool(x, conv, pooling)):
        with models.tf.GradientTape() as tape:
            tape.watch(x)
            y = compute()
            loss = models.tf.reduce_sum(y * np.arange(1, 7, dtype=np.float32))
        results.append([np.asarray(y)] + [np.asarray(g) for g in tape.gradient(loss, [x, conv.kernel.value,
                                                                                       conv.bias.value])])
    assert results[1][0].shape == (4, 4, 4, 6)
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)


def test_no_lambda_layers():
    for name in models.ARCHITECTURES:
        model = models.build_model(name)
        for layer in model.encoder.layers + model.decoder.layers:
            assert type(layer).__name__ != "Lambda"


# ---------------------------------------------------------------- losses against numpy

def numpy_reconstruction(clean, predicted):
    p = np.clip(predicted.reshape(len(predicted), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    c = clean.reshape(len(clean), -1).astype(np.float64)
    return -(c * np.log(p) + (1 - c) * np.log(1 - p)).sum(1)


def numpy_kl(mean, log_var):
    return -0.5 * (1 + log_var - mean ** 2 - np.exp(log_var)).sum(1)


def test_loss_terms_match_numpy():
    rng = np.random.default_rng(0)
    clean = rng.random((6, 28, 28, 1)).astype(np.float32)
    predicted = rng.random((6, 28, 28, 1)).astype(np.float32)
    mean = rng.normal(size=(6, 3)).astype(np.float32)
    log_var = rng.normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(models.reconstruction_loss(clean, predicted)),
                               numpy_reconstruction(clean, predicted), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(models.kl_divergence(mean, log_var)), numpy_kl(mean, log_var),
                               rtol=1e-5)
    accuracy = ((clean > 0.5) == (predicted > 0.5)).reshape(6, -1).mean(1)
    np.testing.assert_allclose(np.asarray(models.pixel_accuracy(clean, predicted)), accuracy, rtol=1e-6)
    # KL of the prior itself is 0.
    assert float(np.max(np.abs(models.kl_divergence(np.zeros((2, 2)), np.zeros((2, 2)))))) == 0.0


def test_evaluate_matches_numpy(letters):
    _, x_val = letters
    clean = x_val[:40]
    noisy = data_prepro.noise_addition(clean, 0.5, seed=0)
    model = models.build_model("arch2", seed=1)
    got = models.evaluate(model, noisy, clean, batch_size=40, seed=7, iw_samples=5)
    epsilon = np.random.default_rng(7).standard_normal((6, 40, 2), dtype=np.float32)
    mean, log_var, _ = [np.asarray(t) for t in model.encode(noisy)]
    z = mean + np.exp(0.5 * log_var) * epsilon[0]
    predicted = np.asarray(model.decoder(z))
    reconstruction = numpy_reconstruction(clean, predicted)
    kl = numpy_kl(mean, log_var)
    assert got["reconstruction"] == pytest.approx(reconstruction.mean(), rel=1e-5)
    assert got["kl"] == pytest.approx(kl.mean(), rel=1e-5)
    assert got["loss"] == pytest.approx(reconstruction.mean() + kl.mean(), rel=1e-5)
    # An untrained decoder puts many pixels near 0.5, where float rounding in
    # the compiled graph can flip a few: allow 0.1 % of the pixels.
    assert got["accuracy"] == pytest.approx(((clean > 0.5) == (predicted > 0.5)).mean(), abs=1e-3)
    deterministic = np.asarray(model.decoder(mean))
    mse = ((clean - deterministic) ** 2).reshape(40, -1).mean(1)
    assert got["psnr_reconstructed"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)
    # Importance-weighted log-likelihood (Burda et al. 2016), written out in numpy.
    zs = mean[None] + np.exp(0.5 * log_var)[None] * epsilon[1:]
    log_prior = -0.5 * (zs ** 2 + np.log(2 * np.pi)).sum(-1)
    log_q = -0.5 * (epsilon[1:] ** 2 + np.log(2 * np.pi) + log_var[None]).sum(-1)
    decoded = np.asarray(model.decoder(zs.reshape(-1, 2))).reshape(5, 40, 28, 28, 1)
    log_px = np.stack([-numpy_reconstruction(clean, d) for d in decoded])
    weights = log_px + log_prior - log_q
    peak = weights.max(0)
    iw = peak + np.log(np.exp(weights - peak).mean(0))
    assert got["log_likelihood"] == pytest.approx(iw.mean(), rel=1e-4)
    assert got["iw_samples"] == 5
    # The bound is below the reconstruction term's (-ELBO) value.
    assert got["log_likelihood"] >= -got["loss"] - 5


def test_evaluate_is_deterministic_and_batch_independent(letters):
    _, x_val = letters
    noisy = data_prepro.noise_addition(x_val, 0.5, seed=0)
    model = models.build_model("arch3", seed=0)
    first = models.evaluate(model, noisy, x_val, batch_size=100, seed=3)
    again = models.evaluate(model, noisy, x_val, batch_size=100, seed=3)
    assert first == again
    assert set(first) == {"loss", "reconstruction", "kl", "accuracy", "psnr_noisy", "psnr_reconstructed",
                          "ssim_noisy", "ssim_reconstructed", "log_likelihood", "iw_samples"}
    assert first["iw_samples"] == models.default_iw_samples(model)
    # Deterministic metrics do not depend on how the set is batched.
    other = models.evaluate(model, noisy, x_val, batch_size=30, seed=3)
    for name in ("psnr_noisy", "psnr_reconstructed", "ssim_noisy", "ssim_reconstructed"):
        assert other[name] == pytest.approx(first[name], rel=1e-5)


def test_likelihood_estimate_does_not_depend_on_the_decoding_chunks(letters, monkeypatch):
    _, x_val = letters
    noisy = data_prepro.noise_addition(x_val[:60], 0.5, seed=0)
    model = models.build_model("arch3", seed=0)
    whole = models.evaluate(model, noisy, x_val[:60], batch_size=30, seed=3, iw_samples=12)
    monkeypatch.setattr(models, "IW_DECODES_PER_CALL", 150)  # 5 samples per call: chunks of 5, 5 and 2
    chunked = models.evaluate(model, noisy, x_val[:60], batch_size=30, seed=3, iw_samples=12)
    assert chunked["log_likelihood"] == pytest.approx(whole["log_likelihood"], rel=1e-6)
    assert chunked["loss"] == whole["loss"]


def test_evaluate_ae_has_no_kl_or_likelihood(letters):
    _, x_val = letters
    noisy = data_prepro.noise_addition(x_val, 0.5, seed=0)
    result = models.evaluate(models.build_model("ae", seed=0), noisy, x_val)
    assert "kl" not in result and "log_likelihood" not in result and "iw_samples" not in result
    assert result["loss"] == result["reconstruction"]


def test_psnr_of_equal_images_is_capped(letters):
    _, x_val = letters
    result = models.evaluate(models.build_model("ae", seed=0), x_val[:10], x_val[:10])
    assert result["psnr_noisy"] == pytest.approx(100.0) and result["ssim_noisy"] == pytest.approx(1.0)


# ---------------------------------------------------------------- serialisation

def test_sampling_config_round_trip():
    layer = models.Sampling(seed=3, name="sampling")
    config = layer.get_config()
    assert config["seed"] == 3
    clone = models.Sampling.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, models.Sampling) and restored.get_config() == config


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_save_load_safe_mode_identical(name, tmp_path, letters):
    _, x_val = letters
    model = models.build_model(name, seed=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    assert isinstance(loaded, models.DenoisingVAE) and loaded.architecture == name
    assert models.parameter_counts(loaded) == EXPECTED_PARAMS[name]
    np.testing.assert_array_equal(models.reconstruct(model, x_val[:20]), models.reconstruct(loaded, x_val[:20]))
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


def test_load_in_a_fresh_process_after_importing_models(tmp_path, letters):
    _, x_val = letters
    model = models.build_model("arch3", seed=0)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x_val[:10])
    np.save(tmp_path / "want.npy", models.reconstruct(model, x_val[:10]))
    code = textwrap.dedent(f"""
        import numpy as np, keras, models
        model = keras.models.load_model({str(tmp_path / 'm.keras')!r})
        got = models.reconstruct(model, np.load({str(tmp_path / 'x.npy')!r}))
        assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}))
        print("identical")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("identical"), out.stderr[-2000:]


# ---------------------------------------------------------------- training

def test_fused_adam_follows_keras_adam():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(30, 7)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
    finals = []
    for optimizer in (keras.optimizers.Adam(0.01), models.FusedAdam(0.01)):
        variables = [keras.Variable(value) for value in start]
        step = models.tf.function(lambda grads: optimizer.apply(grads, variables))
        for index in range(40):
            step([np.random.default_rng(index).normal(size=v.shape).astype(np.float32) for v in start])
        finals.append([np.asarray(v) for v in variables])
    for plain, fused, first in zip(*finals, start):
        assert np.abs(plain - first).max() > 0.1  # the variables moved
        np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_fused_adam_round_trips_through_a_saved_model(letters, tmp_path):
    model = models.build_model("arch2", seed=0)
    model.compile(optimizer=models.FusedAdam(2e-3))
    model.fit(letters[0][:200], letters[0][:200], batch_size=100, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is models.FusedAdam
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(2e-3)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))


def test_one_training_step_changes_weights_and_is_finite(letters):
    x, _ = letters
    model = models.build_model("arch1", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = weights_of(model)
    logs = model.train_on_batch(x[:100], return_dict=True)
    after = weights_of(model)
    assert all(np.isfinite(v) for v in logs.values())
    assert set(logs) == {"loss", "reconstruction", "kl", "accuracy"}
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    # One evaluation step changes nothing.
    model.test_on_batch(x[:100], x[:100])
    for a, b in zip(after, weights_of(model)):
        np.testing.assert_array_equal(a, b)


def test_train_model_writes_run_folder_and_learns(letters, tmp_path):
    x, x_val = letters
    result = models.train_model(models.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=3,
                                seed=0, verbose=0)
    assert result.epochs == 3 and result.resumed_from == 0 and result.train_seconds > 0
    assert set(result.history) == {"loss", "reconstruction", "kl", "accuracy",
                                   "val_loss", "val_reconstruction", "val_kl", "val_accuracy"}
    assert all(len(v) == 3 for v in result.history.values())
    assert result.history["loss"][-1] < result.history["loss"][0]
    rows = models.read_history(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [p.name for p in tmp_path.glob("checkpoint-epoch*.keras")] == ["checkpoint-epoch3.keras"]
    np.testing.assert_allclose([r["val_loss"] for r in rows], result.history["val_loss"])


def test_same_seed_gives_equal_weights_and_metrics(letters, tmp_path):
    x, x_val = letters
    runs = [models.train_model(models.build_model("arch3", seed=5), x, x_val, run_dir=tmp_path / str(i),
                               epochs=2, seed=5, verbose=0) for i in range(2)]
    for a, b in zip(weights_of(runs[0].model), weights_of(runs[1].model)):
        np.testing.assert_array_equal(a, b)
    assert runs[0].history == runs[1].history
    other = models.train_model(models.build_model("arch3", seed=6), x, x_val, run_dir=tmp_path / "other",
                               epochs=2, seed=6, verbose=0)
    assert other.history != runs[0].history


def test_fixed_noise_option_trains(letters, tmp_path):
    x, x_val = letters
    result = models.train_model(models.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=2,
                                fresh_noise=False, verbose=0)
    assert result.epochs == 2 and result.model.train_noise_std == 0.0
    assert result.history["kl"] == [0.0, 0.0]


def test_resume_continues_to_the_same_total(letters, tmp_path):
    x, x_val = letters
    first = models.train_model(models.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=2,
                               verbose=0)
    assert first.epochs == 2
    resumed = models.train_model(models.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=4,
                                 verbose=0)
    assert resumed.resumed_from == 2 and resumed.epochs == 4
    assert [r["epoch"] for r in models.read_history(tmp_path)] == [1, 2, 3, 4]
    assert resumed.history["loss"][:2] == first.history["loss"]
    assert resumed.train_seconds >= first.train_seconds
    # The optimizer state came back with the checkpoint: Adam's step counter is 4 epochs' worth.
    assert int(resumed.model.optimizer.iterations.numpy()) == 4 * 3
    done = models.train_model(models.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=4,
                              verbose=0)
    assert done.resumed_from == 4 and done.epochs == 4 and done.history == resumed.history


def test_resume_after_sigkill(letters, tmp_path):
    x, x_val = letters
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xv.npy", x_val)
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import time, numpy as np, keras, models
        class Slow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                time.sleep(1.5)
        models.train_model(models.build_model("arch2", seed=0), np.load({str(tmp_path / 'x.npy')!r}),
                           np.load({str(tmp_path / 'xv.npy')!r}), run_dir={str(run)!r}, epochs=4, verbose=0,
                           callbacks=[Slow()])
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(models.read_history(run) if run.exists() else []) < 2:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert len(models.read_history(run)) in (2, 3)
    resumed = models.train_model(models.build_model("arch2", seed=0), x, x_val, run_dir=run, epochs=4, verbose=0)
    assert resumed.resumed_from >= 1 and resumed.epochs == 4
    assert [r["epoch"] for r in models.read_history(run)] == [1, 2, 3, 4]


def test_damaged_checkpoint_is_not_trusted(letters, tmp_path):
    x, x_val = letters
    models.train_model(models.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    (tmp_path / "checkpoint-epoch1.keras").write_bytes(b"damaged")
    again = models.train_model(models.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    assert again.resumed_from == 0 and again.epochs == 1


def test_run_folder_of_another_configuration_is_refused(letters, tmp_path):
    x, x_val = letters
    models.train_model(models.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"run_dir .* holds a run with architecture='ae', not 'arch3'"):
        models.train_model(models.build_model("arch3"), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)


def test_non_finite_loss_stops_with_a_clear_error(letters, tmp_path):
    x, x_val = letters
    with pytest.raises(models.NonFiniteLossError, match=r"training diverged: loss became (nan|inf)"):
        models.train_model(models.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=3,
                           learning_rate=1e38, verbose=0)


def test_early_stopping_restores_best_weights(letters, tmp_path):
    x, x_val = letters
    result = models.train_model(models.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=40,
                                learning_rate=0.05, early_stopping_patience=1, verbose=0)
    assert result.stopped_early and result.epochs < 40
    assert min(result.history["val_loss"]) < result.history["val_loss"][-1]
    # The returned model holds the best weights, and so does best.keras.
    restored = models.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(models.reconstruct(restored, x_val[:5]),
                                  models.reconstruct(result.model, x_val[:5]))


# ---------------------------------------------------------------- errors

def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"Expected name to be one of \('arch1', 'arch2', 'arch3', 'ae'\). "
                                         r"Received: name='arch4'"):
        models.build_model("arch4")


@pytest.mark.parametrize("latent_dim", [0, -1, 1.5])
def test_latent_dim_at_least_one(latent_dim):
    with pytest.raises(ValueError, match=r"Expected latent_dim to be an integer >= 1. Received: latent_dim="):
        models.build_model("arch1", latent_dim=latent_dim)


@pytest.mark.parametrize("beta", [-0.5, float("nan")])
def test_beta_non_negative(beta):
    with pytest.raises(ValueError, match=r"Expected beta to be a finite number >= 0. Received: beta="):
        models.build_model("arch1", beta=beta)


@pytest.mark.parametrize("argument", ["epochs", "batch_size"])
@pytest.mark.parametrize("value", [0, -2])
def test_epochs_and_batch_size_at_least_one(argument, value, letters, tmp_path):
    x, x_val = letters
    with pytest.raises(ValueError, match=rf"Expected {argument} to be an integer >= 1. Received: {argument}={value}"):
        models.train_model(models.build_model("ae"), x, x_val, run_dir=tmp_path, **{argument: value})


def test_training_data_with_nan_rejected(letters, tmp_path):
    x, x_val = letters
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"Expected x_train with finite values"):
        models.train_model(models.build_model("ae"), bad, x_val, run_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_training_data_out_of_range_or_misshapen(letters, tmp_path):
    x, x_val = letters
    with pytest.raises(ValueError, match=r"Expected x_val with values in \[0, 1\]"):
        models.train_model(models.build_model("ae"), x, x_val * 255, run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Expected x_train with shape \(N, 28, 28\) or \(N, 28, 28, 1\)"):
        models.train_model(models.build_model("ae"), x.reshape(-1, 784), x_val, run_dir=tmp_path)


def test_noisy_and_clean_of_different_lengths(letters):
    _, x_val = letters
    with pytest.raises(ValueError, match=r"Expected x_noisy and x_clean of the same length. Received: 100 and 99"):
        models.evaluate(models.build_model("ae"), x_val, x_val[:99])


# ---------------------------------------------------------------- precision and shards

def test_mixed_bfloat16_model_counts_saves_and_evaluates_in_float32(tmp_path, letters):
    _, x_val = letters
    model = models.build_model("arch3", seed=0, precision="mixed_bfloat16")
    assert models.precision_of(model) == "mixed_bfloat16"
    assert models.parameter_counts(model) == EXPECTED_PARAMS["arch3"]
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    model.save(tmp_path / "bf16.keras")
    loaded = keras.models.load_model(tmp_path / "bf16.keras")
    assert models.precision_of(loaded) == "mixed_bfloat16"
    twin = models.as_float32(model)
    assert models.precision_of(twin) == "float32" and models.as_float32(twin) is twin
    noisy = data_prepro.noise_addition(x_val, 0.5, seed=0)
    assert models.evaluate(model, noisy, x_val) == models.evaluate(twin, noisy, x_val)
    # Building it left the global policy alone.
    assert keras.config.dtype_policy().name == "float32"


def test_resolve_precision():
    assert models.resolve_precision("float32") == "float32"
    assert models.resolve_precision("auto") in ("float32", "mixed_bfloat16")
    with pytest.raises(ValueError, match=r"Expected precision to be one of .* Received: precision='fp8'"):
        models.build_model("arch1", precision="fp8")


def test_shards_give_the_same_step_as_the_whole_batch(letters):
    # The deterministic AE isolates the sharding: no random draws differ.
    x, _ = letters
    results = []
    for shards in (1, 2, 3):
        model = models.build_model("ae", seed=0)
        model.shards = shards
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        logs = model.train_on_batch(x[:100], x[:100], return_dict=True)
        results.append((logs, weights_of(model)))
    for logs, weights in results[1:]:
        assert logs["loss"] == pytest.approx(results[0][0]["loss"], rel=1e-5)
        for a, b in zip(weights, results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision, tolerance", [("float32", 1e-4), ("mixed_bfloat16", 3e-2)])
@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_training_loss_and_gradients_equal_the_plain_layers(name, precision, tolerance, letters):
    """The fused computations of the training step change nothing but speed (and bfloat16 rounding)."""
    x, _ = letters
    clean = x[:40]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.5, clean.shape), 0, 1).astype(np.float32)
    epsilon = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    model = models.build_model(name, seed=0, precision=precision)

    def plain_losses():  # the Keras models as built, layer by layer
        if model.variational:
            z_mean, z_log_var = model._moments(noisy, training=True)
            z = z_mean + ops.exp(0.5 * z_log_var) * ops.cast(epsilon, z_mean.dtype)
            kl = models.kl_divergence(z_mean, z_log_var)
        else:
            z, kl = model._moments(noisy, training=True), 0.0
        return models.reconstruction_loss(clean, model.decoder(z, training=True)), kl

    def fused_losses():
        reconstruction, kl, _ = model.losses_per_image(noisy, clean, epsilon, training=True)
        return reconstruction, kl

    results = []
    for losses in (plain_losses, fused_losses):
        @models.tf.function  # compiled as in training (eager bfloat16 convolution gradients differ)
        def loss_and_gradients():
            with models.tf.GradientTape() as tape:
                reconstruction, kl = losses()
                loss = ops.mean(reconstruction) + ops.mean(kl)
            return loss, tape.gradient(loss, model.trainable_weights)

        loss, gradients = loss_and_gradients()
        results.append((float(loss), [np.asarray(g) for g in gradients]))
    (plain_loss, plain_gradients), (fused_loss, fused_gradients) = results
    assert fused_loss == pytest.approx(plain_loss, rel=tolerance / 100)
    assert len(fused_gradients) == len(plain_gradients) == len(model.trainable_weights)
    for fused, plain in zip(fused_gradients, plain_gradients):
        np.testing.assert_allclose(fused, plain, rtol=tolerance, atol=tolerance * np.abs(plain).max())


def test_sharded_vae_losses_cover_every_image_once(letters):
    x, _ = letters
    model = models.build_model("arch1", seed=0)
    whole = models.kl_divergence(*model.encode(x[:100])[:2])
    for shards in (1, 2, 3):
        model.shards = shards
        reconstruction, kl, accuracy = model._sharded_losses(x[:100], x[:100], training=False)
        assert tuple(reconstruction.shape) == (100,) and tuple(accuracy.shape) == (100,)
        np.testing.assert_allclose(np.asarray(kl), np.asarray(whole), rtol=1e-5)


@pytest.mark.parametrize("batches, expected", [(1, 1), (26, 26), (50, 50), (104, 26), (624, 48), (521, 50)])
def test_steps_per_execution_divides_the_epoch_when_it_can(batches, expected):
    assert models.default_steps_per_execution(batches) == expected


def test_numpy_psnr():
    clean = np.zeros((2, 28, 28, 1))
    assert models.psnr(clean, clean + 0.1) == pytest.approx([20.0, 20.0])
    assert models.psnr(clean, clean).tolist() == [100.0, 100.0]
