"""The built-in datasets: scikit-learn's digits (the offline default), MNIST and Fashion-MNIST through
torchvision, and the user's own arrays in an ``.npz`` file."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError, brief, input_file
from ..registry import register
from .dataset import SPLIT_SEED, Splits, data_root, points_from_array


def _check_float32_range(a: np.ndarray, key: str) -> None:
    """Finite values beyond float32's range would silently become inf when stored: say so."""
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        top = float(np.nanmax(np.abs(a), initial=0.0, where=np.isfinite(a)))
        if top > float(np.finfo(np.float32).max):
            raise DataError(
                f"data.path: array {key!r} holds values up to {top:.3g}, beyond float32's range "
                f"(+-{float(np.finfo(np.float32).max):.3g}); rescale the data"
            )


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


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
