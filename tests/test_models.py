"""models: the report's architectures, loss terms against numpy, saving and loading (also files saved before)."""
import random
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest

from denoising_vae import evaluation
from denoising_vae.core import constants
from denoising_vae.models import losses, vae
from conftest import EXPECTED_PARAMS, REPO, numpy_kl, numpy_reconstruction, weights_of


@pytest.mark.parametrize("name", constants.ARCHITECTURES)
def test_parameter_counts_equal_the_report(name):
    model = vae.build_model(name)
    assert vae.parameter_counts(model) == EXPECTED_PARAMS[name]
    assert model.count_params() == EXPECTED_PARAMS[name]["total"]


@pytest.mark.parametrize("name", constants.ARCHITECTURES)
@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_output_shapes(name, latent_dim):
    model = vae.build_model(name, latent_dim=latent_dim, seed=0)
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    assert tuple(model(x).shape) == (3, 28, 28, 1)
    z_mean, z_log_var, z = model.encode(x)
    assert tuple(z.shape) == (3, latent_dim) and model.latent_dim == latent_dim
    assert model.variational == (name != "ae") and (z_log_var is None) == (name == "ae")
    decoded = model.decoder(np.zeros((4, latent_dim), np.float32))
    assert tuple(decoded.shape) == (4, 28, 28, 1)
    assert 0 < float(np.min(decoded)) and float(np.max(decoded)) < 1


def test_arch3_decoder_follows_the_table():
    decoder = vae.build_model("arch3").decoder
    shapes = [(layer.name, tuple(layer.output.shape[1:])) for layer in decoder.layers[1:]]
    assert shapes == [("decoder_dense1", (128,)), ("decoder_reshape", (4, 4, 8)), ("decoder_conv1", (4, 4, 8)),
                      ("decoder_upsampling1", (8, 8, 8)), ("decoder_conv2", (8, 8, 8)),
                      ("decoder_upsampling2", (16, 16, 8)), ("decoder_conv3", (14, 14, 16)),
                      ("decoder_upsampling3", (28, 28, 16)), ("decoder_conv4", (28, 28, 1))]


def test_arch1_encoder_follows_the_table():
    encoder = vae.build_model("arch1").encoder
    shapes = [(type(layer).__name__, tuple(layer.output.shape[1:]) if not isinstance(layer.output, list)
               else None) for layer in encoder.layers[1:]]
    assert [s for _, s in shapes[:5]] == [(28, 28, 16), (14, 14, 16), (14, 14, 8), (7, 7, 8), (392,)]
    assert [t for t, _ in shapes[-3:]] == ["Dense", "Dense", "Sampling"]


def test_no_lambda_layers():
    for name in constants.ARCHITECTURES:
        model = vae.build_model(name)
        for layer in model.encoder.layers + model.decoder.layers:
            assert type(layer).__name__ != "Lambda"


def test_loss_terms_match_numpy():
    rng = np.random.default_rng(0)
    clean = rng.random((6, 28, 28, 1)).astype(np.float32)
    predicted = rng.random((6, 28, 28, 1)).astype(np.float32)
    mean = rng.normal(size=(6, 3)).astype(np.float32)
    log_var = rng.normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(losses.reconstruction_loss(clean, predicted)),
                               numpy_reconstruction(clean, predicted), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.kl_divergence(mean, log_var)), numpy_kl(mean, log_var),
                               rtol=1e-5)
    accuracy = ((clean > 0.5) == (predicted > 0.5)).reshape(6, -1).mean(1)
    np.testing.assert_allclose(np.asarray(losses.pixel_accuracy(clean, predicted)), accuracy, rtol=1e-6)
    # KL of the prior itself is 0.
    assert float(np.max(np.abs(losses.kl_divergence(np.zeros((2, 2)), np.zeros((2, 2)))))) == 0.0


def test_the_bernoulli_log_likelihood_broadcasts_samples_over_one_clean_batch():
    rng = np.random.default_rng(1)
    clean = rng.random((1, 4, 784)).astype(np.float32)
    predicted = np.concatenate([rng.random((3, 4, 784)), np.zeros((1, 4, 784)), np.ones((1, 4, 784))]).astype(np.float32)
    got = np.asarray(losses.bernoulli_log_likelihood(clean, predicted))
    assert got.shape == (5, 4)
    for k in range(5):  # each sample: the negative reconstruction loss, clipped at 0 and 1 too
        np.testing.assert_array_equal(got[k], -np.asarray(losses.reconstruction_loss(clean[0], predicted[k])))
    np.testing.assert_allclose(got[:3], -numpy_reconstruction(np.broadcast_to(clean, (3, 4, 784)).reshape(12, 784),
                                                              predicted[:3].reshape(12, 784)).reshape(3, 4), rtol=1e-5)


