"""The report's figures, served by the package's ``denoising_vae.plots``.

This face keeps the report's names for its readers; the code lives in the
package, which never imports this file. Every function returns a matplotlib
``Figure`` (saved when given ``path``) and never shows it.

* ``Plot1`` is :func:`plot_learning_curves`: loss and accuracy per epoch, per model.
* ``Plot2`` is :func:`plot_reconstructions`: original, noisy and reconstructed letters.
* ``Plot3`` is :func:`plot_latent_sweep`: letters decoded over a grid of the latent space.
"""
from denoising_vae.plots import (distinct_letter_indices, plot_comparison, plot_latent_map, plot_latent_sweep,
                                 plot_learning_curves, plot_letter_grid, plot_reconstructions)

Plot1 = plot_learning_curves
Plot2 = plot_reconstructions
Plot3 = plot_latent_sweep

__all__ = ["Plot1", "Plot2", "Plot3", "distinct_letter_indices", "plot_comparison", "plot_latent_map",
           "plot_latent_sweep", "plot_learning_curves", "plot_letter_grid", "plot_reconstructions"]
