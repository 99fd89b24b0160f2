"""CelebA faces, centre-cropped and resized to ``size`` x ``size`` RGB (seed 003's data).

Reads torchvision's layout under the data root (``data.root`` or ``$PYRO_VAE_DATA``)::

    ROOT/celeba/img_align_celeba/*.jpg      the 202,599 aligned faces (any .jpg/.png works)
    ROOT/celeba/list_eval_partition.txt     optional: "NAME.jpg 0|1|2" = train/valid/test

Decoding uses PIL and cropping/resizing torchvision (``transforms.v2.functional``), but not
``torchvision.datasets.CelebA`` itself, which also insists on attribute/landmark files and their MD5
sums that a generative model does not need. ``download: true`` asks torchvision to fetch the files
(Google Drive; usually rate-limited). Without a partition file, a seeded 10% of the images is the
test split. Images become float tensors in [0, 1] at multiples of 1/255, so the 8-bit likelihoods apply.
Memory: all 202,599 faces at 64x64 are about 10 GB as float32; ``max_images`` caps it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ._typing import NonNegativeInt, PositiveInt, Tensor
from .data import SPLIT_SEED, Splits, data_root
from .errors import DataError
from .registry import register

_SUFFIXES = (".jpg", ".jpeg", ".png")


def _load_image(path: Path, crop: int, size: int) -> Tensor:
    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = TF.pil_to_tensor(im.convert("RGB"))  # (3, H, W) uint8
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"celeba: cannot decode image {str(path)!r} ({type(e).__name__}: {e})") from None
    side = min(crop, img.shape[-2], img.shape[-1])
    img = TF.center_crop(img, [side, side])
    return TF.resize(img, [size, size], antialias=True)


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
    size: PositiveInt = 64,  # output side in pixels (seed 003: 64)
    crop: PositiveInt = 148,  # centre crop side before resizing (the usual 178x218 -> 148x148)
    max_images: NonNegativeInt = 0,  # > 0: at most this many training images (and a tenth as many test)
    download: bool = False,  # try torchvision's downloader when the folder is missing
) -> Splits:
    """CelebA faces via torchvision under ``root``: centre crop ``crop``, resize to ``size`` x ``size`` RGB."""
    folder = data_root(root) / "celeba"
    images = folder / "img_align_celeba"
    if not images.is_dir() and download:
        import torchvision

        with contextlib.suppress(Exception):  # offline, Google Drive quota: the error below names the folder
            torchvision.datasets.CelebA(str(data_root(root)), split="all", target_type=[], download=True)
    files = sorted(p for p in images.glob("*") if p.suffix.lower() in _SUFFIXES) if images.is_dir() else []
    if not files:
        raise DataError(
            f"celeba: no images under {str(images)!r}; put img_align_celeba/*.jpg (and optionally "
            "list_eval_partition.txt) in ROOT/celeba or set data.root / $PYRO_VAE_DATA"
        )
    part = _partition(folder)
    if part is None:
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        n_test = max(1, len(files) // 10) if len(files) > 1 else 0
        split_of = {files[i].name: (2 if r < n_test else 0) for r, i in enumerate(perm)}
    else:
        missing = [p.name for p in files if p.name not in part]
        if missing:
            raise DataError(f"celeba: {missing[0]!r} is not listed in list_eval_partition.txt ({len(missing)} images)")
        split_of = part
    by_split: dict[int, list[Path]] = {0: [], 1: [], 2: []}
    for p in files:
        by_split[split_of[p.name]].append(p)
    if max_images:
        caps = {0: max_images, 1: max(1, max_images // 10), 2: max(1, max_images // 10)}
        by_split = {s: v[: caps[s]] for s, v in by_split.items()}
    if not by_split[0] or not by_split[2]:
        raise DataError(f"celeba: need training and test images under {str(images)!r}; found {len(files)} in all")

    def stack(paths: list[Path]) -> Tensor:
        return torch.stack([_load_image(p, crop, size) for p in paths]).float().div(255.0)

    x_valid = stack(by_split[1]) if by_split[1] else None
    return Splits(stack(by_split[0]), stack(by_split[2]), x_valid=x_valid)
