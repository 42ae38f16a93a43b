"""How EMNIST-like the synthetic letters are: a letter classifier trained on them, tested on real capitals.

    python benchmarks/realism.py ZIP [--train-size 20800] [--seed 1] [--seeds 1] [--epochs 8] [--json OUT]
    python benchmarks/realism.py ZIP --reference [--seed 0] [--seeds 6]

ZIP is an archive in NIST's layout (``gzip.zip``, or a sample of it). A small
CNN (Conv2D 32 - pool - Conv2D 64 - pool - dropout 0.3 - Dense 128 - Dense 26;
Adam with Keras' defaults, batch 128, ``keras.utils.set_random_seed(0)``) is
trained on ``input_read("synthetic", train_size, test_size=1040, seed)`` alone
and then classifies every real capital of ZIP (its train and test splits
together). One JSON object is printed: overall and per-letter accuracy on the
real letters, the confusions that cost most (true letter -> predicted, share of
that letter's images), the accuracy on held-out synthetic letters, and how long
generating the synthetic set took.

With ``--seeds K`` the measurement is repeated on K synthetic sets (seeds
``seed`` to ``seed + K - 1``; the classifier's own seed stays 0) and the JSON
object is ``{"summary": ..., "runs": [one object as above per set]}``, the
summary giving the mean, sample standard deviation and range of the overall
accuracy, each letter's mean and lowest accuracy over the sets, and how many
sets have every letter at 60 % or more.
Letters whose forms overlap in real handwriting (a plain bar is an I or an l)
swing by tens of points from one set to the next, so one set's worst letter
says little on its own.

``--reference`` measures the yardstick instead: the same classifier trained
on ZIP's own training capitals (Keras seeds ``seed`` to ``seed + K - 1``)
and tested on its test capitals, in the same JSON shape (``"trained_on":
"real"``). It says how far real letters take the classifier, and how much
each letter swings with the classifier's seed alone.

Real letters only ever measure: nothing from ZIP is written anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def classifier(keras):
    """The issue's fixed classifier: (N, 28, 28, 1) float32 in [0, 1] -> 26 softmax probabilities."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.3),
        layers.Dense(128, activation="relu"), layers.Dense(26, activation="softmax"),
    ])


def train_classifier(x, y, epochs=8, seed=0):
    """The classifier trained on ``x`` float32 (N, 28, 28, 1) in [0, 1], ``y`` int (N,) in 0-25.

    ``seed`` seeds Keras (initial weights, dropout, batch order); the issue's setting is 0.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = classifier(keras)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    return model


def real_capitals(archive, usages=("train", "test")):
    """The capitals of ``archive``'s splits ``usages``: float32 (N, 28, 28, 1) in [0, 1], int64 (N,)."""
    import numpy as np

    from denoising_vae.data import read_emnist_capitals

    parts = [read_emnist_capitals(archive, usage) for usage in usages]
    images = np.concatenate([images for images, _ in parts]).astype(np.float32)[..., None] / 255
    labels = np.concatenate([labels for _, labels in parts])
    return images, labels


