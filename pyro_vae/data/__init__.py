"""Datasets: the embedded default, torchvision sets, the user's ``.npz``, image folders, CelebA, local
Hugging Face datasets; binarization, batching and streaming.

Modules, each importing only the ones listed before it (no cycles):

- :mod:`~pyro_vae.data.dataset`: :class:`Splits`, :class:`Dataset`, the 8-bit rule (:func:`as_float`),
  batching and binarization, the data root;
- :mod:`~pyro_vae.data.builtin`: ``digits``, ``mnist``, ``fashion_mnist``, ``npz``;
- :mod:`~pyro_vae.data.image_cache`: decoding images once, on all cores, into an on-disk cache;
- :mod:`~pyro_vae.data.image_folder`: ``image_folder`` (a folder of the user's images);
- :mod:`~pyro_vae.data.celeba`: ``celeba`` (CelebA faces, one configuration of ``image_folder``);
- :mod:`~pyro_vae.data.hf`: ``hf`` (a local Hugging Face dataset or parquet files);
- :mod:`~pyro_vae.data.streaming`: training batches in memory or through a ``DataLoader``, in one order;
- :mod:`~pyro_vae.data.assembly`: :func:`load`, the :class:`Dataset` of a resolved ``data:`` section.

Importing this package registers every data name (``pyro-vae components data`` lists them).
"""

from . import builtin, celeba, hf, image_folder  # noqa: F401  register the data names, in this order
from .assembly import load
from .builtin import digits, fashion_mnist, mnist, npz
from .dataset import SPLIT_SEED, Dataset, Splits, as_float, batches, binarize, data_root, points_from_array

__all__ = [
    "SPLIT_SEED",
    "Dataset",
    "Splits",
    "as_float",
    "batches",
    "binarize",
    "data_root",
    "digits",
    "fashion_mnist",
    "load",
    "mnist",
    "npz",
    "points_from_array",
]
