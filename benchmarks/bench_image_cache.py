"""First start vs cached start of ``data.name: image_folder`` on a CelebA-sized folder of JPEGs.

Makes a synthetic folder of N 64x64 JPEGs (smooth colour fields plus noise, 2-3 kB each, so the
decoder does real work; flat, like CelebA's ``img_align_celeba``) and measures, each in a fresh
subprocess so nothing is warm in Python:

- ``first``: ``data.load`` with an empty cache directory: list + stat the files, decode on every
  core (``decode_workers: 0``), write the ``.npy`` cache, map it;
- ``cached``: ``data.load`` again: list + stat the files, hash the key, map the cache;
- ``one process, float32`` (only up to ``--float-max`` images): the decoding the loaders did before
  (one process, no cache) followed by the float32 conversion they kept in memory.

For each: wall seconds of ``data.load``, the subprocess's resident memory after loading split into
anonymous (``RssAnon``: the process's own) and file-backed (``RssFile``: pages of the memory-mapped
cache, shared between processes and reclaimable by the kernel), the same after one pass over every
training image, and the peak (``VmHWM``; with the pool workers' peak for ``first``).

    python benchmarks/bench_image_cache.py --images 20000 50000 200000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write

SIDE = 64
_CHILD = r"""
import json, resource, sys, time
import torch
from pyro_vae.data import as_float, load

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out

cfg = json.loads(sys.argv[1])
as_floats = cfg.pop("as_floats")
import torchvision.transforms.v2.functional, PIL.Image  # imported before timing: torch's own start is not the data's
try:  # reset VmHWM, so the peak below is this load's (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status()
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
c0 = cpu()
t = time.perf_counter()
ds = load(cfg)
if as_floats:  # what the loaders kept before: float32 tensors of every split
    ds = [as_float(ds.x_train), as_float(ds.x_valid), as_float(ds.x_test)]
    x_train = ds[0]
else:
    x_train = ds.x_train
seconds = time.perf_counter() - t
cpu_seconds = cpu() - c0  # this process and its (joined) pool workers
after_load = status()
total = 0.0
for s in range(0, len(x_train), 4096):  # one pass over every training image, as an epoch reads them
    total += float(x_train[s : s + 4096].float().sum())
after_pass = status()
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "before": before, "after_load": after_load, "after_pass": after_pass,
                  "peak_children": children, "n_train": len(x_train), "dtype": str(x_train.dtype)}))
"""


def _make_chunk(args: tuple[str, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, start, stop = args
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
        a = np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (SIDE, SIDE, 3))
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(f"{folder}/{i:06d}.jpg", quality=90)


def make_folder(folder: Path, n: int) -> float:
    """``n`` JPEGs in ``folder`` (kept between runs: only the missing ones are made); seconds taken."""
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have == n:
        return 0.0
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    step = 2000
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_make_chunk, [(str(folder), s, min(s + step, n)) for s in range(0, n, step)])
    return time.perf_counter() - t


def measure(
    folder: Path, cache_dir: Path, *, as_floats: bool = False, workers: int = 0, cache: bool = True
) -> dict[str, Any]:
    cfg = {"name": "image_folder", "path": str(folder), "size": SIDE, "crop": "center", "channels": 3,
           "test_size": 0.1, "labels": True, "cache": cache, "cache_dir": str(cache_dir), "decode_workers": workers,
           "binarize": "none", "valid_size": 0.1, "limit": 0, "stream": False, "as_floats": as_floats}  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env,
                       check=False, timeout=7200)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"measurement failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _grew(now: dict[str, int], before: dict[str, int], key: str) -> int:
    return now[key] - before[key]


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown tables of ``rows`` (as saved in the JSON)."""
    lines = [
        (
            f"{SIDE}x{SIDE} RGB JPEGs, `data.load` in a fresh process; decoding on {os.cpu_count()} cores "
            "(`decode_workers: 0`). Wall seconds of `data.load` and its CPU seconds (the process and its pool "
            "workers: the work done, steadier than wall time on this shared machine). Memory is what `data.load` added to the process (torch and torchvision already "
            "imported): resident after loading, anonymous (the process's own) and file-backed (mapped cache pages: "
            "shared between processes, reclaimable by the kernel); both after one pass over every training image; "
            "peak (VmHWM, reset before loading, above the pre-load resident size; it counts mapped cache pages too).\n"
        ),
        "| images | start | wall s | CPU s | RSS anon after load (GB) | RSS file after load (GB) | anon + file after a pass (GB) | peak (GB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        variants = [
            ("first (decode + write cache)", r["first"]),
            ("cached", r["cached"]),
            ("cached, again", r["cached_again"]),
        ]
        if "one_process_float32" in r:
            variants.append(("one process, float32 (before)", r["one_process_float32"]))
        for label, m in variants:
            b, al, ap_ = m["before"], m["after_load"], m["after_pass"]
            peak = ap_["VmHWM"] - b["RssAnon"] - b["RssFile"]
            lines.append(
                f"| {r['images']:,} | {label} | {m['seconds']:.1f} | {m.get('cpu_seconds', float('nan')):.1f} | "
                f"{_gb(_grew(al, b, 'RssAnon'))} | "
                f"{_gb(_grew(al, b, 'RssFile'))} | {_gb(_grew(ap_, b, 'RssAnon') + _grew(ap_, b, 'RssFile'))} | {_gb(peak)} |"
            )
    lines.append("")
    lines.append(
        "| images | JPEGs on disk (MB) | cache file (MB) | float32 in memory (MB, computed: N x 3 x 64 x 64 x 4) |"
    )
    lines.append("|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['jpeg_mb']:.0f} | {r['cache_mb']:.0f} | {r['images'] * 3 * SIDE * SIDE * 4 / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 50000, 200000])
    ap.add_argument("--float-max", type=int, default=50000, help="largest N for the one-process float32 path")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pyro-vae-bench-images"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--keep", action="store_true", help="keep the image folders and caches")
    ap.add_argument(
        "--rows-from", type=Path, help="rewrite the markdown from an earlier run's JSON (nothing is measured)"
    )
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    info = machine(1)
    if a.rows_from:
        saved = json.loads(a.rows_from.read_text())
        rows, info = saved["rows"], saved["machine"]
    for n in [] if a.rows_from else a.images:
        folder, cache_dir = a.work / f"jpegs-{n}", a.work / f"cache-{n}"
        made = make_folder(folder, n)
        jpeg_bytes = sum(p.stat().st_size for p in folder.iterdir())
        shutil.rmtree(cache_dir, ignore_errors=True)
        row: dict[str, Any] = {"images": n, "jpeg_mb": jpeg_bytes / 2**20, "make_folder_s": made}
        row["first"] = measure(folder, cache_dir)
        row["cache_mb"] = sum(p.stat().st_size for p in cache_dir.iterdir()) / 2**20
        row["cached"] = measure(folder, cache_dir)
        row["cached_again"] = measure(folder, cache_dir)
        if n <= a.float_max:
            row["one_process_float32"] = measure(folder, cache_dir, as_floats=True, workers=1, cache=False)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not a.keep:
            shutil.rmtree(cache_dir, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)

    write(
        a.out, "image_cache", {"machine": info, "side": SIDE, "rows": rows}, render(rows), keep_load=bool(a.rows_from)
    )


if __name__ == "__main__":
    main()
