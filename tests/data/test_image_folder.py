"""A folder of images as a dataset: layouts, labels, splits, decoding, the on-disk cache, and its errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pyro_vae import cli, fit
from pyro_vae.data import as_float, load
from pyro_vae.data import image_cache as cache_mod
from pyro_vae.errors import DataError

BASE = {"binarize": "none", "valid_size": 0.0, "limit": 0}
#: Solid colours, one per class: a decoded image shows which class folder it came from.
COLOURS = {"apple": (255, 0, 0), "grass": (0, 255, 0), "sky": (0, 0, 255)}


def _solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _noise(path: Path, seed: int, size: tuple[int, int] = (30, 22), mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a, mode).save(path)
    return a


def classes_folder(root: Path, per_class: int = 10) -> Path:
    for name, rgb in COLOURS.items():
        for i in range(per_class):
            _solid(root / name / f"{i:03d}.png", rgb)  # PNG: lossless, so the colour is exact
    return root


def folder_cfg(path: Path, tmp_path: Path, **kw: object) -> dict[str, object]:
    return {**BASE, "name": "image_folder", "path": str(path), "size": 8, "cache_dir": str(tmp_path / "cache"), **kw}


def _class_of_pixels(x: torch.Tensor) -> list[str]:
    """The class whose colour each (3, H, W) uint8 image shows."""
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    return [by_rgb[tuple(int(v) for v in img[:, 0, 0])] for img in x]


def test_class_folders_give_labels_that_match_the_images(tmp_path: Path) -> None:
    ds = load(folder_cfg(classes_folder(tmp_path / "imgs"), tmp_path, test_size=0.2, valid_size=3))
    assert ds.x_train.dtype == torch.uint8 and ds.event_shape == (3, 8, 8)
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (21, 3, 6)  # 30 images: 20% test, 3 valid
    assert ds.num_classes == 3
    assert ds.describe() == ("data image_folder: 21 train / 3 valid (the last 3 points of the training split: "
                             "data.valid_size 3) / 6 test points of shape (3, 8, 8) (uint8, x/255 per batch)")  # fmt: skip
    names = sorted(COLOURS)  # labels 0..C-1 in sorted folder-name order, as torchvision's ImageFolder
    for split in ("train", "valid", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert _class_of_pixels(x) == [names[i] for i in y.tolist()], split
    assert len(set(ds.y_test.tolist())) > 1  # the seeded split is shuffled, not the last class folder


def test_split_is_fixed_whatever_the_run_seed_and_partitions_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    pixels = {f"{i:02d}.png": _noise(folder / f"{i:02d}.png", i, (8, 8)) for i in range(25)}
    torch.manual_seed(1)
    a = load(folder_cfg(folder, tmp_path, crop="none", test_size=5))
    torch.manual_seed(2)
    b = load(folder_cfg(folder, tmp_path, crop="none", test_size=5))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert a.y_train is None and a.num_classes == 0  # a flat folder has no labels
    # every image once, in exactly one split
    seen = [bytes(img.permute(1, 2, 0).contiguous().numpy()) for img in torch.cat([a.x_train, a.x_test])]
    assert sorted(seen) == sorted(bytes(p.reshape(8, 8, 3)) for p in pixels.values())
    assert len(a.x_test) == 5


@pytest.mark.parametrize("crop", ["center", "none", 12])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixels_equal_pillow_then_torchvision(tmp_path: Path, crop: object, channels: int) -> None:
    folder = tmp_path / "imgs"
    files = [folder / "a.jpg", folder / "b.png", folder / "c.webp"]
    for i, f in enumerate(files):
        _noise(f, i, (30, 22))
    ds = load(folder_cfg(folder, tmp_path, crop=crop, channels=channels, size=10, test_size=1))
    got = {bytes(x.numpy()) for x in torch.cat([ds.x_train, ds.x_test])}
    want = set()
    for f in files:
        img = TF.pil_to_tensor(Image.open(f).convert("RGB" if channels == 3 else "L"))
        side = {"center": 22, "none": 0, 12: 12}[crop]  # type: ignore[index]
        if side:
            img = TF.center_crop(img, [side, side])
        want.add(bytes(TF.resize(img, [10, 10], antialias=True).numpy()))
    assert got == want and ds.event_shape == (channels, 10, 10)


def test_mixed_modes_are_converted_to_the_requested_channels(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    grey = _noise(folder / "grey.png", 0, (8, 8), "L")
    rgba = _noise(folder / "rgba.png", 1, (8, 8), "RGBA")
    rgb = _noise(folder / "rgb.png", 2, (8, 8), "RGB")
    ds = load(folder_cfg(folder, tmp_path, crop="none", test_size=1))
    imgs = {bytes(x.numpy()) for x in torch.cat([ds.x_train, ds.x_test])}
    chw = lambda a: bytes(np.ascontiguousarray(a.transpose(2, 0, 1)))
    assert imgs == {chw(np.stack([grey] * 3, -1)), chw(rgba[..., :3]), chw(rgb)}  # grey repeated, alpha dropped


def test_explicit_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for name in ("apple", "sky"):
            for i in range(n):
                _solid(root / split / name / f"{i}.png", COLOURS[name])
    ds = load(folder_cfg(root, tmp_path, valid_size=0.5))  # valid_size is unused: val/ is the valid split
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (12, 4, 6)
    assert ds.valid_source == "the dataset's own" and ds.num_classes == 2
    for split in ("train", "valid", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert _class_of_pixels(x) == [["apple", "sky"][i] for i in y.tolist()]


def test_explicit_train_and_test_folders_without_valid(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for split, n in (("train", 10), ("test", 4)):
        for i in range(n):
            _noise(root / split / f"{i}.png", 100 * len(split) + i, (8, 8))
    ds = load(folder_cfg(root, tmp_path, valid_size=0.2, crop="none"))
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (8, 2, 4) and ds.y_train is None
    assert ds.valid_source.startswith("the last 20% of the training split")
    (root / "test" / "0.png").rename(root / "0.png")  # images beside the split folders are not read
    for p in (root / "test").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"no \.jpg/\.jpeg/\.png/\.webp images under '.*test'"):
        load(folder_cfg(root, tmp_path))


def test_pool_decoding_equals_one_process(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(140):  # enough for the pool (at least 64 images per process)
        _noise(folder / f"{i:03d}.png", i, (6, 6))
    one = load(folder_cfg(folder, tmp_path, cache=False, decode_workers=1, size=6))
    two = load(folder_cfg(folder, tmp_path, cache=False, decode_workers=2, size=6))
    assert torch.equal(one.x_train, two.x_train) and torch.equal(one.x_test, two.x_test)
    assert not (tmp_path / "cache").exists()  # cache: false writes nothing


def test_cache_is_reused_and_invalidated_by_any_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=4)
    cfg = folder_cfg(folder, tmp_path)
    first = load(cfg)
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".lock", ".npy"]  # no temporary file left behind

    def no_decoding(*a: object, **k: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "decode_all", no_decoding)
    again = load(cfg)  # read from the cache, memory-mapped
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_train, again.y_train)
    monkeypatch.undo()

    calls = []
    real = cache_mod.decode_all
    monkeypatch.setattr(cache_mod, "decode_all", lambda *a, **k: (calls.append(1), real(*a, **k)))
    victim = folder / "sky" / "000.png"
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))  # touched
    load(cfg)
    _solid(folder / "sky" / "new.png", COLOURS["sky"])  # added
    assert len(load(cfg).x_train) + len(load(cfg).x_test) == 13
    load({**cfg, "size": 4})  # another transform
    assert len(calls) == 3
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4 and not list((tmp_path / "cache").glob("*.tmp"))


def test_interrupted_decoding_leaves_no_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=2)

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "decode_all", killed)
    with pytest.raises(KeyboardInterrupt):
        load(folder_cfg(folder, tmp_path))
    assert list((tmp_path / "cache").glob("*.npy")) == list((tmp_path / "cache").glob("*.tmp")) == []


def test_processes_starting_together_decode_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two loads of the same new folder at once (torchrun ranks, compare workers): one decodes, the
    other waits on the lock and reads its file."""
    folder = classes_folder(tmp_path / "imgs", per_class=2)
    calls: list[int] = []
    real = cache_mod.decode_all

    def slow(*a: object, **k: object) -> None:
        calls.append(1)
        time.sleep(0.5)  # both would be decoding at once without the lock
        real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_mod, "decode_all", slow)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(load(folder_cfg(folder, tmp_path)))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and len(results) == 2
    assert torch.equal(results[0].x_train, results[1].x_train)  # type: ignore[attr-defined]


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=2)
    good = load(folder_cfg(folder, tmp_path)).x_train.clone()  # a copy: the loaded tensor maps the file
    (cached,) = (tmp_path / "cache").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:100])  # truncated in place
    again = load(folder_cfg(folder, tmp_path))
    assert torch.equal(good, again.x_train)
    assert np.load(cached, mmap_mode="r").shape == (len(good) + len(again.x_test), 3, 8, 8)  # replaced, whole


