"""Resident set and time of one L_5000 ``point_terms`` call on MNIST test images: this checkout against the
evaluation of an earlier commit, each variant in a fresh process.

The earlier evaluation module is read from git (``--before COMMIT``, its ``pyro_vae/evaluate.py``) and
imported with its relative imports pointed at this checkout's package, so both variants run on the same
model, data, draws (seed) and machine. Each run samples ``VmRSS`` every 50 ms from a thread (torch
operations release the GIL); variants run one after the other, in the order given, under whatever load
the machine has (recorded). ``--env`` variants rerun the earlier module with allocator settings
(``MALLOC_ARENA_MAX=1``: one malloc arena for all threads; ``MALLOC_MMAP_THRESHOLD_``: a fixed
threshold above which blocks are mapped and unmapped on free), to locate the growth.

Run: ``python benchmarks/bench_eval_memory.py --points 300 --before 225df15 --out benchmarks/results``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from _common import machine, write

_CHILD = r"""
import importlib.util, json, os, sys, threading, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import torch
module_file, points, k, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
from bench_eval import spec
from pyro_vae import data as data_mod
from pyro_vae.models.vae import build_model
if module_file == "current":
    from pyro_vae.evaluation import evaluate as ev
else:
    spec_ = importlib.util.spec_from_file_location("pyro_vae._bench_before_evaluate", module_file)
    ev = importlib.util.module_from_spec(spec_)
    sys.modules[spec_.name] = ev  # dataclasses look their module up there
    spec_.loader.exec_module(ev)
cfg = spec("cpu")
ds = data_mod.load(cfg["data"], "cpu")
x = ds.x_test[:points].clone()
del ds
torch.manual_seed(0)
vae = build_model(cfg, (1, 28, 28))

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

samples, stop = [], threading.Event()
def watch():
    while not stop.is_set():
        samples.append((time.perf_counter(), rss()))
        time.sleep(0.05)
ev.point_terms(vae, x[:1], None, 10, means=False)  # first-call costs
torch.manual_seed(1)
r0, t0, c0 = rss(), time.perf_counter(), time.process_time()
w = threading.Thread(target=watch, daemon=True)
w.start()
t = ev.point_terms(vae, x, None, k, means=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
stop.set()
w.join()
trace = [round(s, 1) for _, s in samples[:: max(1, len(samples) // 12)]]
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_start_mb": r0, "rss_end_mb": rss(),
                  "rss_peak_mb": max(s for _, s in samples), "rss_trace_mb": trace,
                  "mean_L_K": float(t.log_likelihood.double().mean())}))
"""


def before_module(commit: str, where: Path) -> Path:
    """The evaluation module of ``commit`` as a file whose package-relative imports name ``pyro_vae``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:pyro_vae/evaluate.py"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    lines = []
    for line in src.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("from . import "):
            line = line.replace("from . import ", "from pyro_vae import ", 1)
        elif stripped.startswith("from .") and not stripped.startswith("from .."):
            line = line.replace("from .", "from pyro_vae.", 1)
        lines.append(line)
    path = where / f"evaluate_{commit}.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=300)
    ap.add_argument("--K", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before", default="225df15", help="the commit whose pyro_vae/evaluate.py is 'before'")
    ap.add_argument("--variants", default="before,before:MALLOC_ARENA_MAX=1,current",
                    help="comma list of before | current, each optionally :ENV=VALUE")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    info = machine(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = before_module(args.before, Path(tmp))
        for variant in args.variants.split(","):
            which, _, env_kv = variant.partition(":")
            env = dict(os.environ)
            if env_kv:
                key, _, value = env_kv.partition("=")
                env[key] = value
            module = "current" if which == "current" else str(old)
            la = os.getloadavg()[0]
            r = subprocess.run(
                [sys.executable, "-c", _CHILD, str(ROOT), module, str(args.points), str(args.K), str(args.threads)],
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            if r.returncode != 0:
                sys.exit(f"{variant}: failed\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(loadavg_1min_before=la, loadavg_1min_after=os.getloadavg()[0])
            rows[variant] = res
            print(variant, res, flush=True)
    md = [
        (
            f"### One `point_terms` call: {args.points} MNIST test images x K = {args.K}, {args.threads} threads "
            f"(before = `{args.before}`)\n"
        ),
        "| variant | wall s | CPU s | RSS start -> end, MB | peak MB | RSS trace (MB) | load avg (1 min) | mean L_K |",
        "|---|---:|---:|---|---:|---|---|---:|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} "
            f"| {r['rss_peak_mb']:.0f} | {' '.join(f'{v:.0f}' for v in r['rss_trace_mb'])} "
            f"| {r['loadavg_1min_before']:.1f} -> {r['loadavg_1min_after']:.1f} | {r['mean_L_K']:.4f} |"
        )
    write(args.out, "eval_memory", {"machine": info, "args": vars(args) | {"out": str(args.out)}, "runs": rows},
          "\n".join(md) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
