"""A folder of your images as a dataset: ``data: {name: image_folder, path: DIR}``.

Layouts (``.jpg``, ``.jpeg``, ``.png``, ``.webp``; names starting with a dot are ignored)::

    DIR/*.jpg                          unlabelled images; a seeded test_size of them is the test split
    DIR/CLASS/**/*.jpg                 one sub-folder per class, as torchvision's ImageFolder: labels
                                       0..C-1 in sorted folder-name order (so a CVAE can use them)
    DIR/train/ DIR/test/ [DIR/valid/]  explicit splits, each flat or with class folders
                                       (``val/`` or ``validation/`` also name the valid split)

Without a valid folder, ``data.valid_size`` holds out the end of the (shuffled) training split.
Every image becomes ``channels`` x ``size`` x ``size`` 8-bit pixels (:mod:`pyro_vae.data.image_cache`:
converted, centre-cropped, resized, decoded on all cores and cached on disk); the splits are ``uint8``
tensors that the training loop turns into floats ``x / 255`` one batch at a time, so the 8-bit
likelihoods (``categorical``, ``discretized_logistic``) apply and memory is a quarter of float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .._typing import NonNegativeInt, PositiveFloat, PositiveInt
from ..errors import DataError
from ..registry import register
from .dataset import SPLIT_SEED, Splits
from .image_cache import Transform, decoded, file_entries, fingerprint

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_VALID_NAMES = ("valid", "val", "validation")
#: ``crop``: "center" (the largest centred square), "none" (resize the whole image), or a centred square's side.
ImageCrop = Literal["center", "none"] | PositiveInt


def scan(folder: Path | str) -> tuple[list[str], list[str]]:
    """Names of the image files and of the sub-folders directly in ``folder`` (not hidden), sorted.

    ``os.scandir`` knows each entry's type from the directory itself: no ``stat`` per file."""
    files, dirs = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():  # follows links, as torchvision's ImageFolder
                dirs.append(e.name)
            elif e.name.lower().endswith(SUFFIXES) and e.is_file():
                files.append(e.name)
    return sorted(files), sorted(dirs)


def images_under(folder: Path | str) -> list[str]:
    """Every image file below ``folder`` (following links, as torchvision's ImageFolder), sorted.

    Paths are strings: building 200,000 ``pathlib.Path`` objects would take seconds."""
    out: list[str] = []
    for d, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out += (os.path.join(d, f) for f in files if not f.startswith(".") and f.lower().endswith(SUFFIXES))
    return sorted(out)


def _folder_images(folder: Path, labels: bool) -> tuple[list[str], list[str] | None]:
    """``folder``'s images and, with class sub-folders and ``labels``, each image's class name."""
    names, subdirs = scan(folder)
    top = [os.path.join(folder, n) for n in names]
    classes = {d: images_under(os.path.join(folder, d)) for d in subdirs}
    classes = {k: v for k, v in classes.items() if v}
    if not classes:
        return top, None
    if top:
        raise DataError(
            f"image_folder: {str(folder)!r} holds {len(top)} images beside {len(classes)} class folders "
            f"(e.g. {os.path.basename(top[0])!r}); move them into a class folder or remove them"
        )
    files = [p for v in classes.values() for p in v]
    return files, ([k for k, v in classes.items() for _ in v] if labels else None)


def _shuffled(files: list[str], names: list[str] | None, salt: int) -> tuple[list[str], list[str] | None]:
    perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED + salt)).tolist()
    return [files[i] for i in perm], (None if names is None else [names[i] for i in perm])


def image_splits(
    label: str,
    root: Path,
    split_files: Sequence[Sequence[str]],
    split_labels: Sequence[Sequence[int] | None] | None,
    t: Transform,
    *,
    cache: bool,
    cache_dir: str | None,
    workers: int,
) -> Splits:
    """Decode (or read from the cache) the train, valid and test files; an empty valid means none."""
    train, valid, test = split_files
    names = [*train, *valid, *test]
    key = fingerprint(file_entries(names, root), t, extra="image_folder")
    arr = decoded(names, t, key=key, label=label, cache_dir=cache_dir, cache=cache, workers=workers,
                  name=lambda i: repr(names[i]))  # fmt: skip
    a, b = len(train), len(train) + len(valid)
    x = torch.from_numpy(arr)  # uint8, memory-mapped from the cache (copy-on-write, never written back)
    ys: list[torch.Tensor | None] = [None, None, None]
    if split_labels is not None:
        ys = [None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in split_labels]
    return Splits(x[:a], x[b:], ys[0], ys[2], x[a:b] if valid else None, ys[1] if valid else None)