def test_cvae_trains_on_folder_labels(tmp_path: Path) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=6)
    res = fit(
        overrides=["data.name=image_folder", f"data.path={folder}", "data.size=8", f"data.cache_dir={tmp_path / 'c'}",
                   "model.kind=cvae", "model.network.hidden=[16]", "model.likelihood.kind=discretized_logistic",
                   "train.epochs=1", "train.progress=false", "train.figures=false", "train.eval_particles=2"],
        out=tmp_path / "run",
    )  # fmt: skip
    assert res.data.num_classes == 3 and res.vae.num_classes == 3
    assert np.isfinite(res.summary["test_elbo"])


# --------------------------------------------------------------------------- one-line errors


def _touch(p: Path, data: bytes = b"") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d / "missing", r"data.path: folder '.*missing' does not exist"),
        (lambda d: _touch(d / "file.png"), r"is not a folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"no \.jpg/\.jpeg/\.png/\.webp images in '.*empty'"),
        (lambda d: _touch(d / "txt" / "notes.txt").parent, r"no \.jpg/\.jpeg/\.png/\.webp images"),
        (
            lambda d: (_solid(d / "a" / "x.png", (1, 2, 3)), _solid(d / "b.png", (1, 2, 3)), d)[-1],
            r"holds 1 images beside 1 class folders \(e.g. 'b.png'\)",
        ),
        (lambda d: (_solid(d / "train" / "x.png", (1, 2, 3)), d)[-1], r"has a train/ folder but no test/ folder"),
        (lambda d: (_solid(d / "x.png", (1, 2, 3)), d)[-1], r"data.test_size: 0.1 leaves no training images"),
    ],
)
def test_bad_folders_are_one_clear_data_error(tmp_path: Path, make: object, fragment: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(DataError, match=fragment):
        load(folder_cfg(path, tmp_path))


def test_unreadable_image_is_named_with_the_count(tmp_path: Path) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=3)
    _touch(folder / "sky" / "broken.jpg", b"\xff\xd8 not a jpeg")
    _touch(folder / "apple" / "empty.png")
    with pytest.raises(DataError, match=r"cannot decode image '.*apple/empty.png' .*; 2 of 11 images are unreadable"):
        load(folder_cfg(folder, tmp_path))
    assert list((tmp_path / "cache").glob("*.tmp")) == []  # the temporary cache file is gone
    (folder / "._hidden.jpg").write_bytes(b"AppleDouble")  # names starting with a dot are not images
    (folder / "sky" / "broken.jpg").unlink()
    (folder / "apple" / "empty.png").unlink()
    assert len(load(folder_cfg(folder, tmp_path)).x_train) == 8