def confusion_report(labels, predicted, letters, top=10):
    """Per-letter accuracy and the ``top`` costliest confusions (share of the true letter's images)."""
    import numpy as np

    matrix = np.zeros((len(letters), len(letters)), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_letter = {letter: round(float(matrix[i, i] / max(matrix[i].sum(), 1)), 4) for i, letter in enumerate(letters)}
    off = matrix.astype(np.float64) / np.maximum(matrix.sum(1, keepdims=True), 1)
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = [{"true": letters[i], "predicted": letters[j], "share": round(float(off[i, j]), 4),
              "count": int(matrix[i, j])} for i, j in zip(*np.unravel_index(order, off.shape))]
    return per_letter, pairs


def scores(model, x_real, y_real, letters):
    """``model`` on real letters: their count, overall and per-letter accuracy, the worst letters
    and the costliest confusions (the part of the JSON object both measurements share)."""
    predicted = model.predict(x_real, batch_size=512, verbose=0).argmax(1)
    per_letter, pairs = confusion_report(y_real, predicted, letters)
    return {
        "real_images": int(len(y_real)), "accuracy": round(float((predicted == y_real).mean()), 4),
        "worst_letters": dict(sorted(per_letter.items(), key=lambda item: item[1])[:6]),
        "per_letter": per_letter, "costliest_confusions": pairs,
    }


def measure(archive, train_size=20800, seed=1, epochs=8):
    """Train on synthetic letters, test on ``archive``'s real capitals; returns the JSON-ready dict."""
    os.environ["DENOISING_VAE_NO_CACHE"] = "1"  # time the generator itself, not a cached copy
    x_real, y_real = real_capitals(archive)  # first: a bad archive fails before any training
    from denoising_vae.core.constants import LETTERS
    from denoising_vae.data import input_read

    started = time.perf_counter()
    (x_train, y_train), (x_held, y_held) = input_read("synthetic", train_size=train_size, test_size=1040, seed=seed)
    generate_seconds = time.perf_counter() - started
    from denoising_vae.core.runtime import start_tensorflow

    start_tensorflow()

    started = time.perf_counter()
    model = train_classifier(x_train, y_train, epochs)
    train_seconds = time.perf_counter() - started
    held_accuracy = float((model.predict(x_held, batch_size=512, verbose=0).argmax(1) == y_held).mean())
    return {
        "archive": str(archive), **scores(model, x_real, y_real, LETTERS),
        "synthetic_held_out_accuracy": round(held_accuracy, 4),
        "train_size": train_size, "seed": seed, "epochs": epochs,
        "generate_seconds": round(generate_seconds, 2), "train_seconds": round(train_seconds, 1),
    }


def measure_reference(archive, seed=0, epochs=8):
    """Train on ``archive``'s training capitals (Keras seed ``seed``), test on its test capitals."""
    x_train, y_train = real_capitals(archive, ("train",))
    x_test, y_test = real_capitals(archive, ("test",))
    from denoising_vae.core.constants import LETTERS
    from denoising_vae.core.runtime import start_tensorflow

    start_tensorflow()
    started = time.perf_counter()
    model = train_classifier(x_train, y_train, epochs, seed=seed)
    train_seconds = time.perf_counter() - started
    return {
        "archive": str(archive), "trained_on": "real", "train_images": int(len(y_train)),
        **scores(model, x_test, y_test, LETTERS),
        "seed": seed, "epochs": epochs, "train_seconds": round(train_seconds, 1),
    }


def summarise(results):
    """Spread over several synthetic sets (or classifier seeds): overall mean, sample std and range;
    per-letter mean and minimum."""
    import numpy as np

    overall = np.array([result["accuracy"] for result in results])
    letters = list(results[0]["per_letter"])
    per_letter = {letter: [result["per_letter"][letter] for result in results] for letter in letters}
    lowest = {letter: min(values) for letter, values in per_letter.items()}
    return {
        "seeds": [result["seed"] for result in results],
        "accuracy_mean": round(float(overall.mean()), 4),
        "accuracy_std": round(float(overall.std(ddof=1)), 4) if len(overall) > 1 else None,
        "accuracy_range": [float(overall.min()), float(overall.max())],
        "per_letter_mean": {letter: round(float(np.mean(values)), 4) for letter, values in per_letter.items()},
        "per_letter_min": lowest,
        "sets_with_every_letter_at_least_60": int(sum(min(r["per_letter"].values()) >= 0.6 for r in results)),
        "letters_below_60_in_some_set": sorted(letter for letter, value in lowest.items() if value < 0.6),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="EMNIST archive in NIST's layout (gzip.zip or a sample)")
    parser.add_argument("--train-size", type=int, default=None, help="synthetic training letters (default 20800)")
    parser.add_argument("--seed", type=int, default=None, help="first synthetic set (default 1), or first "
                        "classifier seed with --reference (default 0)")
    parser.add_argument("--seeds", type=int, default=1, help="synthetic sets (or classifier seeds) to measure")
    parser.add_argument("--reference", action="store_true",
                        help="train on the archive's own training capitals instead, test on its test capitals")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the JSON object here")
    args = parser.parse_args(argv)
    if not args.archive.exists():
        parser.exit(2, f"realism.py: archive {args.archive} does not exist\n")
    if args.seeds < 1:
        parser.exit(2, f"realism.py: expected --seeds to be at least 1, received {args.seeds}\n")
    if args.reference and args.train_size is not None:
        parser.exit(2, "realism.py: --train-size sizes the synthetic training set; --reference trains on the "
                    "archive's own training capitals\n")
    first = args.seed if args.seed is not None else 0 if args.reference else 1
    try:
        if args.reference:
            runs = [measure_reference(args.archive, seed, args.epochs) for seed in range(first, first + args.seeds)]
        else:
            runs = [measure(args.archive, args.train_size or 20800, seed, args.epochs)
                    for seed in range(first, first + args.seeds)]
        result = runs[0] if len(runs) == 1 else {"summary": summarise(runs), "runs": runs}
    except (ValueError, OSError) as error:  # a damaged archive or a bad size: one line, no traceback
        parser.exit(2, f"realism.py: {str(error).splitlines()[0]}\n")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