def seeded_test_split(n: int, test_size: float, what: str) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: a permutation seeded by ``SPLIT_SEED``, ``test_size`` a fraction (< 1) or count."""
    n_test = round(test_size * n) if test_size < 1 else int(test_size)
    n_test = max(n_test, 1)
    if n_test >= n:
        raise DataError(f"data.test_size: {test_size:g} leaves no training images ({n} {what} in all)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return perm[n_test:], perm[:n_test]


def check_folder(path: str, option: str = "data.path") -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"{option}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise DataError(f"{option}: {str(folder)!r} is not a folder")
    return folder


@register("data", "image_folder")
def image_folder(
    *,
    path: str,  # the folder (layouts in pyro_vae/data/image_folder.py)
    size: PositiveInt = 64,  # output side in pixels
    crop: ImageCrop = "center",  # center: largest centred square; none: squash to size x size; N: centred N x N
    channels: Literal[1, 3] = 3,  # 1: greyscale (ITU-R 601-2 luma), 3: RGB
    test_size: PositiveFloat = 0.1,  # no test/ folder: < 1 a fraction, >= 1 a count of images (seeded)
    labels: bool = True,  # class sub-folders give labels 0..C-1
    cache: bool = True,  # keep the decoded pixels in cache_dir (false: decode at every start, write nothing)
    cache_dir: str | None = None,  # default $PYRO_VAE_CACHE, else ~/.cache/pyro-vae
    decode_workers: NonNegativeInt = 0,  # processes decoding images; 0: every core
) -> Splits:
    """Your folder of images (flat, class sub-folders, or train/valid/test folders) as 8-bit tensors."""
    folder = check_folder(path)
    t = Transform(size, crop, channels)
    subdirs = {d: folder / d for d in scan(folder)[1]}
    if "train" in subdirs:  # explicit splits
        valid_dirs = [subdirs[n] for n in _VALID_NAMES if n in subdirs]
        if "test" not in subdirs:
            raise DataError(f"image_folder: {str(folder)!r} has a train/ folder but no test/ folder")
        if len(valid_dirs) > 1:
            raise DataError(
                f"image_folder: {str(folder)!r} has {' and '.join(d.name + '/' for d in valid_dirs)}; keep one"
            )
        dirs = [subdirs["train"], valid_dirs[0] if valid_dirs else None, subdirs["test"]]
        parts = [([], None) if d is None else _folder_images(d, labels) for d in dirs]
        for (files, _), d in zip(parts, dirs):
            if d is not None and not files:
                raise DataError(f"image_folder: no {'/'.join(SUFFIXES)} images under {str(d)!r}")
        labelled = [names is not None for files, names in parts if files]
        if any(labelled) and not all(labelled):
            raise DataError(f"image_folder: under {str(folder)!r} some splits have class folders and some do not")
        parts = [_shuffled(f, n, salt) for salt, (f, n) in enumerate(parts)]
    else:
        files, names = _folder_images(folder, labels)
        if not files:
            raise DataError(f"image_folder: no {'/'.join(SUFFIXES)} images in {str(folder)!r} or its sub-folders")
        train_i, test_i = seeded_test_split(len(files), test_size, "images")
        parts = [([files[i] for i in train_i], None if names is None else [names[i] for i in train_i]), ([], None),
                 ([files[i] for i in test_i], None if names is None else [names[i] for i in test_i])]  # fmt: skip
    split_labels: list[list[int] | None] | None = None
    if parts[0][1] is not None:
        classes = sorted({c for _, names in parts for c in (names or [])})
        index = {c: i for i, c in enumerate(classes)}
        split_labels = [None if n is None else [index[c] for c in n] for _, n in parts]
    return image_splits(folder.name or "images", folder, [f for f, _ in parts], split_labels, t,
                        cache=cache, cache_dir=cache_dir, workers=decode_workers)  # fmt: skip


__all__ = ["SUFFIXES", "ImageCrop", "image_folder", "image_splits", "images_under", "scan", "seeded_test_split"]
