"""Training throughput and data-load times, side by side with the plain Keras and PyTorch anchors.

    python benchmarks/bench_training.py [--repeats 2] [--anchors ../shared/bench] [--n 62400]
                                        [--precisions auto,float32,mixed_bfloat16] [--noise fixed,fresh]
                                        [--noise-rounds 20]

Prints one JSON object. Per architecture: seconds per epoch of 62,400 images at
batch 100 and samples per second (warm-up epoch excluded, best of the
repeats), for the package's training path and, when the anchor scripts are
found (and PyTorch is installed for the torch one), for the anchors, run
alternately in the same run (the order reversed every other round); the
ratios; and the training loss after the same number of epochs on the same
data (the anchors' random binary images), to show that the speed does not
come from doing less work. Then the
data-load times: the full synthetic set and a full-size NIST-layout archive,
cold (nothing prepared) and warm (prepared cache).

``--precisions`` and ``--noise`` list the package's variants to measure: the
first of each is reported as ``ours``, the others as ``ours_<precision>``,
``ours_fixed_noise`` and so on (on a GPU, ``--precisions float32,mixed_bfloat16``
shows mixed precision off and on). By default ``ours`` is the study's own
path: ``auto`` precision and shards (timed and cached as the study does) with
fresh noise drawn in every step; ``ours_fixed_noise`` trains on one noisy
copy as the anchors do (the same work).

Each architecture also gets the fresh noise's share of a step, timed in turn
with fixed noise in one process (``noise_cost_in_turn``, see :func:`noise_cost`),
and its floating-point operations per image (counted
from the layers), the achieved GFLOP/s and the fraction of the CPU's float32
peak (derived from its vector width, FMA units and clock; see ``peak_gflops``).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANCHORS = REPO.parent / "shared" / "bench"


def ours(arch, n, epochs, precision="auto", noise="fixed"):
    """Seconds per epoch (mean after the warm-up) and final loss of the package's training path.

    ``noise="fixed"`` trains on one noisy copy of the data, as the anchors do
    (``train_model(fresh_noise=False)``); ``"fresh"`` draws new noise inside
    every step, as the study does by default.
    """
    code = f"""
