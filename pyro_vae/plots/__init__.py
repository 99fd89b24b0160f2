"""Figures of a trained run (``RUN_DIR/figures/*.png``) and the image grids other figures reuse.

- :mod:`.images`: the matplotlib backend (Agg: files only), ``save_figure``, ``as_images``, ``tile``, ``save_grid``.
- :mod:`.run`: loss curves, reconstructions, samples, latent scatter, manifold and traversal, and
  :func:`run_figures`, which writes every figure that applies to a run.

The figures of ``pyro-vae compare`` and ``pyro-vae diagnose`` live beside their commands
(:mod:`pyro_vae.compare.plots`, :mod:`pyro_vae.diagnostics.plots`).
"""

from .images import as_images, plt, save_figure, save_grid, tile
from .run import latent_scatter, loss_curves, manifold, run_figures, traversal

__all__ = [
    "as_images",
    "latent_scatter",
    "loss_curves",
    "manifold",
    "plt",
    "run_figures",
    "save_figure",
    "save_grid",
    "tile",
    "traversal",
]