def test_sampling_config_round_trip():
    layer = vae.Sampling(seed=3, name="sampling")
    config = layer.get_config()
    assert config["seed"] == 3
    clone = vae.Sampling.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, vae.Sampling) and restored.get_config() == config


@pytest.mark.parametrize("name", constants.ARCHITECTURES)
def test_save_load_safe_mode_identical(name, tmp_path, letters):
    _, x_val = letters
    model = vae.build_model(name, seed=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    assert isinstance(loaded, vae.DenoisingVAE) and loaded.architecture == name
    assert vae.parameter_counts(loaded) == EXPECTED_PARAMS[name]
    np.testing.assert_array_equal(evaluation.reconstruct(model, x_val[:20]), evaluation.reconstruct(loaded, x_val[:20]))
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_load_in_a_fresh_process_after_importing_models(tmp_path, letters):
    _, x_val = letters
    model = vae.build_model("arch3", seed=0)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x_val[:10])
    np.save(tmp_path / "want.npy", evaluation.reconstruct(model, x_val[:10]))
    code = textwrap.dedent(f"""
        import numpy as np, keras
        from denoising_vae import evaluation  # registers the package's Keras classes
        model = keras.models.load_model({str(tmp_path / 'm.keras')!r})
        got = evaluation.reconstruct(model, np.load({str(tmp_path / 'x.npy')!r}))
        assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}))
        print("identical")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("identical"), out.stderr[-2000:]


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"Expected name to be one of \('arch1', 'arch2', 'arch3', 'ae'\). "
                                         r"Received: name='arch4'"):
        vae.build_model("arch4")


@pytest.mark.parametrize("latent_dim", [0, -1, 1.5])
def test_latent_dim_at_least_one(latent_dim):
    with pytest.raises(ValueError, match=r"Expected latent_dim to be an integer >= 1. Received: latent_dim="):
        vae.build_model("arch1", latent_dim=latent_dim)


@pytest.mark.parametrize("beta", [-0.5, float("nan")])
def test_beta_non_negative(beta):
    with pytest.raises(ValueError, match=r"Expected beta to be a finite number >= 0. Received: beta="):
        vae.build_model("arch1", beta=beta)


def test_a_model_saved_before_the_modules_were_split_still_loads():
    """tests/fixtures/arch3-before-split.keras was saved (one epoch, FusedAdam state included)
    by the single-module version; its registered names must keep loading."""
    fixtures = REPO / "tests" / "fixtures"
    model = vae.load_model(fixtures / "arch3-before-split.keras")
    assert isinstance(model, vae.DenoisingVAE) and model.architecture == "arch3"
    assert vae.parameter_counts(model) == EXPECTED_PARAMS["arch3"]
    assert type(model.optimizer).__name__ == "FusedAdam" and int(model.optimizer.iterations) == 3
    with np.load(fixtures / "arch3-before-split.npz") as stored:
        np.testing.assert_allclose(evaluation.reconstruct(model, stored["x"]), stored["reconstruction"],
                                   rtol=1e-5, atol=1e-6)


def test_a_model_saved_before_the_package_still_loads_and_computes_the_same():
    """tests/fixtures/arch3-before-package.keras was saved by ``python assignment_5.py --quick`` of the
    version whose modules sat side by side at the top (mixed bfloat16, two epochs, FusedAdam state);
    the .npz holds its reconstructions and latent means of eight fixed images, computed then."""
    fixtures = REPO / "tests" / "fixtures"
    model = vae.load_model(fixtures / "arch3-before-package.keras")
    assert model.architecture == "arch3" and vae.parameter_counts(model) == EXPECTED_PARAMS["arch3"]
    assert vae.precision_of(model) == "mixed_bfloat16"
    assert type(model.optimizer).__name__ == "FusedAdam" and int(model.optimizer.iterations) == 52
    with np.load(fixtures / "arch3-before-package.npz") as stored:
        np.testing.assert_array_equal(evaluation.reconstruct(model, stored["x"]), stored["reconstruction"])
        np.testing.assert_array_equal(evaluation.encode_mean(model, stored["x"]), stored["z_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arch2", "arch3"])
def test_initial_weights_do_not_depend_on_other_threads_drawing_from_python_random(name):
    # In a Dask worker the event loop's threads draw from Python's random while a
    # model is built; Keras took unseeded initializers' seeds from it, so the same
    # seed gave other weights from run to run (and other study results).
    reference = weights_of(vae.build_model(name, seed=5))
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        built = [weights_of(vae.build_model(name, seed=5)) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for weights in built:
        assert len(weights) == len(reference)
        for got, expected in zip(weights, reference):
            np.testing.assert_array_equal(got, expected)
