"""Bad data is refused with one clear line before any training (no run directory is created)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pyro_vae import cli, fit
from pyro_vae.errors import DataError

from .conftest import TINY, as_sets, one_clear_line


def _good() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((40, 1, 4, 4), dtype=np.float32),
        "x_test": rng.random((12, 1, 4, 4), dtype=np.float32),
        "y_train": rng.integers(0, 3, 40),
        "y_test": rng.integers(0, 3, 12),
    }


def _with(**changes: Any) -> Callable[[], dict[str, np.ndarray]]:
    def make() -> dict[str, np.ndarray]:
        a = _good()
        for k, v in changes.items():
            if v is None:
                a.pop(k)
            else:
                a[k] = v(a) if callable(v) else v
        return a

    return make


def _poke(key: str, index: tuple[int, ...], value: float) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def f(a: dict[str, np.ndarray]) -> np.ndarray:
        x = a[key].copy()
        x[index] = value
        return x

    return f


CASES: dict[str, tuple[Callable[[], dict[str, np.ndarray]], str]] = {
    "nan-train": (_with(x_train=_poke("x_train", (3, 0, 1, 1), np.nan)), "NaN/inf"),
    "inf-test": (_with(x_test=_poke("x_test", (0, 0, 0, 0), np.inf)), "NaN/inf"),
    "nan-valid": (_with(x_valid=lambda a: np.full((5, 1, 4, 4), np.nan, np.float32)), "NaN/inf"),
    "shape-test": (_with(x_test=np.zeros((12, 1, 4, 5), np.float32)), "shape"),
    "shape-valid": (_with(x_valid=np.zeros((5, 16), np.float32)), "shape"),
    "one-dim": (_with(x_train=np.zeros(40, np.float32)), "shape"),
    "no-features": (_with(x_train=np.zeros((40, 0), np.float32), x_test=np.zeros((12, 0), np.float32)), "feature"),
    "empty-train": (_with(x_train=np.zeros((0, 1, 4, 4), np.float32), y_train=None), "empty"),
    "empty-test": (_with(x_test=np.zeros((0, 1, 4, 4), np.float32), y_test=None), "empty"),
    "labels-negative": (_with(y_train=_poke("y_train", (0,), -1)), "negative"),
    "labels-count": (_with(y_test=np.zeros(11, np.int64)), "labels for 12 points"),
    "labels-2d": (_with(y_train=np.zeros((40, 2), np.int64)), "1-D"),
    "labels-nan": (_with(y_train=np.full(40, np.nan)), "NaN/inf"),
    "labels-huge": (_with(y_train=_poke("y_train", (0,), 10**9)), "class labels"),
    "labels-text": (_with(y_train=np.array(["a"] * 40)), "dtype"),
    "complex": (_with(x_train=lambda a: a["x_train"].astype(np.complex64)), "dtype"),
    "bernoulli-range": (_with(x_train=lambda a: a["x_train"] * 255), "[0, 1]"),
    "missing-test": (_with(x_test=None), "lacks x_test"),
}


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def _train(tmp_path: Path, data: Path, *extra: str) -> None:
    fit(overrides=[*TINY, "data.name=npz", f"data.path={data}", "data.valid_size=0", *extra], out=tmp_path / "run")


def test_good_npz_trains(tmp_path: Path) -> None:
    _train(tmp_path, _npz(tmp_path / "d.npz", _good()))
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_arrays_are_refused_before_training(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    path = _npz(tmp_path / "d.npz", make())
    with pytest.raises(DataError) as info:
        _train(tmp_path, path)
    msg = str(info.value)
    assert words in msg and "\n" not in msg, msg
    assert not (tmp_path / "run").exists()


def _truncated(p: Path) -> None:
    np.savez(p, **_good())
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00\xffnot an npz at all" * 50)


def _bad_member(p: Path) -> None:  # a zip whose member is not an .npy
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x_train.npy", b"garbage")
        z.writestr("x_test.npy", b"garbage")


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (exec, (f"open({self.path!r}, 'w').close()",))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "bad-member", "pickled-object"])
def test_corrupt_or_unsafe_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = tmp_path / "d.npz"
    marker = tmp_path / "PWNED"
    if kind == "pickled-object":
        obj = np.empty(1, dtype=object)
        obj[0] = _Touch(str(marker))
        np.savez(path, x_train=obj, x_test=_good()["x_test"])
        with np.load(path, allow_pickle=True) as f:  # the payload is live: unsafe loading runs it
            f["x_train"]
        assert marker.exists()
        marker.unlink()
    else:
        {"truncated": _truncated, "garbage": _garbage, "bad-member": _bad_member}[kind](path)
    rc = cli.main(["train", "--out", str(tmp_path / "run"), "--set", "data.name=npz", "--set", f"data.path={path}",
                   *as_sets(TINY)])  # fmt: skip
    assert rc == 2
    line = one_clear_line(capsys.readouterr().err)
    assert "data.path" in line and str(path) in line
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_pickled_payload_in_npz_never_runs(tmp_path: Path) -> None:
    """Also through pickle's own format (a .npz that is really a pickle)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "d.npz"
    path.write_bytes(pickle.dumps(_Touch(str(marker))))
    with pytest.raises(DataError):
        _train(tmp_path, path)
    assert not marker.exists()