import json, sys, time
from denoising_vae.core.runtime import start_tensorflow
start_tensorflow()
import numpy as np, keras, tensorflow as tf
from denoising_vae.models import fused, vae
from denoising_vae.training import inputs, step_timing
rng = np.random.default_rng(0)
x = (rng.random(({n}, 28, 28, 1)) > 0.8).astype("float32")   # the anchors' data
path = step_timing.choose_fast_path("arch{arch}", precision={precision!r})  # as the study does
model = vae.build_model("arch{arch}", seed=0, precision=path.precision)
model.shards = path.shards
model.compile(optimizer=fused.FusedAdam(1e-3),             # as train_model does
              steps_per_execution=inputs.default_steps_per_execution({n} // 100))
if {noise!r} == "fresh":
    model.train_noise_std = 0.5                               # fresh noise inside the step,
    model.resident_data = inputs.ResidentData(x, noise_std=0.5, batch_size=100)  # as train_model draws it
else:                                                         # the anchors' noisy copy
    noisy = np.clip(x + rng.normal(0, 0.5, x.shape).astype("float32"), 0, 1)
    model.resident_data = inputs.ResidentData(noisy, x)
data = inputs.index_dataset({n}, 100, shuffle_seed=0)
times = []
class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.start)
history = model.fit(data, epochs={epochs}, verbose=0, shuffle=False, callbacks=[Timer()])
device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
print(json.dumps({{"seconds_per_epoch": sum(times[1:]) / len(times[1:]), "epochs": times, "shards": model.shards,
                  "precision": vae.precision_of(model), "device": device, "path_source": path.source,
                  "path_step_ms": path.step_ms, "path_decide_seconds": path.decide_seconds,
                  "final_loss": history.history["loss"][-1]}}))
"""
    return _json_from([sys.executable, "-c", code])


def noise_cost(arch, rounds=20, steps=48):
    """The fresh noise's share of a training step, both paths timed in turn in one process.

    Two models on the study's path (``auto``, as :func:`ours`), one trained on
    a fixed noisy copy and one drawing fresh noise in every step, run blocks
    of ``steps`` compiled steps alternately for ``rounds`` rounds; the share
    is 1 - fixed / fresh, the median over rounds (and the quartiles, which
    show how noisy the machine was). Separate epoch runs (the
    ``ours`` and ``ours_fixed_noise`` columns) differ by as much from one run
    to the next on a noisy machine; timed in turn, a slow spell costs both alike.
    """
    code = f"""
import json, sys, time
from denoising_vae.core.runtime import start_tensorflow
start_tensorflow()
import numpy as np, keras, tensorflow as tf
from denoising_vae.models import fused, vae
from denoising_vae.training import inputs, step_timing
rng = np.random.default_rng(0)
x = (rng.random((2000, 28, 28, 1)) > 0.8).astype("float32")
noisy = np.clip(x + rng.normal(0, 0.5, x.shape).astype("float32"), 0, 1)
path = step_timing.choose_fast_path("arch{arch}")
index = tf.constant(np.random.default_rng(1).permutation(2000)[:100].astype("int64"))
def prepared(fresh):
    model = vae.build_model("arch{arch}", seed=0, precision=path.precision)
    model.shards = path.shards
    model.compile(optimizer=fused.FusedAdam(1e-3))
    model.optimizer.build(model.trainable_variables)
    if fresh:
        model.train_noise_std = 0.5
        model.resident_data = inputs.ResidentData(x, noise_std=0.5, batch_size=100)
    else:
        model.resident_data = inputs.ResidentData(noisy, x)
    step = tf.function(model.train_step, autograph=False)
    @tf.function(autograph=False)
    def block():
        for _ in range(8):
            logs = step(index)
        return logs["loss"]
    block()
    def timed():
        start = time.perf_counter()
        for _ in range({steps} // 8):
            loss = block()
        float(loss)
        return (time.perf_counter() - start) / ({steps} // 8 * 8)
    return timed
fixed, fresh = prepared(False), prepared(True)
fixed(), fresh()  # warm-up: the first blocks still settle (memory, oneDNN primitives)
pairs = [(fixed(), fresh()) for _ in range({rounds})]
shares = sorted(1 - a / b for a, b in pairs)
quarter = len(shares) // 4
print(json.dumps({{"share": round(shares[len(shares) // 2], 4), "shares": [round(v, 4) for v in shares],
                  "quartiles": [round(shares[quarter], 4), round(shares[-1 - quarter], 4)],
                  "fixed_step_ms": round(1000 * min(a for a, _ in pairs), 3),
                  "fresh_step_ms": round(1000 * min(b for _, b in pairs), 3),
                  "precision": path.precision, "shards": path.shards}}))
"""
    return _json_from([sys.executable, "-c", code])


def anchor(script, arch, n, epochs):
    return _json_from([sys.executable, str(script), "--arch", str(arch), "--epochs", str(epochs), "--n", str(n)])


def _json_from(command):
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def torch_available():
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def load_times():
    """Cold and warm load times of the full synthetic set and of a full-size EMNIST-layout archive."""
    import numpy as np

    from denoising_vae.data import sources, synthetic

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        for state in ("cold", "warm"):
            start = time.perf_counter()
            sources.input_read("synthetic", cache_dir=cache)
            results[f"synthetic_full_{state}_s"] = round(time.perf_counter() - start, 3)
        # NIST's balanced split has 112,800 train and 18,800 test images over 47 labels.
        archive = Path(folder) / "gzip.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
            for usage, count in (("train", 112_800), ("test", 18_800)):
                labels = np.repeat(np.arange(47, dtype=np.uint8), count // 47)
                images = synthetic.synthetic_letters(labels % 26, (9, count))
                header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
                zipped.writestr(f"gzip/emnist-balanced-{usage}-images-idx3-ubyte.gz",
                                gzip.compress(header + images.tobytes(), compresslevel=6))
                header = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
                zipped.writestr(f"gzip/emnist-balanced-{usage}-labels-idx1-ubyte.gz",
                                gzip.compress(header + labels.tobytes()))
        shutil.rmtree(cache / "prepared", ignore_errors=True)
        for state in ("cold", "warm"):
            start = time.perf_counter()
            (x, _), (xt, _) = sources.input_read(archive, cache_dir=cache)
            results[f"emnist_layout_full_{state}_s"] = round(time.perf_counter() - start, 3)
        results["emnist_layout_full_images"] = [len(x), len(xt)]
    return results


def cpu_model():
    """The CPU's model name with its family, model and stepping numbers, from /proc/cpuinfo
    (or the platform's word for it): virtual machines name different Xeons alike."""
    import platform
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    numbers = ", ".join(f"{label} {info[key]}" for key, label in (("cpu family", "family"), ("model", "model"),
                                                                   ("stepping", "stepping")) if key in info)
    return f"{info.get('model name', platform.machine())} ({numbers})"


def peak_gflops():
    """The CPU's float32 peak, cores x FMA units x vector lanes x 2 x clock, and how it was derived.

    Lanes: 16 with AVX-512 on Intel (two 512-bit FMA units per core assumed, as
    on Xeon Gold and Platinum), 8 with AVX2 or on AMD Zen 4 (its AVX-512 runs
    on 256-bit units), 4 otherwise. Clock: the "cpu MHz" the OS reports (a
    virtual machine reports the base clock; turbo would raise the peak).
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"gflops": None, "derivation": "no /proc/cpuinfo"}
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    mhz = next((float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")), None)
    amd = "AuthenticAMD" in info
    lanes = 8 if amd and "avx512f" in flags else 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2 if "fma" in flags or "avx512f" in flags else 1
    cores = os.cpu_count() or 1
    if mhz is None:
        return {"gflops": None, "derivation": "no clock in /proc/cpuinfo"}
    gflops = cores * fma_units * lanes * 2 * mhz / 1000
    return {"gflops": round(gflops, 1),
            "derivation": f"{cores} cores x {fma_units} FMA units x {lanes} float32 lanes x 2 FLOP per FMA "
                          f"x {mhz / 1000:.2f} GHz"}


def training_flops_per_image(name):
    """Floating-point operations of one training step per image, counted from the layers.

    Forward: 2 x multiply-adds of every Dense (inputs x units) and Conv2D
    (output pixels x kernel area x input x output channels), as the report's
    layers define them (the fused path does less for the upsampling pairs).
    Training = 3 x forward (the backward pass computes the gradients of the
    inputs and of the weights, each as costly as the forward; Kaplan et al.
    2020). Pooling, activations, noise and the optimizer are left out.
    """
    from keras import layers

    from denoising_vae.models import vae

    model = vae.build_model(name)
    forward = 0
    for layer in model.encoder.layers + model.decoder.layers:
        if isinstance(layer, layers.Dense):
            forward += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, layers.Conv2D):
            out_h, out_w = layer.output.shape[1:3]
            kh, kw, cin, cout = layer.kernel.shape
            forward += 2 * out_h * out_w * kh * kw * cin * cout
    return 3 * forward


def choices_list(allowed):
    """argparse type: a comma-separated list of values from ``allowed``."""
    def parse(text):
        values = text.split(",")
        wrong = [value for value in values if value not in allowed]
        if wrong or not text:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}; "
                                             f"received {text!r}")
        return values
    return parse


def at_least(minimum):
    """argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; received {text!r}")
        return value
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=at_least(1), default=2, help="alternating rounds per architecture")
    parser.add_argument("--epochs", type=at_least(2), default=3,
                        help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--n", type=at_least(100), default=62_400, help="training images per epoch")
    parser.add_argument("--archs", type=choices_list(("1", "2", "3")), default="1,2,3")
    parser.add_argument("--anchors", default=str(DEFAULT_ANCHORS), help="folder of keras_anchor.py, torch_anchor.py")
    parser.add_argument("--precisions", type=choices_list(("auto", "float32", "mixed_bfloat16")), default="auto",
                        help="comma-separated precisions of the package to measure (auto, float32, mixed_bfloat16)")
    parser.add_argument("--noise", type=choices_list(("fixed", "fresh")), default="fresh,fixed",
                        help="noise modes of the package to measure: fixed (one noisy copy, as the anchors), "
                             "fresh (new noise every step)")
    parser.add_argument("--noise-rounds", type=at_least(1), default=20,
                        help="rounds of the fixed / fresh noise steps timed in turn (noise_cost_in_turn)")
    parser.add_argument("--skip-load", action="store_true", help="skip the data-load measurements")
    args = parser.parse_args(argv)
    anchors = Path(args.anchors)
    precisions, noises = args.precisions, args.noise
    runners = {}
    for precision in precisions:  # "ours" is the first of each list, the others are named by what differs
        for noise in noises:
            name = "_".join(["ours"] + [precision] * (precision != precisions[0])
                            + [f"{noise}_noise"] * (noise != noises[0]))
            runners[name] = lambda a, precision=precision, noise=noise: ours(a, args.n, args.epochs, precision, noise)
    if (anchors / "keras_anchor.py").is_file():
        runners["keras"] = lambda a: anchor(anchors / "keras_anchor.py", a, args.n, args.epochs)
    if (anchors / "torch_anchor.py").is_file() and torch_available():
        runners["torch"] = lambda a: anchor(anchors / "torch_anchor.py", a, args.n, args.epochs)
    report = {"n": args.n, "batch_size": 100, "repeats": args.repeats, "cpu_count": os.cpu_count(),
              "cpu": cpu_model(), "peak": peak_gflops(), "architectures": {}}
    for arch in (int(a) for a in args.archs):
        runs = {name: [] for name in runners}
        order = list(runners.items())
        for round_index in range(args.repeats):
            # Alternate, so slow spells hit every runner alike, and reverse the
            # order every other round (A B C D, D C B A), so no runner always goes first.
            for name, run in (order if round_index % 2 == 0 else order[::-1]):
                runs[name].append(run(arch))
        entry = {}
        for name, results in runs.items():
            good = [r for r in results if "seconds_per_epoch" in r]
            if not good:
                entry[name] = {"error": results[-1].get("error")}
                continue
            best = min(good, key=lambda r: r["seconds_per_epoch"])
            entry[name] = {"seconds_per_epoch": round(best["seconds_per_epoch"], 3),
                           "samples_per_second": round(args.n / best["seconds_per_epoch"], 1),
                           "all_seconds_per_epoch": [round(r["seconds_per_epoch"], 3) for r in good],
                           "final_loss": round(float(best["final_loss"]), 3)}
            for key in ("precision", "shards", "device", "path_source", "path_step_ms", "path_decide_seconds"):
                if key in best:
                    entry[name][key] = best[key]
        for mine in (name for name in runners if name.startswith("ours")):
            prefix = "" if mine == "ours" else f"{mine}_"
            for name in ("keras", "torch"):
                if "seconds_per_epoch" in entry.get(name, {}) and "seconds_per_epoch" in entry[mine]:
                    speedup = entry[name]["seconds_per_epoch"] / entry[mine]["seconds_per_epoch"]
                    entry[f"{prefix}speedup_vs_{name}"] = round(speedup, 2)
                    entry[f"{prefix}loss_difference_vs_{name}"] = round(
                        entry[mine]["final_loss"] - entry[name]["final_loss"], 3)
        if any(name.startswith("ours") for name in runners):
            entry["noise_cost_in_turn"] = noise_cost(arch, rounds=args.noise_rounds)
        flops = training_flops_per_image(f"arch{arch}")
        entry["flops"] = {"forward_per_image": flops / 3, "training_per_image": flops}
        for mine in (name for name in runners if name.startswith("ours")):
            if "samples_per_second" in entry.get(mine, {}):
                achieved = flops * entry[mine]["samples_per_second"] / 1e9
                entry[mine]["gflops"] = round(achieved, 2)
                if report["peak"]["gflops"]:
                    entry[mine]["fraction_of_peak"] = round(achieved / report["peak"]["gflops"], 4)
        report["architectures"][f"arch{arch}"] = entry
        print(json.dumps({f"arch{arch}": entry}), file=sys.stderr, flush=True)
    if not args.skip_load:
        report["data_load"] = load_times()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
