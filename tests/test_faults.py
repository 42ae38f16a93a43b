"""Faults a user causes: two runs on one folder, a killed run's lock, divergence, damaged files, noise, a full
checkpoint disk, a stop signal that library code turns into another error or swallows (Ctrl-C and SIGTERM in
every phase are in test_stops.py, random kills in test_kill_anywhere.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from denoising_vae.core import files, runtime as startup
from denoising_vae.data import sources
from denoising_vae.models import vae
from denoising_vae.study import cli
from denoising_vae.study import config as study_config, resources
from denoising_vae.training import loop
from conftest import REPO

# The classical denoisers are left out where a test is about something else (tests/test_yardstick.py).
SLOW = ["--data", "synthetic", "--train-size", "1300", "--test-size", "52", "--epochs", "4", "--models", "ae",
        "--precision", "float32", "--baselines", "none"]
SMALL = ["--data", "synthetic", "--train-size", "260", "--test-size", "52", "--epochs", "1", "--precision", "float32",
         "--baselines", "none"]


def launch(flags, out, **options):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "assignment_5.py"), *flags, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **options)


def wait_for(condition, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def checkpoint_saved(out):
    return lambda: any((out / "checkpoints" / "ae").glob("checkpoint-epoch*.keras"))


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_and_a_killed_runs_lock_blocks_nothing(tmp_path):
    out = tmp_path / "run"
    first = launch(SLOW, out)
    try:
        assert wait_for(lambda: (out / ".lock").is_file() and (out / ".lock").read_text().startswith("pid"))
        second = launch(SLOW, out)
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2
        assert stderr.strip() == (f"assignment_5.py: error: --out {out} is in use by another run "
                                  f"(pid {first.pid}); wait for it to finish or choose another --out")
        assert first.poll() is None  # the first run goes on
        assert wait_for(checkpoint_saved(out))
        first.send_signal(signal.SIGKILL)  # dies holding the lock
        first.wait(timeout=60)
    finally:
        first.kill()
    third = launch(SLOW, out)
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr
    assert "ae: resumed after epoch" in stdout


def test_a_diverging_model_names_model_epoch_and_flag_and_keeps_finished_results(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = loop.train_model

    def diverge_for_arch2(model, *args, **kwargs):
        if model.architecture == "arch2":
            raise loop.NonFiniteLossError("training diverged: loss became nan in epoch 1 at batch 2", epoch=1)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "train_model", diverge_for_arch2)  # in this process: one worker
    assert cli.main(SMALL + ["--models", "ae,arch2", "--workers", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "arch2: training diverged in epoch 1" in err and "lower --learning-rate (now 0.001)" in err
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"ae"}


def test_a_real_divergence_names_its_epoch(tmp_path):
    x = __import__("numpy").random.default_rng(0).random((200, 28, 28, 1)).astype("float32")

    with pytest.raises(loop.NonFiniteLossError, match=r"in epoch 1 at batch \d+; lower the learning rate "
                                                          r"\(now 1e\+09\)") as raised:
        loop.train_model(vae.build_model("arch2", seed=0), x, x[:100], run_dir=tmp_path, epochs=2,
                             learning_rate=1e9, verbose=0)
    assert raised.value.epoch == 1


@pytest.mark.slow
def test_a_damaged_results_json_is_kept_aside_and_rebuilt(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    good = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text('{"data": {"source": "synth')  # truncated by a crash
    capsys.readouterr()
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "results.json is unreadable" in err and "kept as results.json.damaged" in err
    assert (out / "results.json.damaged").read_text().startswith('{"data"')
    rebuilt = json.loads((out / "results.json").read_text())
    assert rebuilt["models"]["ae"]["test"] == good["models"]["ae"]["test"]  # the same model, evaluated again


@pytest.mark.slow
def test_a_damaged_final_model_is_evaluated_again_from_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    (out / "ae.keras").write_bytes(b"not a model")
    capsys.readouterr()
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    assert "ae.keras is unreadable" in capsys.readouterr().err
    assert (out / "ae.keras").stat().st_size > 1000


def test_a_damaged_history_keeps_its_good_rows(tmp_path, caplog):
    (tmp_path / "history.csv").write_text("epoch,loss,seconds\n1,3.5,1.0\n2,3.")
    rows = loop.read_history(tmp_path)
    assert rows == [{"epoch": 1, "loss": 3.5, "seconds": 1.0}]
    assert "history.csv is damaged after 1 rows" in caplog.text


@pytest.mark.slow
def test_a_run_folder_made_on_other_images_of_the_same_source_is_refused(tmp_path, capsys, monkeypatch):

    out = tmp_path / "run"
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    stored = json.loads((out / "results.json").read_text())["data"]
    assert len(stored["digest"]) == 16
    # A changed generator: same source, sizes and seed, other letters.
    drawn = sources.synthetic_letters
    monkeypatch.setattr(sources, "synthetic_letters", lambda labels, seed, bank_cache=None:
                        255 - drawn(labels, seed, bank_cache=bank_cache))
    monkeypatch.setattr(sources, "generator_key", lambda: "a-changed-generator")
    capsys.readouterr()
    assert cli.main(SMALL + ["--models", "ae,arch2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"assignment_5.py: error: --out {out} holds results on other images of the same source "
        f"({stored['description']}; the generator or the archive changed since); choose another --out\n")
    assert set(json.loads((out / "results.json").read_text())["models"]) == {"ae"}  # nothing lost


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert cli.main(SMALL + ["--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {target} is not a writable folder" in err


def test_tensorflow_start_up_notices_are_recognised():
    for line in (
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "I0000 00:00:1795962007.200751   21986 port.cc:153] oneDNN custom operations are on. You may see",
            "I0000 00:00:1795962007.201223   21986 cudart_stub.cc:31] Could not find cuda drivers on your machine",
            "E0000 00:00:1795962013.791221   21986 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error"):
        assert startup.is_startup_noise(line), line
    assert not startup.is_startup_noise("assignment_5.py: error: --out x is not a writable folder")
    assert not startup.is_startup_noise("E0000 00:00:1.0   1 some_kernel.cc:9] a real error")


def test_sizes_that_cannot_fit_are_refused_before_anything_is_allocated(tmp_path, capsys, monkeypatch):
    # The memory available now, held still: other processes (the suite's other half) change it meanwhile.
    available = resources.available_memory()
    monkeypatch.setattr(resources, "available_memory", lambda: available)
    monkeypatch.setattr(cli, "available_memory", lambda: available)
    out = tmp_path / "run"
    assert cli.main(["--data", "synthetic", "--train-size", "100000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train-size 100,000,000 needs about" in err
    assert "GiB available; the largest --train-size that fits is about" in err
    largest = int(err.rsplit("about ", 1)[1].strip().replace(",", ""))
    config = study_config.StudyConfig(train_size=largest)
    assert resources.memory_needed(largest, None) <= resources.available_memory()
    assert resources.memory_needed(int(largest * 1.01) + 10, None) > resources.available_memory()
    assert config.train_size == largest and not (out / "results.json").exists()


def test_sizes_beyond_real_emnist_are_refused(tiny_zip, tmp_path, capsys):
    path, _ = tiny_zip
    assert cli.main(["--data", str(path), "--train-size", "100000", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_size" in err


@pytest.mark.slow
def test_without_a_writable_cache_the_run_works_uncached_with_one_warning(tmp_path, monkeypatch, caplog, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("HOME", str(blocker))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    monkeypatch.delenv("DENOISING_VAE_NO_CACHE", raising=False)
    out = tmp_path / "run"
    assert cli.main(SMALL + ["--models", "ae", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["models"]["ae"]["epochs"] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: no writable cache folder" in err
    assert not [r.getMessage() for r in caplog.records  # nothing of the package's complained
                if r.levelname == "WARNING" and r.name.startswith("denoising_vae")]
    # Uncached for the run only: a notebook that runs a study keeps its caches afterwards.
    assert "DENOISING_VAE_NO_CACHE" not in os.environ


def limit_file_size(limit):
    """For a child process: files larger than ``limit`` bytes fail to write (EFBIG), as on a full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error to handle, not a signal that kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_naming_the_file_and_the_same_command_resumes(tmp_path):
    # arch3's files are small; arch2's checkpoint (weights and Adam's state, about 10 MB) does not fit.
    out = tmp_path / "run"
    flags = SMALL + ["--epochs", "2", "--models", "arch3,arch2", "--workers", "1"]
    process = launch(flags, out, preexec_fn=limit_file_size(4_000_000))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"assignment_5.py: error writing {out / 'checkpoints' / 'arch2'}/checkpoint-epoch1.keras: "
                               "File too large; finished models are kept"), stderr
    assert list(json.loads((out / "results.json").read_text())["models"]) == ["arch3"]
    assert vae.load_model(out / "arch3.keras").architecture == "arch3"
    again = launch(flags, out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "arch3: already finished" in stdout and "arch2: test loss" in stdout


def _library_code_turning_a_stop_into_another_error(sig):
    """A run that meets ``sig`` as TensorFlow's tracing (C++ calling back into Python) once met a
    SIGTERM: the handler's exception came out of it as another error."""
    def run(*args):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(10)
        except BaseException:
            raise AttributeError("'SymbolicTensor' object has no attribute '_type_spec'") from None
    return run


@pytest.mark.parametrize("sig, word, status", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_stop_that_library_code_turned_into_another_error_still_ends_as_the_signal_asks(
        monkeypatch, tmp_path, capsys, sig, word, status):
    monkeypatch.setattr(cli, "_run", _library_code_turning_a_stop_into_another_error(sig))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["--quick", "--out", str(tmp_path / "run")]) == status
    assert capsys.readouterr().err == (f"assignment_5.py: {word}; run the same command again to resume from "
                                       f"{tmp_path / 'run'}\n")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def _library_code_swallowing_a_stop(sig, out):
    """A run that meets ``sig`` as TensorFlow's tracing once met a SIGTERM: it printed the exception through
    ``sys.excepthook`` (as ``PyErr_Print`` does) and went on; the run then writes its report."""
    def run(*args):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(10)
        except BaseException:
            sys.excepthook(*sys.exc_info())
        files.write_text(out / "report.md", "# Denoising VAEs\n")
    return run


@pytest.mark.parametrize("sig, word, status", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_stop_that_library_code_swallowed_ends_the_run_before_its_next_write(
        monkeypatch, tmp_path, capsys, sig, word, status):
    out = tmp_path / "run"
    monkeypatch.setattr(cli, "_run", _library_code_swallowing_a_stop(sig, out))
    hook = sys.excepthook
    assert cli.main(["--quick", "--out", str(out)]) == status
    assert capsys.readouterr().err == f"assignment_5.py: {word}; run the same command again to resume from {out}\n"
    assert not (out / "report.md").exists() and sys.excepthook is hook
    files.write_text(out / "report.md", "written")  # the stop ended with its run
    assert (out / "report.md").read_text() == "written"
