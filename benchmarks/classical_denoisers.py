"""The classical denoisers, BM3D included, on the study's letters: what `--baselines all` would add.

    python benchmarks/classical_denoisers.py --noise-std 0.5 > benchmarks/results/CPU/classical-denoisers.json

The study measures BM3D only when asked (about a third of a second per
28 x 28 letter); this runs every method at the given noise levels on the
study's own letters, chosen as the study chooses them
(``study.yardstick``: parameters on 130 noisy training letters, scores on
the first 1,000 test letters), and prints one JSON object with the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise-std", default="0.5", help="comma list of noise levels")
    parser.add_argument("--methods", default="gaussian,median,nl_means,tv,bm3d")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from denoising_vae.core.runtime import start_tensorflow
    start_tensorflow()
    from denoising_vae import baselines
    from denoising_vae.data import input_read
    from denoising_vae.models.fast_path import machine_key
    from denoising_vae.study import yardstick

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (x_train, _), (x_test, _) = loaded = input_read(args.data, seed=args.seed)
    methods = tuple(args.methods.split(","))
    levels = {}
    started = time.perf_counter()
    for std in (float(v) for v in args.noise_std.split(",")):
        levels[f"{std:g}"] = baselines.compare_baselines(yardstick.validation_letters(x_train, std, args.seed),
                                                         yardstick.robustness_letters(x_test, std, args.seed),
                                                         std, methods)
    report = {"command": "python benchmarks/classical_denoisers.py " + " ".join(argv or sys.argv[1:]),
              "cpu": machine_key()["cpu"], "data": loaded.source.describe(), "seed": args.seed,
              "test_letters": min(len(x_test), yardstick.ROBUSTNESS_LETTERS),
              "validation_letters": yardstick.VALIDATION_LETTERS, "levels": levels,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
