"""Datasets: shapes, splits, binarization, user arrays and their errors."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import data
from pyro_vae.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def load(**cfg):
    base = {"name": "digits", "binarize": "none", "valid_size": 0.1, "limit": 0}
    base.update(cfg)
    return data.load(base)


def test_digits_splits_and_range():
    ds = load()
    assert ds.event_shape == (1, 8, 8)
    assert len(ds.x_test) == 360
    assert len(ds.x_train) + len(ds.x_valid) == 1797 - 360
    assert len(ds.x_valid) == round(0.1 * 1437)
    assert 0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1
    assert ds.num_classes == 10
    # the split is fixed, whatever the run's seed
    torch.manual_seed(123)
    assert torch.equal(load().x_test, ds.x_test)


def test_valid_size_as_count_takes_the_last_training_points():
    full = load(valid_size=0)
    ds = load(valid_size=400)
    assert len(ds.x_valid) == 400
    assert torch.equal(ds.x_valid, full.x_train[-400:])


def test_static_binarization_is_fixed_and_dynamic_keeps_train_greyscale():
    a, b = load(binarize="static"), load(binarize="static")
    assert torch.equal(a.x_train, b.x_train)
    assert set(a.x_train.unique().tolist()) <= {0.0, 1.0}
    d = load(binarize="dynamic")
    assert len(d.x_train.unique()) > 2  # resampled per batch during training
    assert set(d.x_test.unique().tolist()) <= {0.0, 1.0}  # evaluation split binarized once
    # E[bernoulli(x)] = x
    x = torch.full((20000,), 0.3)
    assert abs(float(data.binarize(x).mean()) - 0.3) < 0.02


def test_batches_cover_every_index_once():
    idx = torch.cat(list(data.batches(103, 10, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert sorted(idx.tolist()) == list(range(103))


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return {"name": "npz", "path": str(p)}


def test_npz_with_valid_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    cfg = _npz(
        tmp_path,
        x_train=rng.random((50, 6)),
        x_test=rng.random((10, 6)),
        x_valid=rng.random((5, 6)),
        y_train=rng.integers(0, 3, 50),
        y_test=rng.integers(0, 3, 10),
        y_valid=rng.integers(0, 3, 5),
    )
    ds = load(**cfg)
    assert ds.event_shape == (6,) and len(ds.x_valid) == 5 and ds.num_classes == 3


def test_npz_uint8_images_are_scaled(tmp_path):
    x = np.full((4, 1, 4, 4), 255, dtype=np.uint8)
    ds = load(**_npz(tmp_path, x_train=x, x_test=x), valid_size=0)
    assert ds.x_train.dtype == torch.uint8 and float(ds.split("train")[0].max()) == 1.0  # kept 8-bit, seen as x/255


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x_train": np.ones((4, 3))}, "lacks x_test"),
        ({"x_train": np.full((4, 3), np.nan), "x_test": np.ones((2, 3))}, "NaN/inf"),
        ({"x_train": np.ones((4, 3)), "x_test": np.ones((2, 5))}, "shape"),
        ({"x_train": np.ones((4, 3)), "x_test": np.ones((2, 3)), "y_train": np.array([0, 1])}, "labels"),
        ({"x_train": np.ones((4, 3)), "x_test": np.ones((2, 3)), "y_train": np.array([0, -1, 0, 1])}, "negative"),
        ({"x_train": np.ones((0, 3)), "x_test": np.ones((2, 3))}, "empty"),
    ],
)
def test_npz_errors(tmp_path, arrays, fragment):
    with pytest.raises(DataError, match=fragment):
        load(**_npz(tmp_path, **arrays), valid_size=0)


def test_npz_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(name="npz", path=str(tmp_path / "no.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load(name="npz", path=str(bad))


def test_binarize_rejects_values_outside_unit_interval(tmp_path):
    x = np.full((4, 3), 2.0)
    with pytest.raises(DataError, match=r"needs values in \[0, 1\]"):
        load(**_npz(tmp_path, x_train=x, x_test=x), valid_size=0, binarize="static")


def test_mnist_offline_error_names_files_and_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load(name="mnist", root=str(tmp_path), download=False)
    assert "train-images-idx3-ubyte" in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="shared MNIST copy not present")
def test_mnist_from_shared_copy(monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(SHARED))
    ds = load(name="mnist", root=None, download=False, valid_size=400)
    assert ds.event_shape == (1, 28, 28)
    assert len(ds.x_train) == 59600 and len(ds.x_valid) == 400 and len(ds.x_test) == 10000
    assert ds.num_classes == 10
    assert os.environ["PYRO_VAE_DATA"] == str(SHARED)
