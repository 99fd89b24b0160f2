"""Image grids, and the matplotlib backend every figure module of pyro-vae draws with.

The backend is Agg (files only; never needs a display), set here once: figure modules import ``plt``
and :func:`save_figure` from this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .._typing import Shape, Tensor

#: The PNG "Software" text of every figure pyro-vae writes: how a later command recognises its own file.
SOFTWARE = "pyro-vae"


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Lay out ``fig``, write it to ``path`` and close it (figures are files only, never kept open).
    A PNG carries ``Software: pyro-vae``."""
    fig.tight_layout()
    png = Path(path).suffix.lower() == ".png"
    fig.savefig(path, dpi=dpi, **({"metadata": {"Software": SOFTWARE}} if png else {}))
    plt.close(fig)


def is_own_png(path: Path) -> bool:
    """Whether ``path`` is a PNG that pyro-vae wrote (its ``Software`` text is :data:`SOFTWARE`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def as_images(x: Tensor, event_shape: Shape) -> np.ndarray | None:
    """``(N, *event_shape)`` -> ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1], or None if not images."""
    x = x.detach().float().cpu()
    if len(event_shape) == 3 and event_shape[0] in (1, 3):
        imgs = x.reshape(len(x), *event_shape)
        imgs = imgs[:, 0] if event_shape[0] == 1 else imgs.permute(0, 2, 3, 1)
    else:
        d = math.prod(event_shape)
        side = math.isqrt(d)
        if side * side != d:
            return None
        imgs = x.reshape(len(x), side, side)
    return imgs.clamp(0, 1).numpy()


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Arrange ``rows * cols`` images into one array with ``pad`` pixels of white between them."""
    n, h, w = images.shape[:3]
    extra = images.shape[3:]
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, *extra), dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    return grid


def save_grid(
    images: np.ndarray, rows: int, cols: int, path: Path, title: str = "", row_labels: Sequence[str] = ()
) -> None:
    """``images`` as a ``rows`` x ``cols`` grid in one PNG, with an optional title and row labels."""
    grid = tile(images, rows, cols)
    tile_in = 0.5 if images.shape[1] <= 16 else 0.8  # inches per image: small digits drawn larger
    fig, ax = plt.subplots(figsize=(max(3.0, cols * tile_in + 0.6), max(2.0, rows * tile_in + 0.6)))
    ax.imshow(grid, cmap="Greys_r" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        step = images.shape[1] + 1
        ax.set_yticks([1 + step * i + images.shape[1] / 2 for i in range(len(row_labels))], list(row_labels))
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=110)


__all__ = ["SOFTWARE", "as_images", "is_own_png", "plt", "save_figure", "save_grid", "tile"]
