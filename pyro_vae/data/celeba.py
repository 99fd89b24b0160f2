"""CelebA faces, centre-cropped and resized to ``size`` x ``size`` RGB: one configuration of ``image_folder``.

Reads torchvision's layout under the data root (``data.root`` or ``$PYRO_VAE_DATA``)::

    ROOT/celeba/img_align_celeba/*.jpg      the 202,599 aligned faces (any .jpg/.png/.webp works)
    ROOT/celeba/list_eval_partition.txt     optional: "NAME.jpg 0|1|2" = train/valid/test

Decoding, cropping, resizing and the on-disk cache are :mod:`pyro_vae.data.image_folder`'s (Pillow and
torchvision's ``transforms.v2.functional``), not ``torchvision.datasets.CelebA``, which also insists on
attribute/landmark files and their MD5 sums that a generative model does not need. ``download: true``
asks torchvision to fetch the files (Google Drive; usually rate-limited). Without a partition file, a
seeded 10% of the images is the test split. Images are ``uint8`` tensors that become ``x / 255`` per
batch, so the 8-bit likelihoods apply; all 202,599 faces at 64x64 take 2.5 GB (10 GB as float32).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .._typing import NonNegativeInt, PositiveInt
from ..errors import DataError
from ..registry import register
from .dataset import Splits, data_root
from .image_cache import Transform
from .image_folder import image_splits, scan, seeded_test_split


def _partition(folder: Path) -> dict[str, int] | None:
    f = folder / "list_eval_partition.txt"
    if not f.is_file():
        return None
    out: dict[str, int] = {}
    for i, line in enumerate(f.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"celeba: {str(f)!r} line {i + 1} should be 'NAME 0|1|2', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


@register("data", "celeba")
def celeba(
    *,
    root: str | None = None,
    size: PositiveInt = 64,  # output side in pixels (64x64, the usual size for CelebA VAEs)
    crop: PositiveInt = 148,  # centre crop side before resizing (the usual 178x218 -> 148x148)
    max_images: NonNegativeInt = 0,  # > 0: at most this many training images (and a tenth as many test)
    download: bool = False,  # try torchvision's downloader when the folder is missing
    cache: bool = True,  # keep the decoded faces in cache_dir (false: decode at every start, write nothing)
    cache_dir: str | None = None,  # default $PYRO_VAE_CACHE, else ~/.cache/pyro-vae
    decode_workers: NonNegativeInt = 0,  # processes decoding images; 0: every core
) -> Splits:
    """CelebA faces via torchvision under ``root``: centre crop ``crop``, resize to ``size`` x ``size`` RGB."""
    folder = data_root(root) / "celeba"
    images = folder / "img_align_celeba"
    if not images.is_dir() and download:
        import torchvision

        with contextlib.suppress(Exception):  # offline, Google Drive quota: the error below names the folder
            torchvision.datasets.CelebA(str(data_root(root)), split="all", target_type=[], download=True)
    files = scan(images)[0] if images.is_dir() else []  # file names, sorted
    if not files:
        raise DataError(
            f"celeba: no images under {str(images)!r}; put img_align_celeba/*.jpg (and optionally "
            "list_eval_partition.txt) in ROOT/celeba or set data.root / $PYRO_VAE_DATA"
        )
    part = _partition(folder)
    if part is None:
        if len(files) < 2:
            raise DataError(f"celeba: need training and test images under {str(images)!r}; found {len(files)} in all")
        _, test_i = seeded_test_split(len(files), max(1, len(files) // 10), "images")
        test_names = {files[i] for i in test_i}
        split_of = {p: (2 if p in test_names else 0) for p in files}
    else:
        missing = [p for p in files if p not in part]
        if missing:
            raise DataError(f"celeba: {missing[0]!r} is not listed in list_eval_partition.txt ({len(missing)} images)")
        split_of = part
    by_split: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for p in files:
        by_split[split_of[p]].append(os.path.join(images, p))
    if max_images:
        caps = {0: max_images, 1: max(1, max_images // 10), 2: max(1, max_images // 10)}
        by_split = {s: v[: caps[s]] for s, v in by_split.items()}
    if not by_split[0] or not by_split[2]:
        raise DataError(f"celeba: need training and test images under {str(images)!r}; found {len(files)} in all")
    return image_splits("celeba", images, [by_split[0], by_split[1], by_split[2]], None, Transform(size, crop, 3),
                        cache=cache, cache_dir=cache_dir, workers=decode_workers)  # fmt: skip
