"""The dataset types every loader and the training loop share: :class:`Splits` (what a loader returns),
:class:`Dataset` (the splits on one device), the 8-bit rule (:func:`as_float`, :func:`points_from_array`),
batching by index slices and binarization.

Every dataset is held as tensors of shape ``(N, *event_shape)``, moved once to the training device and
batched by index slices; a training split larger than ``data.memory_budget_gb`` (or ``data.stream: true``)
stays where it was loaded and streams through a DataLoader instead (:mod:`pyro_vae.data.streaming`).
8-bit images (``image_folder``, ``celeba``, ``hf``, ``uint8`` arrays in an ``npz``) stay ``uint8``, a
quarter of the memory of float32; :func:`as_float` turns them into the values the model sees, ``x / 255``
in ``[0, 1]``, one batch at a time. Every other dataset is float32 (images in ``[0, 1]``, the user's raw
values for a float ``npz``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._typing import Shape, Tensor
from ..errors import DataError

#: Seed for splits and static binarization that must not change with the run's seed.
SPLIT_SEED = 20240101


def as_float(x: Tensor) -> Tensor:
    """The values the model sees: a ``uint8`` tensor (8-bit pixels) as ``x / 255``, anything else as float32."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


@dataclass(frozen=True)
class Splits:
    """What a loader returns: raw train/test (and optional valid) arrays."""

    x_train: Tensor
    x_test: Tensor
    y_train: Tensor | None = None
    y_test: Tensor | None = None
    x_valid: Tensor | None = None
    y_valid: Tensor | None = None


@dataclass(frozen=True)
class Dataset:
    """In-memory splits on one device. ``x_*`` are ``(N, *event_shape)`` tensors, float32 or ``uint8``
    (8-bit pixels; :func:`as_float` gives the values, ``x / 255``). ``valid_source`` says where the
    valid split came from."""

    name: str
    x_train: Tensor
    x_valid: Tensor
    x_test: Tensor
    y_train: Tensor | None
    y_valid: Tensor | None
    y_test: Tensor | None
    binarize: str
    num_classes: int
    # True: the training split stays where it was loaded (CPU memory or a memory-mapped file) and is
    # read batch by batch through a DataLoader (pyro_vae/data/streaming.py); stream_reason says why.
    stream: bool = False
    stream_reason: str = ""
    valid_source: str = ""  # where the valid split came from, e.g. "the last 10% of the training split"

    @property
    def event_shape(self) -> Shape:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3

    def describe(self) -> str:
        """One line: how many points went to each split, their shape and how they are stored."""
        sizes = [len(x) for x in (self.x_train, self.x_valid, self.x_test)]
        valid = f" ({self.valid_source})" if self.valid_source else ""
        kind = (
            "uint8, x/255 per batch"
            if self.x_train.dtype == torch.uint8
            else str(self.x_train.dtype).replace("torch.", "")
        )
        return (f"data {self.name}: {sizes[0]:,} train / {sizes[1]:,} valid{valid} / {sizes[2]:,} test points "
                f"of shape {self.event_shape} ({kind})")  # fmt: skip

    def split(self, name: str) -> tuple[Tensor, Tensor | None]:
        """The points (as the model sees them: :func:`as_float`) and labels of one split."""
        if name not in ("train", "valid", "test"):
            raise DataError(f"split {name!r} is not valid; valid choices: train, valid, test")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if len(x) == 0:
            raise DataError(f"the {name} split of {self.name!r} is empty")
        return as_float(x), y

    def to(self, device: torch.device | str) -> Dataset:
        """The splits on ``device``; a streamed training split stays where it is."""
        move = lambda t: None if t is None else t.to(device)
        fields = ("x_valid", "x_test", "y_valid", "y_test") + (() if self.stream else ("x_train", "y_train"))
        moved: dict[str, Any] = {f: move(getattr(self, f)) for f in fields}
        return replace(self, **moved)


def batches(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None, device: Any = "cpu"
) -> Iterator[Tensor]:
    """Index tensors covering ``range(n)``; the last batch may be smaller."""
    idx = torch.randperm(n, generator=generator).to(device) if shuffle else torch.arange(n, device=device)
    for start in range(0, n, batch_size):
        yield idx[start : start + batch_size]


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Bernoulli draw with probabilities ``x`` (dynamic binarization of greyscale images)."""
    return torch.bernoulli(x, generator=generator)


def points_from_array(a: np.ndarray, key: str) -> Tensor:
    """An ``npz`` array as stored points. The rule: ``uint8`` means 8-bit pixel intensities 0..255 and
    stays ``uint8`` (the model sees ``x / 255``); every other dtype keeps its values as float32 (bool as
    0/1). A ``uint8`` array holding only 0 and 1 is refused: read as pixels it would train on
    {0, 1/255}, almost certainly not what binary data meant."""
    if a.dtype == np.uint8:
        if a.size and int(a.max()) <= 1:
            raise DataError(
                f"data.path: array {key!r} is uint8 with only 0/1 values; uint8 arrays are 8-bit pixels read as "
                f"x/255, so 1 would become 0.0039: save binary data as bool or float32 (x.astype('float32')), "
                f"or pixels as 0..255"
            )
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.as_tensor(np.asarray(a)).float()


def data_root(root: str | None) -> Path:
    """``data.root``, else ``$PYRO_VAE_DATA``, else ``./data``."""
    return Path(root or os.environ.get("PYRO_VAE_DATA") or "data").expanduser()
