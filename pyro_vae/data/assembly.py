"""Assembly: the :class:`~pyro_vae.data.dataset.Dataset` for a resolved ``data:`` section, built from the
registered loader's :class:`~pyro_vae.data.dataset.Splits`: values checked, labels numbered, the valid split
held out, binarization applied, and the choice between holding and streaming the training split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._typing import Tensor
from ..errors import DataError
from ..registry import REGISTRY
from .dataset import SPLIT_SEED, Dataset, Splits, as_float, binarize
from .streaming import should_stream, split_bytes


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
    choice = should_stream(cfg.get("stream", "auto"), split_bytes(x_tr, y_tr), cfg.get("memory_budget_gb"),
                           torch.device(device))  # fmt: skip
    return Dataset(name, x_tr, x_va, x_te, y_tr, y_va, y_te, mode, num_classes, choice.stream, choice.reason,
                   valid_source=valid_source).to(device)  # fmt: skip
