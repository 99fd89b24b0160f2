"""What an ``npz`` array means: the uint8 rule, 0/1 bytes refused, raw values kept, and the split line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import cli, fit
from pyro_vae.data import as_float, load
from pyro_vae.errors import DataError

BASE = {"binarize": "none", "valid_size": 0.1, "limit": 0}
#: A small run on 8x8 images: a few steps, every epoch evaluated.
RUN = ["train.epochs=2", "train.batch_size=16", "train.progress=false", "train.figures=false",
       "train.eval_particles=3", "model.network.hidden=[16]", "model.latent_dim=2", "train.device=cpu"]  # fmt: skip


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)


def _save(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_uint8_is_kept_as_bytes_and_read_as_x_over_255(tmp_path: Path) -> None:
    x = _pixels(20, 0)
    ds = load({**BASE, "name": "npz", "path": _save(tmp_path / "a.npz", x_train=x, x_test=x[:5]), "valid_size": 0})
    assert ds.x_train.dtype == torch.uint8 and torch.equal(ds.x_train, torch.from_numpy(x))  # 1 byte a value
    got, _ = ds.split("train")
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), x.astype(np.float32) / np.float32(255))  # exactly x / 255


@pytest.mark.parametrize(
    "dtype, values",
    [(np.int16, [0, 7, 1000]), (np.float64, [-2.5, 0.0, 3.25]), (np.uint16, [0, 1, 65535]), (np.bool_, [0, 1, 1])],
)
def test_other_dtypes_keep_their_values(tmp_path: Path, dtype: type, values: list[float]) -> None:
    x = np.array([values] * 4, dtype=dtype)
    ds = load({**BASE, "name": "npz", "path": _save(tmp_path / "a.npz", x_train=x, x_test=x), "valid_size": 0})
    assert ds.x_train.dtype == torch.float32
    np.testing.assert_array_equal(ds.x_train.numpy(), x.astype(np.float32))  # never divided by 255


@pytest.mark.parametrize("key", ["x_train", "x_test", "x_valid"])
def test_uint8_holding_only_0_and_1_is_refused(tmp_path: Path, key: str) -> None:
    arrays = {k: _pixels(6, 1) for k in ("x_train", "x_test", "x_valid")}
    arrays[key] = (arrays[key] > 127).astype(np.uint8)  # binary data saved as bytes: {0, 1}
    with pytest.raises(DataError, match=rf"array '{key}' is uint8 with only 0/1 values.*bool or float32"):
        load({**BASE, "name": "npz", "path": _save(tmp_path / "a.npz", **arrays)})
    # the same values as bool or float32 are binary data, read as given
    arrays[key] = arrays[key].astype(np.float32)
    ds = load({**BASE, "name": "npz", "path": _save(tmp_path / "b.npz", **arrays)})
    assert set(ds.split(key[2:])[0].unique().tolist()) <= {0.0, 1.0}


def test_refusal_is_one_line_exit_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).integers(0, 2, (10, 6), dtype=np.uint8)
    path = _save(tmp_path / "a.npz", x_train=x, x_test=x)
    rc = cli.main(["train", "--set", "data.name=npz", "--set", f"data.path={path}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "only 0/1 values" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_uint8_training_gives_the_same_numbers_as_the_float_arrays(tmp_path: Path) -> None:
    """Batches of uint8 turned into floats per batch equal training on the float32 arrays x / 255: every
    epoch's metrics and every parameter, bit for bit (dynamic binarization included)."""
    x_tr, x_te = _pixels(48, 2), _pixels(12, 3)
    as_bytes = _save(tmp_path / "bytes.npz", x_train=x_tr, x_test=x_te)
    to_f = lambda a: as_float(torch.from_numpy(a)).numpy()  # the float path the loaders used before
    as_floats = _save(tmp_path / "floats.npz", x_train=to_f(x_tr), x_test=to_f(x_te))
    for binarize in ("none", "dynamic"):
        runs = []
        for name, path in (("bytes", as_bytes), ("floats", as_floats)):
            res = fit(overrides=[*RUN, "train.epochs=1", "data.name=npz", f"data.path={path}", f"data.binarize={binarize}",
                                 "model.likelihood.kind=continuous_bernoulli"], out=tmp_path / f"{name}-{binarize}")  # fmt: skip
            runs.append(res)
        a, b = runs
        assert a.data.x_train.dtype == torch.uint8 and b.data.x_train.dtype == torch.float32
        strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
        assert strip(a.history) == strip(b.history)
        assert {k: v for k, v in a.summary.items() if k != "train_seconds"} == {
            k: v for k, v in b.summary.items() if k != "train_seconds"
        }
        for (k, v), (k2, v2) in zip(a.vae.state_dict().items(), b.vae.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k


def test_training_output_says_how_many_points_went_to_each_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    path = _save(tmp_path / "a.npz", x_train=x, x_test=x[:7])
    quiet = [o for o in RUN if not o.startswith("train.progress")] + ["train.epochs=0"]
    fit(overrides=[*quiet, "data.name=npz", f"data.path={path}"], out=tmp_path / "r1")
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("data npz: 45 train / 5 valid (the last 10% of the training split: data.valid_size 0.1)")
    assert "/ 7 test points of shape (6,) (float32)" in line
    fit(overrides=[*quiet, "data.name=npz", f"data.path={path}", "data.valid_size=0"], out=tmp_path / "r2")
    assert capsys.readouterr().out.startswith("data npz: 50 train / 0 valid (none) / 7 test")
    with_valid = _save(tmp_path / "b.npz", x_train=x, x_test=x[:7], x_valid=x[:3])
    fit(overrides=[*quiet, "data.name=npz", f"data.path={with_valid}"], out=tmp_path / "r3")
    assert capsys.readouterr().out.startswith("data npz: 50 train / 3 valid (the dataset's own) / 7 test")
    assert json.loads((tmp_path / "r3" / "summary.json").read_text())["epochs"] == 0
