"""The report's models, served by the package ``denoising_vae.models``.

This face keeps the report's names for its readers; the code lives in the
package, which never imports this file. Each report name builds the model
with :func:`build_model` (``latent_dim=2`` gives the report's parameter counts):

* ``Architecture_1_Variation_AE()``: ``build_model("arch1")``, dense encoder, convolutional decoder;
* ``Architecture_2_Variation_AE()``: ``build_model("arch2")``, convolutional encoder and decoder;
* ``Architecture_3_Variation_AE()``: ``build_model("arch3")``, the small convolutional one;
* ``Architecture_1_VAE()``: ``build_model("ae")``, architecture 1 as a plain autoencoder.

Importing it imports TensorFlow; call ``denoising_vae.core.runtime.start_tensorflow()``
first for the package's thread options and a quiet start.
"""
from denoising_vae.core.constants import ARCHITECTURES
from denoising_vae.models import (DenoisingVAE, Sampling, as_float32, build_model, load_model, parameter_counts,
                                  precision_of, save_model, with_precision)
from denoising_vae.models.losses import kl_divergence, pixel_accuracy, reconstruction_loss


def Architecture_1_Variation_AE(latent_dim=2, **options):  # noqa: N802 (the report's name)
    """The report's first VAE: ``build_model("arch1", latent_dim, **options)``."""
    return build_model("arch1", latent_dim, **options)


def Architecture_2_Variation_AE(latent_dim=2, **options):  # noqa: N802
    """The report's second VAE: ``build_model("arch2", latent_dim, **options)``."""
    return build_model("arch2", latent_dim, **options)


def Architecture_3_Variation_AE(latent_dim=2, **options):  # noqa: N802
    """The report's third VAE: ``build_model("arch3", latent_dim, **options)``."""
    return build_model("arch3", latent_dim, **options)


def Architecture_1_VAE(latent_dim=2, **options):  # noqa: N802
    """The report's autoencoder (architecture 1 without sampling): ``build_model("ae", latent_dim, **options)``."""
    return build_model("ae", latent_dim, **options)


__all__ = ["ARCHITECTURES", "Architecture_1_VAE", "Architecture_1_Variation_AE", "Architecture_2_Variation_AE",
           "Architecture_3_Variation_AE", "DenoisingVAE", "Sampling", "as_float32", "build_model",
           "kl_divergence", "load_model", "parameter_counts", "pixel_accuracy", "precision_of",
           "reconstruction_loss", "save_model", "with_precision"]
