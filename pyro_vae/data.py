"""Datasets: the embedded default, torchvision sets, the user's ``.npz``; binarization; batching.

Every dataset is held as tensors of shape ``(N, *event_shape)``, moved once to the training device and
batched by index slices; a training split larger than ``data.memory_budget_gb`` (or ``data.stream: true``)
stays where it was loaded and streams through a DataLoader instead (pyro_vae/streaming.py). 8-bit images (``image_folder``, ``celeba``, ``hf``,
``uint8`` arrays in an ``npz``) stay ``uint8``, a quarter of the memory of float32; :func:`as_float`
turns them into the values the model sees, ``x / 255`` in ``[0, 1]``, one batch at a time. Every
other dataset is float32 (images in ``[0, 1]``, the user's raw values for a float ``npz``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._typing import Shape, Tensor
from .errors import DataError, brief, input_file
from .registry import REGISTRY, register

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
    # read batch by batch through a DataLoader (pyro_vae/streaming.py); stream_reason says why.
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
        kind = "uint8, x/255 per batch" if self.x_train.dtype == torch.uint8 else str(self.x_train.dtype).replace("torch.", "")
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


# --------------------------------------------------------------------------- loaders


def _stored(x: Tensor) -> Tensor:
    """How a split is held: 8-bit pixels stay ``uint8`` (see :func:`as_float`), anything else float32."""
    return x if x.dtype == torch.uint8 else x.float()


def _extreme(x: Tensor, which: str) -> float:
    """The smallest or largest value the model sees in ``x`` (uint8 as x / 255)."""
    v = float(x.min() if which == "min" else x.max())
    return v / 255 if x.dtype == torch.uint8 else v


def _check_values(name: str, x: Tensor, split: str) -> None:
    if x.ndim < 2:
        raise DataError(f"{name}: x_{split} must have shape (N, features...) but has shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise DataError(f"{name}: x_{split} has shape {tuple(x.shape)}: each point needs at least one feature")
    if x.is_floating_point() and not torch.isfinite(x).all():  # integers (8-bit pixels) are always finite
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name}: x_{split} holds {bad} NaN/inf values; clean the data first")


def _labels(name: str, y: Any, n: int, split: str) -> Tensor | None:
    if y is None:
        return None
    arr = np.asarray(y)
    if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:  # torch has few operations for uint16/32/64
        if arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{name}: y_{split} holds labels up to {int(arr.max())}; labels must be 0..C-1")
        arr = arr.astype(np.int64)
    y = torch.as_tensor(arr)
    if y.shape[:1] != (n,):
        raise DataError(f"{name}: y_{split} has {y.shape[0] if y.ndim else 0} labels for {n} points")
    if y.dtype.is_floating_point:
        if not torch.isfinite(y).all():
            raise DataError(f"{name}: y_{split} holds NaN/inf values")
        return y.float()
    if y.ndim != 1:
        raise DataError(f"{name}: integer labels y_{split} must be 1-D, got shape {tuple(y.shape)}")
    if (y < 0).any():
        raise DataError(f"{name}: y_{split} holds negative class labels (min {int(y.min())}); labels must be 0..C-1")
    return y.long()


def _check_float32_range(a: np.ndarray, key: str) -> None:
    """Finite values beyond float32's range would silently become inf when stored: say so."""
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        top = float(np.nanmax(np.abs(a), initial=0.0, where=np.isfinite(a)))
        if top > float(np.finfo(np.float32).max):
            raise DataError(
                f"data.path: array {key!r} holds values up to {top:.3g}, beyond float32's range "
                f"(+-{float(np.finfo(np.float32).max):.3g}); rescale the data"
            )


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