def test_unwritable_cache_is_one_clear_error(tmp_path: Path) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=2)
    blocker = _touch(tmp_path / "a-file")
    with pytest.raises(
        DataError, match=r"data.cache_dir: cannot write the image cache in '.*a-file/sub'.*cache: false"
    ):
        load(folder_cfg(folder, tmp_path, cache_dir=str(blocker / "sub")))


def test_cache_permission_denied_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root nothing is refused, so the refusal is simulated where the cache folder is created."""
    folder = classes_folder(tmp_path / "imgs", per_class=2)
    real_mkdir = Path.mkdir

    def denied(self: Path, *a: object, **k: object) -> None:
        if self == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(DataError, match=r"cannot write the image cache in '.*locked' \(Permission denied\); set data"):
        load(folder_cfg(folder, tmp_path, cache_dir=str(tmp_path / "locked")))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_cache_without_permission_is_one_clear_error(tmp_path: Path) -> None:
    folder = classes_folder(tmp_path / "imgs", per_class=2)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DataError, match=r"cannot write the image cache in '.*locked' \(Permission denied\)"):
        load(folder_cfg(folder, tmp_path, cache_dir=str(locked)))


def test_cli_reports_a_missing_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["train", "--set", "data.name=image_folder", "--set", f"data.path={tmp_path / 'nope'}",
                   "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "does not exist" in err


@pytest.mark.parametrize("key, value, fragment", [("crop", "middle", "crop"), ("channels", "4", "channels")])
def test_bad_options_are_spec_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str,
                                     fragment: str) -> None:  # fmt: skip
    rc = cli.main(["train", "--set", "data.name=image_folder", "--set", f"data.path={tmp_path}",
                   "--set", f"data.{key}={value}", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and fragment in err


def test_celeba_is_an_image_folder_configuration(tmp_path: Path) -> None:
    """data.name: celeba decodes, crops and caches through the same code: its pixels equal image_folder's
    with crop 148 on the same files."""
    faces = tmp_path / "celeba" / "img_align_celeba"
    for i in range(6):
        _noise(faces / f"{i:06d}.jpg", i, (178, 218))
    c = load({**BASE, "name": "celeba", "root": str(tmp_path), "size": 16, "crop": 148, "max_images": 0,
              "download": False, "cache_dir": str(tmp_path / "cache")})  # fmt: skip
    f = load(folder_cfg(faces, tmp_path, size=16, crop=148, test_size=0.5))
    key = lambda ds: sorted(bytes(x.numpy()) for x in torch.cat([ds.x_train, ds.x_test]))
    assert key(c) == key(f) and c.x_train.dtype == torch.uint8
    assert torch.equal(as_float(c.x_train), c.split("train")[0])


def test_resume_may_move_the_cache_and_evaluate_reads_the_same_data(tmp_path: Path) -> None:
    from pyro_vae import evaluate
    from pyro_vae.rundir import load_run

    folder = classes_folder(tmp_path / "imgs", per_class=4)
    common = ["data.name=image_folder", f"data.path={folder}", "data.size=8", "model.network.hidden=[8]",
              "model.likelihood.kind=discretized_logistic", "train.progress=false", "train.figures=false",
              "train.eval_particles=2"]  # fmt: skip
    fit(overrides=[*common, "train.epochs=1", f"data.cache_dir={tmp_path / 'a'}"], out=tmp_path / "run")
    res = fit(overrides=["train.epochs=2", f"data.cache_dir={tmp_path / 'b'}"], out=tmp_path / "run", resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2] and len(list((tmp_path / "b").glob("*.npy"))) == 1
    run = load_run(tmp_path / "run")
    assert torch.equal(run.data.x_test, res.data.x_test) and run.data.x_test.dtype == torch.uint8
    assert np.isfinite(evaluate(run.vae, run.data, "test", num_particles=2).elbo)


def test_streamed_uint8_split_gives_the_in_memory_numbers(tmp_path: Path) -> None:
    """The memory-mapped uint8 training split read through the DataLoader (data.stream: true) trains
    exactly as the in-memory one: metrics and parameters bit for bit."""
    folder = classes_folder(tmp_path / "imgs", per_class=6)
    common = ["data.name=image_folder", f"data.path={folder}", "data.size=8", "model.network.hidden=[8]",
              "model.likelihood.kind=discretized_logistic", "train.progress=false", "train.figures=false",
              "train.eval_particles=2", "train.epochs=2", "train.batch_size=8", "data.stream_workers=0"]  # fmt: skip
    runs = [fit(overrides=[*common, f"data.stream={s}"], out=tmp_path / f"run-{s}") for s in ("false", "true")]
    assert runs[1].data.stream and not runs[0].data.stream
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(runs[0].history) == strip(runs[1].history)
    for (k, v), (_, w) in zip(runs[0].vae.state_dict().items(), runs[1].vae.state_dict().items()):
        assert torch.equal(v, w), k
