"""``data.name: hf``: a local Hugging Face dataset (save_to_disk directory or parquet files) the test builds."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pyro_vae import cli, fit
from pyro_vae.data import load
from pyro_vae.errors import DataError

datasets = pytest.importorskip("datasets", reason='the optional extra is not installed: pip install "pyro-vae[hf]"')

BASE = {"binarize": "none", "valid_size": 0.0, "limit": 0}


def _images(n: int, seed: int, size: tuple[int, int] = (12, 10)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _expected(img: Image.Image, size: int = 8) -> bytes:
    t = TF.pil_to_tensor(img.convert("RGB"))
    t = TF.center_crop(t, [min(t.shape[-2:])] * 2)
    return bytes(TF.resize(t, [size, size], antialias=True).numpy())


def _dataset(images: list[Image.Image], labels: list[Any]) -> Any:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)


def hf_cfg(path: Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {**BASE, "name": "hf", "path": str(path), "size": 8, "cache_dir": str(tmp_path / "cache"), **kw}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, list[Image.Image]], dict[str, list[int]]]:
    imgs = {"train": _images(9, 0), "validation": _images(3, 1), "test": _images(4, 2)}
    labels = {"train": [i % 3 for i in range(9)], "validation": [2, 1, 0], "test": [0, 0, 1, 2]}
    dd = datasets.DatasetDict({k: _dataset(imgs[k], labels[k]) for k in imgs})
    dd.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", imgs, labels


def test_save_to_disk_directory_keeps_splits_pixels_and_labels(tmp_path: Path, saved: Any) -> None:
    path, imgs, labels = saved
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    ds = load(hf_cfg(path, tmp_path))
    assert ds.x_train.dtype == torch.uint8 and ds.event_shape == (3, 8, 8)
    assert ds.num_classes == 3 and ds.valid_source == "the dataset's own"
    for split, key in (("train", "train"), ("valid", "validation"), ("test", "test")):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert [bytes(v.numpy()) for v in x] == [_expected(i) for i in imgs[key]]  # row order kept
        assert y.tolist() == labels[key]
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before  # nothing written into the dataset


def test_parquet_files_named_by_split(tmp_path: Path) -> None:
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    train, test = _images(6, 3), _images(2, 4)
    _dataset(train, [0, 1, 2, 0, 1, 2]).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    _dataset(test, [2, 2]).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    ds = load(hf_cfg(tmp_path / "pq", tmp_path, label_column="label"))
    assert [bytes(v.numpy()) for v in ds.x_train] == [_expected(i) for i in train]
    assert [bytes(v.numpy()) for v in ds.x_test] == [_expected(i) for i in test]
    assert ds.y_test.tolist() == [2, 2]


def test_one_split_gets_a_seeded_test_split_and_string_labels(tmp_path: Path) -> None:
    imgs = _images(10, 5)
    names = ["b", "a"] * 5
    datasets.Dataset.from_dict({"picture": imgs, "kind": names},
                               features=datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string")})
                               ).to_parquet(str(tmp_path / "one.parquet"))  # fmt: skip
    cfg = hf_cfg(tmp_path / "one.parquet", tmp_path, image_column="picture", label_column="kind", test_size=3)
    a, b = load(cfg), load({**cfg, "cache": False})
    assert (len(a.x_train), len(a.x_test)) == (7, 3) and torch.equal(a.x_test, b.x_test)
    by_pixels = {_expected(i): {"a": 0, "b": 1}[n] for i, n in zip(imgs, names)}  # strings numbered in sorted order
    for x, y in ((a.x_train, a.y_train), (a.x_test, a.y_test)):
        assert [by_pixels[bytes(v.numpy())] for v in x] == y.tolist()


def test_numeric_array_column_follows_the_npz_rule(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    feats = datasets.Features({"pixels": datasets.Array3D((1, 4, 4), "uint8")})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"pixels": x[:6]}, features=feats),
                               "test": datasets.Dataset.from_dict({"pixels": x[6:]}, features=feats)})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "arr"))
    ds = load(hf_cfg(tmp_path / "arr", tmp_path, image_column="pixels"))
    assert ds.x_train.dtype == torch.uint8 and torch.equal(ds.x_train, torch.from_numpy(x[:6]))
    assert ds.y_train is None  # no label column


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"image_column": "img"}, r"data.image_column: 'img' is not a column of .*; columns: image, label"),
        ({"label_column": "class"}, r"data.label_column: 'class' is not a column"),
        ({"path": "missing"}, r"data.path: '.*missing' does not exist"),
    ],
)
def test_bad_options_are_one_clear_data_error(tmp_path: Path, saved: Any, kw: dict[str, Any], fragment: str) -> None:
    path, _, _ = saved
    cfg = {**hf_cfg(path, tmp_path), **kw}
    if "path" in kw:
        cfg["path"] = str(tmp_path / kw["path"])
    with pytest.raises(DataError, match=fragment):
        load(cfg)


def test_a_folder_without_a_dataset_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"neither a saved dataset .* nor \.parquet files"):
        load(hf_cfg(tmp_path / "nothing", tmp_path))


def test_missing_extra_names_the_install_command(
    tmp_path: Path, saved: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = saved
    real_import = builtins.__import__

    def no_datasets(name: str, *a: Any, **k: Any) -> Any:
        if name == "datasets" or name.startswith("datasets."):
            raise ModuleNotFoundError("No module named 'datasets'")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "datasets")
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    rc = cli.main(["train", "--set", "data.name=hf", "--set", f"data.path={path}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'pip install "pyro-vae[hf]"' in err


def test_trains_from_a_saved_dataset(tmp_path: Path, saved: Any) -> None:
    path, _, _ = saved
    res = fit(
        overrides=["data.name=hf", f"data.path={path}", "data.size=8", f"data.cache_dir={tmp_path / 'c'}",
                   "model.network.hidden=[16]", "model.likelihood.kind=discretized_logistic", "train.epochs=1",
                   "train.progress=false", "train.figures=false", "train.eval_particles=2"],
        out=tmp_path / "run",
    )  # fmt: skip
    assert res.data.event_shape == (3, 8, 8) and np.isfinite(res.summary["test_elbo"])


def test_an_undecodable_row_is_named(tmp_path: Path) -> None:
    good = _images(3, 6)
    rows = [{"bytes": b"not an image", "path": None}, *good]
    feats = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": rows}, features=feats).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"cannot decode image all row 0 of '.*bad.parquet' \(UnidentifiedImageError"):
        load(hf_cfg(tmp_path / "bad.parquet", tmp_path, test_size=1))
