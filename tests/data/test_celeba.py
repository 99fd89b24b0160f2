"""CelebA loading (on a fake image folder the test writes), the conv64 network, and the CelebA specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pyro_vae import fit
from pyro_vae.data import as_float, load
from pyro_vae.errors import DataError, SpecError
from pyro_vae.models.nets import conv64
from pyro_vae.spec import from_args

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def fake_celeba(root: Path, n: int = 12, partition: bool = True, size: tuple[int, int] = (218, 178)) -> Path:
    """ROOT/celeba/img_align_celeba/000001.jpg ... (random 218x178 faces) and list_eval_partition.txt."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(1, n + 1):
        img = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.jpg")
        lines.append(f"{i:06d}.jpg {0 if i <= n - 4 else (1 if i <= n - 2 else 2)}")
    if partition:
        (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_loads_crops_and_resizes_with_the_official_partition(tmp_path: Path) -> None:
    fake_celeba(tmp_path)
    ds = load({"name": "celeba", "root": str(tmp_path), "size": 64, "crop": 148, "max_images": 0, "download": False,
               "binarize": "none", "valid_size": 0.0, "limit": 0})  # fmt: skip
    assert ds.event_shape == (3, 64, 64)
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (8, 2, 2)
    assert ds.x_train.dtype == torch.uint8  # 8-bit pixels stay 8-bit; the model sees x / 255
    x = as_float(ds.x_train)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(x * 255, (x * 255).round(), atol=1e-4, rtol=0)  # 8-bit levels


def test_crop_then_resize_matches_torchvision(tmp_path: Path) -> None:
    import torchvision.transforms.v2.functional as TF

    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    img = torch.randint(0, 256, (3, 218, 178), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    ds = load({"name": "celeba", "root": str(tmp_path), "size": 32, "crop": 148, "max_images": 0, "download": False,
               "binarize": "none", "valid_size": 0.0, "limit": 0})  # fmt: skip
    ref = TF.resize(TF.center_crop(img, [148, 148]), [32, 32], antialias=True).float() / 255
    torch.testing.assert_close(as_float(ds.x_train[0]), ref, atol=0, rtol=0)
    assert len(ds.x_test) == 1  # no partition file: a seeded tenth (at least one image) is the test split


def test_root_from_environment_and_max_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_celeba(tmp_path, n=14)
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))
    ds = load({"name": "celeba", "root": None, "size": 16, "crop": 148, "max_images": 5, "download": False,
               "binarize": "none", "valid_size": 0.0, "limit": 0})  # fmt: skip
    assert ds.event_shape == (3, 16, 16) and len(ds.x_train) == 5


def test_missing_folder_is_a_clear_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no images under .*img_align_celeba.*PYRO_VAE_DATA"):
        load({"name": "celeba", "root": str(tmp_path), "size": 64, "crop": 148, "max_images": 0, "download": False,
              "binarize": "none", "valid_size": 0.0, "limit": 0})  # fmt: skip


def test_conv64_shapes_and_bad_input() -> None:
    nets = conv64(event_shape=(3, 64, 64), latent_dim=5, out_params=2, filters=[4, 4, 8, 8], dense=16)
    h = nets.encoder(torch.rand(3, 3, 64, 64))
    assert h.shape == (3, 16)
    assert nets.decoder(torch.randn(7, 3, 5)).shape == (7, 3, 2, 3, 64, 64)
    with pytest.raises(SpecError, match="divisible by 16"):
        conv64(event_shape=(1, 28, 28), latent_dim=2, out_params=1)


def test_celeba_gaussian_spec_resolves_to_seed_003() -> None:
    cfg = from_args(str(EXPERIMENTS / "celeba_gaussian.yaml"))
    assert cfg["model"]["network"]["kind"] == "conv64"
    assert cfg["model"]["likelihood"] == {"kind": "gaussian", "scale": pytest.approx(0.5**0.5), "min_scale": 1e-3}


def test_celeba_smoke_spec_trains_on_fake_faces(tmp_path: Path) -> None:
    fake_celeba(tmp_path / "data", n=24)
    res = fit(
        str(EXPERIMENTS / "celeba_smoke.yaml"), overrides=[f"data.root={tmp_path / 'data'}"], out=tmp_path / "run"
    )
    assert res.data.event_shape == (3, 64, 64)
    assert res.history and torch.isfinite(torch.tensor(res.history[-1]["train_loss"]))
    figs = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    assert {"reconstructions.png", "samples.png"} <= figs