@register("data", "digits", description="scikit-learn's 1,797 8x8 handwritten digits (offline default)")
def digits() -> Splits:
    """scikit-learn's bundled 8x8 handwritten digits: 1,437 train / 360 test, values scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.as_tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = perm[:360], perm[360:]
    return Splits(x[train], x[test], y[train], y[test])


def data_root(root: str | None) -> Path:
    """``data.root``, else ``$PYRO_VAE_DATA``, else ``./data``."""
    return Path(root or os.environ.get("PYRO_VAE_DATA") or "data").expanduser()


def _torchvision(cls_name: str, root: str | None, download: bool, files: tuple[str, ...]) -> Splits:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    path = data_root(root)
    out = []
    for train in (True, False):
        try:
            try:
                ds = cls(str(path), train=train, download=False)
            except RuntimeError:
                if not download:
                    raise
                ds = cls(str(path), train=train, download=True)
        except Exception as e:  # noqa: BLE001  torchvision raises RuntimeError/URLError/OSError offline
            raw = path / cls_name / "raw"
            if all((raw / f).is_file() for f in files):  # all there, yet unreadable: not a download problem
                raise DataError(
                    f"{cls_name} files under {str(raw)!r} are corrupt or truncated ({type(e).__name__}: "
                    f"{brief(' '.join(str(e).split()) or 'no details', 120)}); replace {', '.join(files)} with the original files"
                ) from None
            raise DataError(
                f"{cls_name} not found under {str(path / cls_name / 'raw')!r} and could not be downloaded "
                f"({type(e).__name__}); put {', '.join(files)} there or set data.root / $PYRO_VAE_DATA"
            ) from None
        out.append((ds.data.unsqueeze(1).float().div(255.0), ds.targets.long()))
    (xtr, ytr), (xte, yte) = out
    return Splits(xtr, xte, ytr, yte)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register("data", "mnist")
def mnist(*, root: str | None = None, download: bool = True) -> Splits:
    """MNIST 28x28 (60,000 train / 10,000 test) via torchvision under ``root``."""
    return _torchvision("MNIST", root, download, _MNIST_FILES)


@register("data", "fashion_mnist")
def fashion_mnist(*, root: str | None = None, download: bool = True) -> Splits:
    """Fashion-MNIST 28x28 (60,000 / 10,000) via torchvision under ``root``."""
    return _torchvision("FashionMNIST", root, download, _MNIST_FILES)


@register("data", "npz")
def npz(*, path: str) -> Splits:
    """Your arrays: x_train, x_test, optional x_valid, y_train, y_test, y_valid in one .npz file."""
    p = input_file(path, "data.path", DataError)  # a directory, FIFO or device is named, never opened
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  zipfile.BadZipFile, ValueError for pickled/object arrays, EOFError
        raise DataError(f"data.path: {str(p)!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise DataError(f"data.path: {str(p)!r} lacks {', '.join(missing)}; it holds {', '.join(arrays) or 'nothing'}")
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):  # a zip member that is not an .npy array
            raise DataError(f"data.path: {str(p)!r} member {k!r} is not a NumPy array")
        if a.dtype.kind not in "biuf":
            raise DataError(f"data.path: array {k!r} has dtype {a.dtype}; expected numbers")
        if k.startswith("x_") and a.ndim < 2:
            raise DataError(f"data.path: array {k!r} has shape {a.shape}; points need shape (N, features...)")
        _check_float32_range(a, k)
    get = lambda k: points_from_array(arrays[k], k) if k in arrays else None
    x_train, x_test = points_from_array(arrays["x_train"], "x_train"), points_from_array(arrays["x_test"], "x_test")
    return Splits(x_train, x_test, arrays.get("y_train"), arrays.get("y_test"), get("x_valid"), arrays.get("y_valid"))


# --------------------------------------------------------------------------- assembly


def load(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Dataset:
    """Build the :class:`Dataset` for a resolved ``data:`` section."""
    name = cfg["name"]
    raw: Splits = REGISTRY.build("data", cfg)
    x_tr, x_te = _stored(raw.x_train), _stored(raw.x_test)
    for split, x in (("train", x_tr), ("test", x_te)):
        if len(x) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        _check_values(name, x, split)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{name}: x_train points have shape {tuple(x_tr.shape[1:])} but x_test {tuple(x_te.shape[1:])}")
    y_tr = _labels(name, raw.y_train, len(x_tr), "train")
    y_te = _labels(name, raw.y_test, len(x_te), "test")
    limit = int(cfg.get("limit", 0))
    if limit:
        x_tr, y_tr = x_tr[:limit], (None if y_tr is None else y_tr[:limit])
    if raw.x_valid is not None:
        x_va = _stored(raw.x_valid)
        valid_source = "the dataset's own"
        _check_values(name, x_va, "valid")
        if len(x_va) and x_va.shape[1:] != x_tr.shape[1:]:
            raise DataError(
                f"{name}: x_train points have shape {tuple(x_tr.shape[1:])} but x_valid {tuple(x_va.shape[1:])}"
            )
        y_va = _labels(name, raw.y_valid, len(x_va), "valid")
    else:
        vs = float(cfg.get("valid_size", 0.0))
        n_valid = round(vs * len(x_tr)) if vs < 1 else int(vs)
        if n_valid >= len(x_tr):
            raise DataError(f"data.valid_size: {vs:g} leaves no training data ({len(x_tr)} points)")
        cut = len(x_tr) - n_valid  # the last points of the training split, as Burda et al.
        share = f"{vs:.0%}" if vs < 1 else f"{n_valid:,} points"
        valid_source = f"the last {share} of the training split: data.valid_size {vs:g}" if n_valid else "none"
        x_tr, x_va = x_tr[:cut], x_tr[cut:]
        y_tr, y_va = (None, None) if y_tr is None else (y_tr[:cut], y_tr[cut:])
    num_classes = 0
    if y_tr is not None and not y_tr.dtype.is_floating_point:
        num_classes = int(max(int(y.max()) for y in (y_tr, y_te, y_va) if y is not None and len(y))) + 1
        points = sum(len(y) for y in (y_tr, y_te, y_va) if y is not None)
        if num_classes > max(1000, points):  # a one-hot of this width is a data error, not a model
            raise DataError(
                f"{name}: class labels must be 0..C-1, but the largest label is {num_classes - 1} for {points} points"
            )
    mode = cfg.get("binarize", "none")
    if mode != "none":
        lo = min(_extreme(x, "min") for x in (x_tr, x_va, x_te) if len(x))
        hi = max(_extreme(x, "max") for x in (x_tr, x_va, x_te) if len(x))
        if lo < 0 or hi > 1:
            raise DataError(f"data.binarize: {mode!r} needs values in [0, 1], but {name} spans [{lo:g}, {hi:g}]")
        g = torch.Generator().manual_seed(SPLIT_SEED)
        # Evaluation splits are binarized once for both modes (a fixed stochastic binarization);
        # 'dynamic' resamples only the training batches.
        x_va, x_te = binarize(as_float(x_va), g), binarize(as_float(x_te), g)
        if mode == "static":
            x_tr = binarize(as_float(x_tr), g)
    from .streaming import should_stream, split_bytes

    choice = should_stream(cfg.get("stream", "auto"), split_bytes(x_tr, y_tr), cfg.get("memory_budget_gb"),
                           torch.device(device))  # fmt: skip
    return Dataset(name, x_tr, x_va, x_te, y_tr, y_va, y_te, mode, num_classes, choice.stream, choice.reason,
                   valid_source=valid_source).to(device)  # fmt: skip


from . import celeba as _celeba  # noqa: F401  (registers data name celeba; reads this module's helpers)
from . import hf_data as _hf_data  # noqa: F401  (registers data name hf; imports datasets only when used)
from . import image_folder as _image_folder  # noqa: F401  (registers data name image_folder)
