"""The classical denoisers, the latent measures and the image quality they are scored with:
known images and codes of known structure, and every one-line error."""
import numpy as np
import pytest
import tensorflow as tf

from denoising_vae import baselines, evaluation, latent
from denoising_vae.data import input_read, noise_addition
from denoising_vae.study import yardstick


def letters(count, seed):
    """``count`` offline letters (a multiple of 26), float32 (count, 28, 28, 1) in [0, 1]."""
    return input_read("synthetic", train_size=count, test_size=26, seed=seed)[0][0]


def speck(value=1.0):
    """A black 28 x 28 image with one bright pixel in the middle, (1, 28, 28)."""
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 14, 14] = value
    return image


# ---------------------------------------------------------------- image quality

def test_image_quality_is_the_models_psnr_and_tensorflows_ssim():
    rng = np.random.default_rng(0)
    clean = rng.random((7, 28, 28, 1)).astype(np.float32)
    other = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    quality = evaluation.image_quality(clean, other, batch_size=3)
    assert quality["psnr"].shape == quality["ssim"].shape == (7,)
    mse = np.mean((clean.astype(np.float64) - other) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(quality["psnr"], 10 * np.log10(1 / mse), rtol=1e-6)
    np.testing.assert_allclose(quality["ssim"], tf.image.ssim(clean, other, max_val=1.0).numpy(), rtol=1e-5)
    same = evaluation.image_quality(clean, clean)
    assert np.all(same["psnr"] == 100.0) and np.allclose(same["ssim"], 1.0)
    with pytest.raises(ValueError, match="Expected images and clean of the same length. Received: 6 and 7"):
        evaluation.image_quality(clean, other[:6])


# ---------------------------------------------------------------- the classical denoisers

def test_median_filter_removes_a_speck_exactly_and_keeps_a_flat_image():
    assert np.array_equal(baselines.denoise("median", speck(), 3), np.zeros((1, 28, 28), np.float32))
    flat = np.full((2, 28, 28), 0.25, np.float32)
    for method, parameter in (("median", 5), ("gaussian", 1.0), ("nl_means", 0.2), ("tv", 0.2)):
        np.testing.assert_allclose(baselines.denoise(method, flat, parameter), flat, atol=1e-6, err_msg=method)
    # BM3D's transforms leave a flat image flat within a few thousandths.
    np.testing.assert_allclose(baselines.denoise("bm3d", flat, 0.3), flat, atol=1e-2)


def test_gaussian_filter_spreads_a_speck_as_a_unit_gaussian():
    out = baselines.denoise("gaussian", speck(), 1.0)[0]
    assert out.dtype == np.float32 and out.shape == (28, 28)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # the weights sum to 1 away from the border
    # exp(-1 / 2): the neighbour's weight relative to the centre's, for sigma 1.
    assert out[14, 15] / out[14, 14] == pytest.approx(np.exp(-0.5), rel=0.05)


def test_every_denoiser_lifts_the_psnr_of_noisy_letters():
    clean = letters(26, seed=3)[::3]  # 9 letters: BM3D takes a fraction of a second each
    noisy = noise_addition(clean, 0.3, seed=1)
    before = evaluation.psnr(clean, noisy).mean()
    for method in baselines.METHODS:
        value = baselines.METHODS[method].candidates(0.3)[1]
        after = evaluation.psnr(clean, baselines.denoise(method, noisy, value)).mean()
        assert after > before + 1.0, method


def test_the_parameter_is_the_best_candidate_on_the_validation_letters():
    clean = letters(52, seed=4)
    noisy = noise_addition(clean, 0.5, seed=2)
    value, scores = baselines.choose_parameter("tv", clean, noisy, 0.5)
    assert list(scores) == [str(v) for v in baselines.METHODS["tv"].candidates(0.5)] == ["0.1", "0.175", "0.25",
                                                                                        "0.375"]
    assert scores[str(value)] == max(scores.values())
    for candidate, score in scores.items():
        assert score == pytest.approx(evaluation.psnr(clean, baselines.denoise("tv", noisy, float(candidate))).mean(),
                                      abs=1e-4)


def test_compare_baselines_scores_each_method_with_its_chosen_parameter():
    images = letters(52, seed=5)
    validation = (images[:26], noise_addition(images[:26], 0.5, seed=1))
    test = (images[26:], noise_addition(images[26:], 0.5, seed=2))
    rows = baselines.compare_baselines(validation, test, 0.5, ("median", "gaussian"))
    assert [row["method"] for row in rows] == ["median", "gaussian"]
    for row in rows:
        assert set(row) == {"method", "parameter", "value", "psnr", "ssim", "seconds_per_1000", "validation"}
        quality = evaluation.image_quality(test[0], baselines.denoise(row["method"], test[1], row["value"]))
        assert row["psnr"] == pytest.approx(quality["psnr"].mean()) and row["ssim"] == pytest.approx(
            quality["ssim"].mean())
    assert baselines.best_baseline(rows) is max(rows, key=lambda row: row["psnr"])


@pytest.mark.parametrize("call, message", [
    (lambda: baselines.denoise("bm4d", speck(), 1), r"Expected methods to be distinct names of gaussian, median, "
                                                      r"nl_means, tv, bm3d. Received: methods=\('bm4d',\)"),
    (lambda: baselines.denoise("median", speck(), 0), r"Expected parameter to be a finite number > 0 \(the size "
                                                        r"of median\). Received: parameter=0"),
    (lambda: baselines.denoise("tv", speck(), float("nan")), r"Expected parameter to be a finite number > 0"),
    (lambda: baselines.denoise("tv", speck(2.0), 0.1), r"Expected noisy with values in \[0, 1\]"),
    (lambda: baselines.compare_baselines((speck(), speck()), (speck(), speck()), -1.0),
     r"Expected noise_std to be a finite number >= 0. Received: noise_std=-1.0"),
    (lambda: baselines.compare_baselines((speck(), speck()), (speck(), speck()), 0.5, ("tv", "tv")),
     r"Expected methods to be distinct names"),
    (lambda: baselines.best_baseline([]), r"Expected rows of at least one method. Received: rows=\[\]"),
])
def test_bad_baseline_arguments_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- the latent measures

def letter_codes(per_letter, spread, seed):
    """Codes of known structure: each letter at its own corner (3 times a one-hot vector of 26
    dimensions, a cloud of std ``spread``), then one dimension of variance 0.02 and one nearly constant."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(26), per_letter)
    corners = 3.0 * np.eye(26)[labels] + rng.normal(0, spread, (len(labels), 26))
    extra = np.stack([rng.normal(0, np.sqrt(0.02), len(labels)), rng.normal(0, 0.01, len(labels))], axis=1)
    return np.concatenate([corners, extra], axis=1), labels


def test_letters_at_separate_corners_are_read_exactly_and_unused_dimensions_are_not_active():
    z_train, y_train = letter_codes(40, 0.3, seed=0)
    z_test, y_test = letter_codes(10, 0.3, seed=1)
    measures = latent.latent_measures(z_train, y_train, z_test, y_test)
    assert measures["probe_accuracy"] == 1.0 and measures["knn_accuracy"] == 1.0
    # Each corner dimension varies by 9 * (1/26) * (25/26) = 0.33, the next by 0.02 (> 0.01), the last by 1e-4.
    assert measures["active_units"] == 27 and len(measures["latent_variances"]) == 28
    assert measures["latent_variances"][26] == pytest.approx(0.02, rel=0.3) and measures["latent_variances"][27] < 1e-3


def test_codes_without_letter_identity_are_read_at_chance():
    rng = np.random.default_rng(2)
    y_train, y_test = rng.integers(0, 26, 5200), rng.integers(0, 26, 2600)
    measures = latent.latent_measures(rng.normal(size=(5200, 2)), y_train, rng.normal(size=(2600, 2)), y_test,
                                      variational=False)
    assert measures["probe_accuracy"] < 0.07 and measures["knn_accuracy"] < 0.07  # chance is 1/26 = 0.038
    assert measures["active_units"] is None  # the autoencoder's codes have no prior to scale them


def test_a_linear_probe_reads_what_is_linear_and_k_nn_what_is_local():
    # Letter 0 inside a ring of letter 1: not linearly separable, but neighbours agree.
    rng = np.random.default_rng(3)

    def ring(count):
        labels = rng.integers(0, 2, count)
        radius = np.where(labels == 0, rng.uniform(0, 1, count), rng.uniform(2, 3, count))
        angle = rng.uniform(0, 2 * np.pi, count)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1), labels

    (z_train, y_train), (z_test, y_test) = ring(2000), ring(1000)
    assert latent.knn_accuracy(z_train, y_train, z_test, y_test) > 0.99
    assert latent.linear_probe_accuracy(z_train, y_train, z_test, y_test) < 0.8


def test_active_units_counts_variances_above_the_threshold():
    z = np.random.default_rng(4).normal(size=(10_000, 4)) * np.sqrt([1.0, 0.5, 0.005, 0.0])
    count, variances = latent.active_units(z)
    assert count == 2 and variances.shape == (4,)
    assert latent.active_units(z, threshold=0.001)[0] == 3


@pytest.mark.parametrize("call, message", [
    (lambda: latent.active_units(np.zeros(5)), r"Expected z to be a finite array of shape \(N, D\) with N >= 2. "
                                               r"Received: z.shape=\(5,\)"),
    (lambda: latent.active_units(np.full((3, 2), np.nan)), r"Expected z to be a finite array"),
    (lambda: latent.knn_accuracy(np.zeros((4, 2)), [0, 1, 2, 26], np.zeros((2, 2)), [0, 1]),
     r"Expected y_train to be 4 letter indices in 0-25. Received: y_train of shape \(4,\)"),
    (lambda: latent.linear_probe_accuracy(np.zeros((4, 2)), [0, 1, 2, 3], np.zeros((2, 3)), [0, 1]),
     r"Expected z_train and z_test with the same number of dimensions. Received: 2 and 3"),
    (lambda: latent.knn_accuracy(np.zeros((4, 2)), [0, 1, 2, 3], np.zeros((2, 2)), [0, 1], neighbours=5),
     r"Expected neighbours to be at most the 4 training codes. Received: neighbours=5"),
    (lambda: latent.knn_accuracy(np.zeros((4, 2)), [0, 1, 2, 3], np.zeros((2, 2)), [0, 1], neighbours=0),
     r"Expected neighbours to be an integer >= 1. Received: neighbours=0"),
])
def test_bad_latent_arguments_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- the study's letters

def test_denoisers_and_models_are_measured_on_the_same_noisy_test_letters():
    x_test = letters(1040, seed=6)
    clean, noisy = yardstick.robustness_letters(x_test, 0.5, seed=3)
    assert len(clean) == yardstick.ROBUSTNESS_LETTERS and np.array_equal(clean, x_test[:1000])
    assert np.array_equal(noisy, noise_addition(x_test[:1000], 0.5, seed=14))
    clean_v, noisy_v = yardstick.validation_letters(x_test, 0.5, seed=3)
    assert len(clean_v) == yardstick.VALIDATION_LETTERS == 130
    assert np.array_equal(yardstick.validation_letters(x_test, 0.5, seed=3)[1], noisy_v)  # seeded


def test_codes_of_one_letter_have_nothing_to_learn():
    z = np.random.default_rng(5).normal(size=(30, 2))
    measures = latent.latent_measures(z[:20], np.zeros(20, int), z[20:], np.arange(10), neighbours=3)
    assert measures["probe_accuracy"] is None and measures["knn_accuracy"] is None
    assert measures["active_units"] == 2
