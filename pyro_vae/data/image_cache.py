"""Decoding images once: a process pool, and an on-disk cache of the decoded 8-bit pixels.

:func:`decoded` turns a list of image sources (file paths, or encoded bytes from a Hugging Face
dataset) into one ``uint8`` array of shape ``(N, C, size, size)``:

- every image is opened with Pillow, converted to ``channels`` (1: Pillow's ``"L"``, ITU-R 601-2
  luma; 3: ``"RGB"``, a greyscale image repeated, an alpha channel dropped), centre-cropped
  (``crop``: ``"center"`` the largest centred square, an integer a centred square of that side,
  ``"none"`` no crop) and resized to ``size`` x ``size`` with torchvision's antialiased bilinear
  resize (``transforms.v2.functional``), as torchvision's CelebA recipes do;
- the work is split over a pool of processes (``workers``; 0 = every core this process may use);
- the result is stored as a ``.npy`` file in ``cache_dir`` and memory-mapped on later starts. The file
  name carries a SHA-256 key of the transform and of every source's name, size in bytes and
  modification time, so adding, removing, replacing or touching one image decodes the folder again.
  The file is written to a temporary name and renamed into place (``os.replace``), so a killed run
  never leaves a truncated cache behind; a lock file beside it (``flock``, released when a process
  dies) lets one of several processes starting on the same data decode while the others wait for it.

A source that Pillow cannot decode stops the load with one :class:`DataError` naming the first such
file and how many there are: a silently smaller dataset would change the splits and every number
measured on them, and a corrupt image is usually a truncated copy the user wants to know about.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataError

try:
    import fcntl
except ImportError:  # not POSIX: concurrent first starts each decode; the rename keeps the file whole
    fcntl = None  # type: ignore[assignment]

#: Bumped whenever the decoding below changes, so no stale cache is ever read.
CACHE_FORMAT = 1

Crop = Literal["center", "none"] | int
Source = str | bytes


@dataclass(frozen=True)
class Transform:
    """How a source image becomes a ``(channels, size, size)`` uint8 array."""

    size: int
    crop: Crop
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


def default_cache_dir() -> Path:
    """``$PYRO_VAE_CACHE``, else ``$XDG_CACHE_HOME/pyro-vae``, else ``~/.cache/pyro-vae``."""
    if os.environ.get("PYRO_VAE_CACHE"):
        return Path(os.environ["PYRO_VAE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pyro-vae"


def decode(source: Source, t: Transform) -> np.ndarray:
    """One image as a ``(channels, size, size)`` uint8 array (raises ``OSError``/``ValueError`` if unreadable)."""
    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        img = TF.pil_to_tensor(im.convert("RGB" if t.channels == 3 else "L"))  # (C, H, W) uint8
    h, w = img.shape[-2:]
    side = 0 if t.crop == "none" else min(h, w) if t.crop == "center" else min(int(t.crop), h, w)
    if side:
        img = TF.center_crop(img, [side, side])
    return TF.resize(img, [t.size, t.size], antialias=True).numpy()


def _decode_chunk(job: tuple[int, Sequence[Source], Transform]) -> tuple[int, np.ndarray, list[tuple[int, str]]]:
    """Decode ``sources`` (starting at global index ``start``); failures as ``(index, reason)``."""
    start, sources, t = job
    out = np.zeros((len(sources), *t.shape), dtype=np.uint8)
    failed: list[tuple[int, str]] = []
    for i, s in enumerate(sources):
        try:
            out[i] = decode(s, t)
        except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
            failed.append((start + i, f"{type(e).__name__}: {e}"))
    return start, out, failed


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: no oversubscription inside a worker


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _chunks(sources: Sequence[Source], t: Transform, size: int) -> Iterator[tuple[int, Sequence[Source], Transform]]:
    for start in range(0, len(sources), size):
        yield start, sources[start : start + size], t


def decode_all(
    sources: Sequence[Source], t: Transform, out: np.ndarray, *, workers: int = 0, name: Callable[[int], str] = repr
) -> None:
    """Decode every source into ``out[i]`` on ``workers`` processes (0: all cores); one DataError if any fails,
    naming the first failure as ``name(index)``."""
    n = len(sources)
    procs = min(workers or available_cores(), max(1, n // 64))  # below ~64 images a pool costs more than it saves
    chunk = max(16, min(256, -(-n // (procs * 4)))) if procs > 1 else max(n, 1)
    failed: list[tuple[int, str]] = []
    if procs <= 1:
        results: Iterator[tuple[int, np.ndarray, list[tuple[int, str]]]] = map(
            _decode_chunk, _chunks(sources, t, chunk)
        )
        for start, arr, bad in results:
            out[start : start + len(arr)] = arr
            failed += bad
    else:
        import torchvision.transforms.v2.functional  # noqa: F401  imported once here, inherited by the workers
        from PIL import Image  # noqa: F401

        # fork: workers start in milliseconds and inherit the sources; they only run Pillow and small torch ops
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(procs, initializer=_one_thread) as pool:
            for start, arr, bad in pool.imap_unordered(_decode_chunk, _chunks(sources, t, chunk)):
                out[start : start + len(arr)] = arr
                failed += bad
    if failed:
        failed.sort()
        i, reason = failed[0]
        more = f"; {len(failed)} of {n:,} images are unreadable" if len(failed) > 1 else ""
        raise DataError(f"cannot decode image {name(i)} ({reason}){more}; remove or replace it")


def fingerprint(entries: Sequence[tuple[str, int, int]], t: Transform, extra: str = "") -> str:
    """SHA-256 of the transform and each ``(name, size in bytes, mtime in ns)``, in order."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{t.size}|{t.crop}|{t.channels}|{extra}\n".encode())
    for name, size, mtime in entries:
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def file_entries(paths: Sequence[str], root: Path | str) -> list[tuple[str, int, int]]:
    """``(path relative to root, size, mtime_ns)`` for each file: the cache key of a folder of images."""
    prefix = len(str(root).rstrip(os.sep)) + 1
    out = []
    for name in paths:
        st = os.stat(name)
        out.append((name[prefix:].replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    return out


def _cache_error(folder: Path, e: OSError) -> DataError:
    reason = e.strerror or type(e).__name__
    return DataError(
        f"data.cache_dir: cannot write the image cache in {str(folder)!r} ({reason}); "
        "set data.cache_dir to a writable folder, or data.cache: false to decode into memory at every start"
    )


def _allocate(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file of zeros, its space reserved now (a full disk fails here, not as SIGBUS later)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = f.tell()
        size = offset + int(np.prod(shape))
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, size)
        else:
            f.truncate(size)
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=offset, shape=shape)


def decoded(
    sources: Sequence[Source],
    t: Transform,
    *,
    key: str,
    label: str,
    cache_dir: str | None,
    cache: bool = True,
    workers: int = 0,
    name: Callable[[int], str] = repr,
) -> np.ndarray:
    """The ``(N, C, size, size)`` uint8 pixels of ``sources``: read from the cache, or decoded (and cached).

    ``key`` identifies the sources and the transform (see :func:`fingerprint`); ``label`` is a readable
    prefix for the cache file name. With ``cache=False`` nothing is written: the pixels are decoded
    into memory at every call. The cached array is memory-mapped copy-on-write (``mmap_mode="c"``):
    the file is never modified and processes reading the same cache share its pages.
    """
    shape = (len(sources), *t.shape)
    if not cache:
        pixels = np.empty(shape, dtype=np.uint8)
        decode_all(sources, t, pixels, workers=workers, name=name)
        return pixels
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
    target = folder / f"{safe}-{'x'.join(map(str, t.shape))}-{key[:20]}.npy"
    arr = _read(target, shape)
    if arr is not None:
        return arr
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{target.stem}.lock", "a")  # noqa: SIM115  closed (and unlocked) by the with below
    except OSError as e:
        raise _cache_error(folder, e) from None
    with lock:
        if fcntl is not None:  # one process decodes (torchrun ranks, compare workers); the others wait and read
            fcntl.flock(lock, fcntl.LOCK_EX)
        arr = _read(target, shape)
        if arr is not None:
            return arr
        _write(sources, t, target, folder, shape, workers=workers, name=name)
    arr = _read(target, shape)
    assert arr is not None, f"{target} was just written"
    return arr


def _read(target: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None if there is none (or a foreign or damaged file, to be replaced)."""
    if not target.is_file():
        return None
    try:
        arr = np.load(target, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def _write(
    sources: Sequence[Source], t: Transform, target: Path, folder: Path, shape: tuple[int, ...], *, workers: int,
    name: Callable[[int], str],
) -> None:  # fmt: skip
    """Decode into a temporary file beside ``target``, then rename it into place (atomic)."""
    tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        out = _allocate(tmp, shape)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _cache_error(folder, e) from None
    try:
        decode_all(sources, t, out, workers=workers, name=name)
        out.flush()
        del out
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _cache_error(folder, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
