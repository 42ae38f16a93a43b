"""evaluation: test metrics against numpy, determinism, the likelihood estimate, float32 metrics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from denoising_vae import evaluation
from denoising_vae.data import noise
from denoising_vae.models import fast_path, losses, vae
from conftest import EXPECTED_PARAMS, numpy_kl, numpy_reconstruction


def test_evaluate_matches_numpy(letters):
    _, x_val = letters
    clean = x_val[:40]
    noisy = noise.noise_addition(clean, 0.5, seed=0)
    model = vae.build_model("arch2", seed=1)
    got = evaluation.evaluate(model, noisy, clean, batch_size=40, seed=7, iw_samples=5)
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


@pytest.mark.slow
def test_a_mixed_bfloat16_model_decodes_its_likelihood_samples_in_bfloat16(letters):
    _, x_val = letters
    clean = x_val[:50]
    noisy = noise.noise_addition(clean, 0.5, seed=0)
    model = vae.build_model("arch3", seed=2, precision="mixed_bfloat16")
    twin = vae.as_float32(model)
    own = evaluation.evaluate(model, noisy, clean, batch_size=50, seed=1, iw_samples=8)
    full = evaluation.evaluate(model, noisy, clean, batch_size=50, seed=1, iw_samples=8, iw_precision="float32")
    assert full == evaluation.evaluate(twin, noisy, clean, batch_size=50, seed=1, iw_samples=8)
    assert {k: v for k, v in own.items() if k != "log_likelihood"} == {
        k: v for k, v in full.items() if k != "log_likelihood"}
    assert own["log_likelihood"] != full["log_likelihood"]  # the bfloat16 decodes ran
    assert own["log_likelihood"] == pytest.approx(full["log_likelihood"], abs=0.02)
    # A float32 model asked for bfloat16 decodes gets them from a bfloat16 twin.
    asked = evaluation.evaluate(twin, noisy, clean, batch_size=50, seed=1, iw_samples=8, iw_precision="mixed_bfloat16")
    assert asked["log_likelihood"] == own["log_likelihood"]


def _exact_bernoulli_log_likelihood(clean, logits):
    """float64 numpy: sum_p x log s + (1 - x) log(1 - s), s = sigmoid(logits) clipped to [1e-7, 1 - 1e-7]."""
    s = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-7, 1 - 1e-7)
    return (clean * np.log(s) + (1 - clean) * np.log1p(-s)).sum(-1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_likelihood_from_logits_is_the_clipped_bernoulli_likelihood(dtype):
    rng = np.random.default_rng(0)
    samples, batch = 3, 5
    clean = rng.random((batch, 784)).astype(np.float32)
    clean[:, :100] = 0.0  # background and ink pixels, as in the letters
    clean[:, 100:200] = 1.0
    logits = rng.normal(0, 8, (samples * batch, 784)).astype(np.float32)  # a fifth beyond the clip at +-16.1
    logits[:, 200:220] = 40.0
    logits = tf.cast(tf.constant(logits), dtype)
    got = evaluation.log_likelihood_from_logits(tf.constant(clean), logits).numpy()
    assert got.shape == (samples, batch) and got.dtype == np.float32
    as_float = tf.cast(logits, "float32").numpy().astype(np.float64)
    expected = _exact_bernoulli_log_likelihood(clean[None].astype(np.float64), as_float.reshape(samples, batch, 784))
    # Sums of 784 terms up to 16 nats each, in float32.
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)


def test_the_likelihood_from_logits_keeps_the_digits_that_float32_probabilities_lose():
    # Logits of 10-15: 1 - sigmoid(l) is 3e-7 to 5e-5, which a float32 probability
    # near 1 keeps to one or two digits; the training loss's formula on it is off.
    clean = np.full((1, 784), 0.5, np.float32)
    logits = np.linspace(10, 15, 784, dtype=np.float32)[None]
    expected = _exact_bernoulli_log_likelihood(clean, logits)
    got = evaluation.log_likelihood_from_logits(tf.constant(clean), tf.constant(logits)).numpy()[:, 0]
    from_probabilities = np.asarray(losses.bernoulli_log_likelihood(clean, tf.sigmoid(logits)))
    # About -4,900 nats, where float32 keeps steps of 0.0005.
    assert abs(got[0] - expected[0]) < 0.01
    assert abs(from_probabilities[0] - expected[0]) > 0.1  # 0.21 nats off


@pytest.mark.parametrize("clean_shape, logits_shape", [((2, 30), (4, 30)), ((2, 784), (4, 28, 27)),
                                                      ((2, 28, 28), (4, 784))])
def test_the_likelihood_from_logits_names_bad_shapes(clean_shape, logits_shape):
    with pytest.raises(ValueError, match=r"^Expected clean of shape \(B, P\) and logits of shape \(K \* B, P\) or "
                                         r"\(K \* B, \.\.\.\) of P values each, P a multiple of 4\. "
                                         r"Received: clean\.shape=\(2, [\d, ]+\), logits\.shape=\(4, [\d, ]+\)$"):
        evaluation.log_likelihood_from_logits(tf.zeros(clean_shape), tf.zeros(logits_shape))


def test_a_bad_likelihood_precision(letters):
    _, x_val = letters
    with pytest.raises(ValueError, match=r"^Expected iw_precision to be one of \(None, 'float32', 'mixed_bfloat16'\)\. "
                                         r"Received: iw_precision='auto'$"):
        evaluation.evaluate(vae.build_model("ae"), x_val[:10], x_val[:10], iw_precision="auto")


@pytest.mark.slow
def test_evaluate_is_deterministic_and_batch_independent(letters):
    _, x_val = letters
    noisy = noise.noise_addition(x_val, 0.5, seed=0)
    model = vae.build_model("arch3", seed=0)
    first = evaluation.evaluate(model, noisy, x_val, batch_size=100, seed=3)
    again = evaluation.evaluate(model, noisy, x_val, batch_size=100, seed=3)
    assert first == again
    assert set(first) == {"loss", "reconstruction", "kl", "accuracy", "psnr_noisy", "psnr_reconstructed",
                          "ssim_noisy", "ssim_reconstructed", "log_likelihood", "iw_samples"}
    assert first["iw_samples"] == evaluation.default_iw_samples(model)
    # Deterministic metrics do not depend on how the set is batched.
    other = evaluation.evaluate(model, noisy, x_val, batch_size=30, seed=3)
    for name in ("psnr_noisy", "psnr_reconstructed", "ssim_noisy", "ssim_reconstructed"):
        assert other[name] == pytest.approx(first[name], rel=1e-5)


def test_likelihood_estimate_does_not_depend_on_the_decoding_chunks(letters, monkeypatch):
    _, x_val = letters
    noisy = noise.noise_addition(x_val[:60], 0.5, seed=0)
    model = vae.build_model("arch3", seed=0)
    whole = evaluation.evaluate(model, noisy, x_val[:60], batch_size=30, seed=3, iw_samples=12)
    # 150 decodes per call in all (5 samples of 30 images, on 1 or 2 shards): chunks of 5, 5 and 2 samples.
    monkeypatch.setattr(evaluation, "IW_DECODES_PER_SHARD", 150 // fast_path.default_shards())
    chunked = evaluation.evaluate(model, noisy, x_val[:60], batch_size=30, seed=3, iw_samples=12)
    assert chunked["log_likelihood"] == pytest.approx(whole["log_likelihood"], rel=1e-6)
    assert chunked["loss"] == whole["loss"]


def test_evaluate_ae_has_no_kl_or_likelihood(letters):
    _, x_val = letters
    noisy = noise.noise_addition(x_val, 0.5, seed=0)
    result = evaluation.evaluate(vae.build_model("ae", seed=0), noisy, x_val)
    assert "kl" not in result and "log_likelihood" not in result and "iw_samples" not in result
    assert result["loss"] == result["reconstruction"]


def test_psnr_of_equal_images_is_capped(letters):
    _, x_val = letters
    result = evaluation.evaluate(vae.build_model("ae", seed=0), x_val[:10], x_val[:10])
    assert result["psnr_noisy"] == pytest.approx(100.0) and result["ssim_noisy"] == pytest.approx(1.0)


def test_noisy_and_clean_of_different_lengths(letters):
    _, x_val = letters
    with pytest.raises(ValueError, match=r"Expected x_noisy and x_clean of the same length. Received: 100 and 99"):
        evaluation.evaluate(vae.build_model("ae"), x_val, x_val[:99])


def test_mixed_bfloat16_model_counts_saves_and_evaluates_in_float32(tmp_path, letters):
    _, x_val = letters
    model = vae.build_model("arch3", seed=0, precision="mixed_bfloat16")
    assert vae.precision_of(model) == "mixed_bfloat16"
    assert vae.parameter_counts(model) == EXPECTED_PARAMS["arch3"]
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    model.save(tmp_path / "bf16.keras")
    loaded = keras.models.load_model(tmp_path / "bf16.keras")
    assert vae.precision_of(loaded) == "mixed_bfloat16"
    twin = vae.as_float32(model)
    assert vae.precision_of(twin) == "float32" and vae.as_float32(twin) is twin
    noisy = noise.noise_addition(x_val, 0.5, seed=0)
    assert evaluation.evaluate(model, noisy, x_val, iw_precision="float32") == evaluation.evaluate(twin, noisy, x_val)
    # Building it left the global policy alone.
    assert keras.config.dtype_policy().name == "float32"


def test_numpy_psnr():
    clean = np.zeros((2, 28, 28, 1))
    assert evaluation.psnr(clean, clean + 0.1) == pytest.approx([20.0, 20.0])
    assert evaluation.psnr(clean, clean).tolist() == [100.0, 100.0]


def test_encode_reconstruct_decode_equal_the_models_own_layers_in_batches():
    model = vae.build_model("arch1", seed=0)
    x = np.random.default_rng(0).random((23, 28, 28, 1), dtype=np.float32)
    means = evaluation.encode_mean(model, x, batch_size=10)  # batches of 10, 10 and 3: one trace
    assert means.shape == (23, 2) and means.dtype == np.float32
    np.testing.assert_allclose(means, np.asarray(model.encoder(x)[0]), atol=1e-5)
    images = evaluation.decode(model, means, batch_size=7)
    assert images.shape == (23, 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images, np.asarray(model.decoder(means)), atol=1e-5)
    np.testing.assert_allclose(evaluation.reconstruct(model, x), images, atol=1e-5)


@pytest.mark.parametrize("z", [np.zeros((0, 2)), np.zeros((4, 3)), np.zeros(2)])
def test_decode_rejects_points_of_the_wrong_shape(z):
    model = vae.build_model("arch1", seed=0)
    with pytest.raises(ValueError, match=r"^Expected z of shape \(N, 2\) with N >= 1\. Received: z\.shape="):
        evaluation.decode(model, z)
