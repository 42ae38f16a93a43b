"""Denoising variational autoencoders for handwritten capital letters (EMNIST balanced, A-Z).

The package's layers, each importing only those above it in this list:

* ``core``: constants, argument checks, atomic files and JSON, cache folders, starting TensorFlow;
* ``data``: EMNIST from NIST's archive, the offline synthetic letters, noise;
* ``models``: the report's three VAEs and its autoencoder, their fused fast path;
* ``training`` and ``evaluation``: resumable training, test metrics;
* ``plots``: every figure;
* ``study``: the command line, run folder, study, sweeps on Dask, figures and report.

Importing the package imports nothing else: each layer loads when it is imported.
"""
__version__ = "1.0.0"
