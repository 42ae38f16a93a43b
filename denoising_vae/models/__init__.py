"""The models layer: the report's three VAEs and its autoencoder, their losses, the fused layer
pairs that compute them faster, and the measured choice of precision and batch shards.

Importing it imports TensorFlow: call ``denoising_vae.core.runtime.start_tensorflow()`` first
for the package's thread options and a quiet start.
"""
from .fast_path import PathChoice, default_shards, resolve_precision
from .vae import (DenoisingVAE, Sampling, as_float32, build_model, load_model, parameter_counts, precision_of,
                  save_model, with_precision)

__all__ = ["DenoisingVAE", "PathChoice", "Sampling", "as_float32", "build_model", "default_shards", "load_model",
           "parameter_counts", "precision_of", "resolve_precision", "save_model", "with_precision"]
