"""training: run folders, learning, resume (also after SIGKILL), damaged checkpoints, divergence, bad input."""
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from denoising_vae import evaluation
from denoising_vae.models import vae
from denoising_vae.training import inputs, loop
from conftest import REPO, weights_of


def test_one_training_step_changes_weights_and_is_finite(letters):
    x, _ = letters
    model = vae.build_model("arch1", seed=0)
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
    result = loop.train_model(vae.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=3,
                                seed=0, verbose=0)
    assert result.epochs == 3 and result.resumed_from == 0 and result.train_seconds > 0
    assert set(result.history) == {"loss", "reconstruction", "kl", "accuracy",
                                   "val_loss", "val_reconstruction", "val_kl", "val_accuracy"}
    assert all(len(v) == 3 for v in result.history.values())
    assert result.history["loss"][-1] < result.history["loss"][0]
    rows = loop.read_history(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [p.name for p in tmp_path.glob("checkpoint-epoch*.keras")] == ["checkpoint-epoch3.keras"]
    np.testing.assert_allclose([r["val_loss"] for r in rows], result.history["val_loss"])


@pytest.mark.slow
def test_same_seed_gives_equal_weights_and_metrics(letters, tmp_path):
    x, x_val = letters
    runs = [loop.train_model(vae.build_model("arch3", seed=5), x, x_val, run_dir=tmp_path / str(i),
                               epochs=2, seed=5, verbose=0) for i in range(2)]
    for a, b in zip(weights_of(runs[0].model), weights_of(runs[1].model)):
        np.testing.assert_array_equal(a, b)
    # With two shards the logged running "loss" (reconstruction + beta * kl, summed
    # per step) has been seen to differ in its last bit (6e-5 of 540) between runs
    # whose weights and other metrics agree bit for bit; one shard never did. Found
    # for seed 6 on the code before the Box-Muller noise too; cause not yet known.
    first, second = dict(runs[0].history), dict(runs[1].history)
    for running in ("loss", "val_loss"):  # also seen in val_loss, as the same summed metric
        np.testing.assert_allclose(first.pop(running), second.pop(running), rtol=3e-7)
    assert first == second
    other = loop.train_model(vae.build_model("arch3", seed=6), x, x_val, run_dir=tmp_path / "other",
                               epochs=2, seed=6, verbose=0)
    assert other.history != runs[0].history


def test_fixed_noise_option_trains(letters, tmp_path):
    x, x_val = letters
    result = loop.train_model(vae.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=2,
                                fresh_noise=False, verbose=0)
    assert result.epochs == 2 and result.model.train_noise_std == 0.0
    assert result.history["kl"] == [0.0, 0.0]


@pytest.mark.slow
def test_resume_continues_to_the_same_total(letters, tmp_path):
    x, x_val = letters
    first = loop.train_model(vae.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=2,
                               verbose=0)
    assert first.epochs == 2
    resumed = loop.train_model(vae.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=4,
                                 verbose=0)
    assert resumed.resumed_from == 2 and resumed.epochs == 4
    assert [r["epoch"] for r in loop.read_history(tmp_path)] == [1, 2, 3, 4]
    assert resumed.history["loss"][:2] == first.history["loss"]
    assert resumed.train_seconds >= first.train_seconds
    # The optimizer state came back with the checkpoint: Adam's step counter is 4 epochs' worth.
    assert int(resumed.model.optimizer.iterations.numpy()) == 4 * 3
    done = loop.train_model(vae.build_model("arch1", seed=0), x, x_val, run_dir=tmp_path, epochs=4,
                              verbose=0)
    assert done.resumed_from == 4 and done.epochs == 4 and done.history == resumed.history


@pytest.mark.slow
def test_resume_after_sigkill(letters, tmp_path):
    x, x_val = letters
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xv.npy", x_val)
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import time, numpy as np, keras
        from denoising_vae.models import vae
        from denoising_vae.training import loop
        class Slow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                time.sleep(1.5)
        loop.train_model(vae.build_model("arch2", seed=0), np.load({str(tmp_path / 'x.npy')!r}),
                             np.load({str(tmp_path / 'xv.npy')!r}), run_dir={str(run)!r}, epochs=4, verbose=0,
                             callbacks=[Slow()])
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(loop.read_history(run) if run.exists() else []) < 2:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert len(loop.read_history(run)) in (2, 3)
    resumed = loop.train_model(vae.build_model("arch2", seed=0), x, x_val, run_dir=run, epochs=4, verbose=0)
    assert resumed.resumed_from >= 1 and resumed.epochs == 4
    assert [r["epoch"] for r in loop.read_history(run)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_damaged_checkpoint_is_not_trusted(letters, tmp_path):
    x, x_val = letters
    loop.train_model(vae.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    (tmp_path / "checkpoint-epoch1.keras").write_bytes(b"damaged")
    again = loop.train_model(vae.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    assert again.resumed_from == 0 and again.epochs == 1


def test_run_folder_of_another_configuration_is_refused(letters, tmp_path):
    x, x_val = letters
    loop.train_model(vae.build_model("ae", seed=0), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"run_dir .* holds a run with architecture='ae', not 'arch3'"):
        loop.train_model(vae.build_model("arch3"), x, x_val, run_dir=tmp_path, epochs=1, verbose=0)


def test_non_finite_loss_stops_with_a_clear_error(letters, tmp_path):
    x, x_val = letters
    with pytest.raises(loop.NonFiniteLossError, match=r"training diverged: loss became (nan|inf)"):
        loop.train_model(vae.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=3,
                           learning_rate=1e38, verbose=0)


def test_early_stopping_restores_best_weights(letters, tmp_path):
    x, x_val = letters
    result = loop.train_model(vae.build_model("arch2", seed=0), x, x_val, run_dir=tmp_path, epochs=40,
                                learning_rate=0.05, early_stopping_patience=1, verbose=0)
    assert result.stopped_early and result.epochs < 40
    assert min(result.history["val_loss"]) < result.history["val_loss"][-1]
    # The returned model holds the best weights, and so does best.keras.
    restored = vae.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(evaluation.reconstruct(restored, x_val[:5]),
                                  evaluation.reconstruct(result.model, x_val[:5]))


@pytest.mark.parametrize("argument", ["epochs", "batch_size"])
@pytest.mark.parametrize("value", [0, -2])
def test_epochs_and_batch_size_at_least_one(argument, value, letters, tmp_path):
    x, x_val = letters
    with pytest.raises(ValueError, match=rf"Expected {argument} to be an integer >= 1. Received: {argument}={value}"):
        loop.train_model(vae.build_model("ae"), x, x_val, run_dir=tmp_path, **{argument: value})


def test_training_data_with_nan_rejected(letters, tmp_path):
    x, x_val = letters
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"Expected x_train with finite values"):
        loop.train_model(vae.build_model("ae"), bad, x_val, run_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_training_data_out_of_range_or_misshapen(letters, tmp_path):
    x, x_val = letters
    with pytest.raises(ValueError, match=r"Expected x_val with values in \[0, 1\]"):
        loop.train_model(vae.build_model("ae"), x, x_val * 255, run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Expected x_train with shape \(N, 28, 28\) or \(N, 28, 28, 1\)"):
        loop.train_model(vae.build_model("ae"), x.reshape(-1, 784), x_val, run_dir=tmp_path)


@pytest.mark.parametrize("batches, expected", [(1, 1), (26, 26), (50, 50), (104, 26), (624, 48), (521, 50)])
def test_steps_per_execution_divides_the_epoch_when_it_can(batches, expected):
    assert inputs.default_steps_per_execution(batches) == expected


# --------------------------------------------------------------------------
# Fresh training noise from the noise ring
# --------------------------------------------------------------------------

def _ring_fields(ring, steps, count=100):
    import tensorflow as tf
    draw = tf.function(lambda: ring.fields(count))
    return np.stack([draw().numpy().reshape(count, -1) for _ in range(steps)])


def test_standard_normal_matches_the_normal_distribution():
    import tensorflow as tf
    from scipy import stats
    values = inputs.standard_normal((500, 784), tf.constant([5, 1], tf.int64)).numpy()
    assert values.shape == (500, 784) and values.dtype == np.float32
    # Kolmogorov-Smirnov against N(0, 1) over 392,000 values: a wrong
    # transform (say, a missing factor 2 under the root) fails by far.
    assert stats.kstest(values.ravel(), "norm").pvalue > 1e-3
    assert abs(np.mean(np.abs(values) > 3) - 0.0027) < 0.0005
    # cos and sin halves are independent of each other.
    flat = values.ravel()
    assert abs(np.corrcoef(flat[:flat.size // 2], flat[flat.size // 2:])[0, 1]) < 0.01
    assert np.abs(values).max() <= np.sqrt(-2 * np.log(2.0 ** -24)) + 1e-5
    again = inputs.standard_normal((500, 784), tf.constant([5, 1], tf.int64)).numpy()
    other = inputs.standard_normal((500, 784), tf.constant([5, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(values, again)
    assert not np.array_equal(values, other)


def test_standard_normal_needs_an_even_count():
    import tensorflow as tf
    with pytest.raises(ValueError, match=r"^Expected shape to hold an even number of values\. "
                                         r"Received: shape=\(3, 5\)$"):
        inputs.standard_normal((3, 5), tf.constant([0, 0], tf.int64))


@pytest.mark.slow
def test_noise_ring_fields_are_standard_normal_and_never_repeat():
    ring = inputs.NoiseRing(0.5, 100, seed=3)
    fields = _ring_fields(ring, 700)  # longer than a row lives (4096 / 13 = 315 steps)
    assert fields.shape == (700, 100, 784) and fields.dtype == np.float32
    values = fields.ravel()
    assert abs(values.mean()) < 0.002 and abs(values.std() - 1) < 0.002
    # The normal's tails: P(|x| > 3) = 0.0027.
    assert abs(np.mean(np.abs(values) > 3) - 0.0027) < 0.0003
    flat = fields.reshape(-1, 784)
    assert len({row.tobytes() for row in flat}) == len(flat)
    # Pixels of one field are independent: neighbouring pixels uncorrelated.
    assert abs(np.corrcoef(flat[:, :-1].ravel(), flat[:, 1:].ravel())[0, 1]) < 0.005
    # The same batch position in successive steps: uncorrelated fields.
    successive = [np.corrcoef(fields[i, j], fields[i + 1, j])[0, 1]
                  for i in range(0, 600, 7) for j in range(0, 100, 9)]
    assert abs(np.mean(successive)) < 0.01 and np.max(np.abs(successive)) < 0.2


def test_noise_ring_is_deterministic_per_seed():
    first = _ring_fields(inputs.NoiseRing(0.5, 100, seed=3), 5)
    np.testing.assert_array_equal(first, _ring_fields(inputs.NoiseRing(0.5, 100, seed=3), 5))
    assert not np.array_equal(first, _ring_fields(inputs.NoiseRing(0.5, 100, seed=4), 5))


@pytest.mark.parametrize("batch_size", [1, 7, 100, 128, 1000])
@pytest.mark.parametrize("reuse", [1, 8, 64])
def test_noise_ring_rows_outlive_no_shift_cycle(batch_size, reuse):
    ring = inputs.NoiseRing(0.5, batch_size, reuse=reuse)
    assert ring.rows & (ring.rows - 1) == 0 and ring.rows >= batch_size
    assert ring.rows / ring.renewed <= 784  # so a row's uses always differ in their shift


def test_noise_ring_noisy_batch_is_the_clipped_sum():
    import tensorflow as tf
    clean = np.random.default_rng(0).random((40, 28, 28, 1), dtype=np.float32)
    ring, twin = inputs.NoiseRing(0.5, 40, seed=1), inputs.NoiseRing(0.5, 40, seed=1)
    noisy = tf.function(ring.noisy)(tf.constant(clean)).numpy()
    expected = np.clip(clean + 0.5 * tf.function(lambda: twin.fields(40))().numpy(), 0, 1)
    np.testing.assert_allclose(noisy, expected, atol=1e-6)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not np.array_equal(noisy, clean)


def test_noise_ring_bad_arguments():
    with pytest.raises(ValueError, match=r"^Expected reuse to be at most 64\. Received: reuse=65$"):
        inputs.NoiseRing(0.5, 100, reuse=65)
    with pytest.raises(ValueError, match=r"^Expected noise_std to be a finite number >= 0\. Received: noise_std=nan$"):
        inputs.NoiseRing(float("nan"), 100)
    with pytest.raises(ValueError, match=r"^Expected batch_size to be an integer >= 1\. Received: batch_size=0$"):
        inputs.NoiseRing(0.5, 0)
    with pytest.raises(ValueError, match=r"^Expected count to be at most batch_size=10\. Received: count=11$"):
        inputs.NoiseRing(0.5, 10).fields(11)
    with pytest.raises(ValueError,
                       match=r"^Expected one array \(the clean images\) with noise_std\. Received: 2 arrays$"):
        inputs.ResidentData(np.zeros((2, 28, 28), np.float32), np.zeros((2, 28, 28), np.float32), noise_std=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arch3", "arch2"])
def test_a_resumed_run_is_the_uninterrupted_run(letters, tmp_path, name):
    # Stopped after epoch 2 and resumed: the noise ring, the shuffling and the sampling's
    # stream continue as if nothing happened, so the weights and metrics are the same bits.
    x, x_val = letters
    settings = dict(batch_size=50, seed=4, verbose=0, shards=1)
    whole = loop.train_model(vae.build_model(name, seed=4), x, x_val, run_dir=tmp_path / "whole", epochs=4,
                             **settings)
    loop.train_model(vae.build_model(name, seed=4), x, x_val, run_dir=tmp_path / "parts", epochs=2, **settings)
    resumed = loop.train_model(vae.build_model(name, seed=4), x, x_val, run_dir=tmp_path / "parts", epochs=4,
                               **settings)
    assert resumed.resumed_from == 2
    # The logged "loss" and "val_loss" may differ in their last bit, as between two uninterrupted
    # runs (test_same_seed_gives_equal_weights_and_metrics); every other number is the same.
    first, second = dict(resumed.history), dict(whole.history)
    for running in ("loss", "val_loss"):
        np.testing.assert_allclose(first.pop(running), second.pop(running), rtol=3e-7)
    assert first == second
    for a, b in zip(weights_of(resumed.model), weights_of(whole.model)):
        np.testing.assert_array_equal(a, b)


def test_a_rebuilt_noise_ring_continues_the_uninterrupted_one():
    running = inputs.NoiseRing(0.5, batch_size=20, seed=9, reuse=8)
    drawn = [running.fields(20).numpy() for _ in range(700)]  # longer than a row lives
    for start in (1, 3, 650):
        rebuilt = inputs.NoiseRing(0.5, batch_size=20, seed=9, reuse=8, start_step=start)
        np.testing.assert_array_equal(rebuilt.fields(20).numpy(), drawn[start])
        np.testing.assert_array_equal(rebuilt.fields(20).numpy(), drawn[start + 1])
