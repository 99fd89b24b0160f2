"""L_5000 on the MNIST test set: measured time beside the arithmetic lower bound of the decoder.

The model is the 784-200-200-50 tanh VAE of the IWAE table (Burda et al. 2015, Table 1; Bernoulli
likelihood, diagonal-Normal guide), freshly initialized: the cost of L_K does not depend on the weights.
``evaluate.point_terms`` scores ``--points`` statically binarized test images with ``--K`` particles
each (the whole 10,000-image test set by default; fewer are extrapolated linearly and labelled so).

The lower bound is arithmetic only: K x N draws, each one decoder pass of
2 (50*200 + 200*200 + 200*784) floating-point operations, divided by the matmul throughput of this
machine measured on the same shapes (``torch.nn.functional.linear``), the better of two ways of using
every core: torch's intra-op threads on one chunk of rows (how the evaluation ran before), and one
single-threaded stream of matmuls per core on blocks of ``log_weights.BLOCK_ROWS`` rows (how it runs
now). It ignores the encoder (N passes), the Bernoulli log-mass over 784 pixels per draw and the
log-sum-exp, so the measured time is above it by those and by memory traffic.

Memory: the resident set (``VmRSS``) is sampled every 50 ms during the run; its growth from the start of
the evaluation to the end and the peak are reported (the evaluation runs in fixed buffers, so it
should not grow with the number of points).

``--old-points P`` also times the Pyro-traced path (what every pair not covered by the direct form
uses, and what the standard pair used before) on P images, for the before/after comparison.

Run: ``python benchmarks/bench_eval.py --out benchmarks/results`` (add ``--device cuda`` on a GPU;
``--quick`` scores 30 images at K = 500 and writes ``eval_quick*``: a dry run of the script).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's pyro_vae, not an installed copy
from _common import MNIST_ROOT, machine, write

HIDDEN = [200, 200]
LATENT = 50
PIXELS = 784


def decoder_flops_per_draw() -> int:
    dims = [LATENT, *HIDDEN[::-1], PIXELS]
    return sum(2 * a * b for a, b in itertools.pairwise(dims))


def spec(device: str) -> dict[str, Any]:
    from pyro_vae import spec as spec_mod

    return spec_mod.resolve(
        {
            "name": "bench-eval",
            "seed": 0,
            "data": {"name": "mnist", "root": MNIST_ROOT, "binarize": "static", "valid_size": 0},
            "model": {"kind": "vae", "latent_dim": LATENT, "network": {"kind": "mlp", "hidden": HIDDEN, "activation": "tanh"},
                      "prior": {"kind": "standard_normal"}, "likelihood": {"kind": "bernoulli"}},
            "guide": {"kind": "diagonal_normal"},
            "elbo": {"kind": "iwae", "num_particles": 5},
            "train": {"batch_size": 20, "device": device},
        }
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_throughput(rows: int, device: torch.device, seconds: float = 3.0, streams: int = 1) -> tuple[float, float]:
    """(FLOP/s of wall time, FLOP per CPU-second of this process) of the decoder's three matmuls (with
    bias) on ``rows`` rows, float32, timed back to back; ``streams`` > 1: that many Python threads, each
    with one torch thread and its own rows, at once. The CPU-time rate does not depend on how much of
    the machine other jobs take (wall time does)."""
    dims = [LATENT, *HIDDEN[::-1], PIXELS]
    ws = [(torch.randn(b, a, device=device), torch.randn(b, device=device)) for a, b in itertools.pairwise(dims)]
    flops = rows * decoder_flops_per_draw()

    def run(_: int) -> int:
        xs = [torch.randn(rows, a, device=device) for a in dims[:-1]]

        def once() -> None:
            for x, (w, b) in zip(xs, ws, strict=True):
                torch.nn.functional.linear(x, w, b)

        for _ in range(3):
            once()
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            once()
            n += 1
        _sync(device)
        return n

    threads = torch.get_num_threads()
    t0, c0 = time.perf_counter(), time.process_time()
    if streams <= 1:
        n = run(0)
    else:
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(streams, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                n = sum(pool.map(run, range(streams)))
        finally:
            torch.set_num_threads(threads)
    return n * flops / (time.perf_counter() - t0), n * flops / (time.process_time() - c0)


def _rss_mb(field: str = "VmRSS") -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return float("nan")


class RssWatch:
    """Samples the resident set every 50 ms in a thread (torch operations release the GIL)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(_rss_mb())
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.samples.append(_rss_mb())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(_rss_mb())


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t, time.process_time() - c


def _busy_processes() -> list[str]:
    """The other processes using the CPU now (``ps``: nice, %CPU, command), for the record."""
    import subprocess

    try:
        out = subprocess.run(["ps", "-eo", "pid=,ni=,pcpu=,args="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    rows = []
    for line in out.splitlines():
        pid, ni, pcpu, cmd = line.split(None, 3)
        if int(pid) != os.getpid() and float(pcpu) >= 5:
            rows.append(f"nice {ni}, {pcpu}% CPU: {cmd[:110]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=10000, help="test images scored (extrapolated to 10,000)")
    ap.add_argument("--K", type=int, default=5000)
    ap.add_argument("--old-points", type=int, default=0, help="also time the traced path on this many images")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="30 images at K = 500, results as eval_quick*: a dry run")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    if args.quick:
        args.points, args.K, args.old_points = min(args.points, 30), 500, min(args.old_points, 5)

    from pyro_vae import data as data_mod
    from pyro_vae.evaluation import evaluate, log_weights
    from pyro_vae.models.vae import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = spec(args.device)
    info = machine(args.threads)
    info["busy_processes_start"] = _busy_processes()
    ds = data_mod.load(cfg["data"], "cpu")
    x = ds.x_test[: args.points].clone()
    del ds
    torch.manual_seed(0)
    vae = build_model(cfg, (1, 28, 28)).to(device)
    assert evaluate.direct_supported(vae)

    chunk = min(args.K, evaluate.ROW_BUDGET)
    rows = max(1, evaluate.ROW_BUDGET // chunk) * chunk  # decoder rows per chunk, as point_terms draws them
    block = min(args.K, log_weights.BLOCK_ROWS)  # rows per block of one thread
    load0 = os.getloadavg()[0]
    rates = {f"intra-op threads, {rows} rows": matmul_throughput(rows, device)}
    if device.type == "cpu" and args.threads > 1:
        rates[f"{args.threads} single-threaded streams, {block} rows each"] = matmul_throughput(
            block, device, streams=args.threads
        )
    throughput = {k: v[0] for k, v in rates.items()}
    per_cpu_s = {k: v[1] for k, v in rates.items()}
    flops_s = max(throughput.values())
    flops_cpu = max(per_cpu_s.values())
    load_mm = os.getloadavg()[0]

    runs: dict[str, dict[str, Any]] = {}
    for name, n, direct in (("direct", len(x), True), ("traced", min(args.old_points, len(x)), False)):
        if n == 0:
            continue
        orig = evaluate.direct_supported
        if not direct:
            evaluate.direct_supported = lambda vae: False  # type: ignore[assignment,misc]
        try:
            torch.manual_seed(1)
            la = os.getloadavg()[0]
            with RssWatch() as rss:
                terms, wall, cpu = timed(lambda n=n: evaluate.point_terms(vae, x[:n], None, args.K), device)
        finally:
            evaluate.direct_supported = orig  # type: ignore[misc]
        scale = 10000 / n
        runs[name] = {
            "points": n, "wall_s": wall, "cpu_s": cpu, "loadavg_1min_before": la, "loadavg_1min_after": os.getloadavg()[0],
            "wall_s_10000": wall * scale, "cpu_s_10000": cpu * scale, "extrapolated": n != 10000,
            "mean_L_K": float(terms.log_likelihood.double().mean()),
            "rss_start_mb": rss.samples[0], "rss_end_mb": rss.samples[-1], "rss_peak_sampled_mb": max(rss.samples),
            "rss_growth_mb": rss.samples[-1] - rss.samples[0], "vm_hwm_mb": _rss_mb("VmHWM"),
        }  # fmt: skip

    flops_total = args.K * 10000 * decoder_flops_per_draw()
    bound = flops_total / flops_s
    bound_cpu = flops_total / flops_cpu  # CPU seconds the matmuls alone need, whatever the load
    d = runs["direct"]
    info["busy_processes_end"] = _busy_processes()
    payload = {
        "machine": info,
        "model": "784-200-200-50 tanh MLP VAE, Bernoulli likelihood, diagonal-Normal guide (untrained)",
        "K": args.K,
        "rows_per_chunk": rows,
        "rows_per_block": block,
        "decoder_flops_per_draw": decoder_flops_per_draw(),
        "decoder_flops_total_10000": flops_total,
        "matmul_flops_per_s": throughput,
        "matmul_flops_per_cpu_s": per_cpu_s,
        "loadavg_1min": {"start": load0, "after_matmul": load_mm},
        "lower_bound_s_10000": bound,
        "lower_bound_cpu_s_10000": bound_cpu,
        "idle_lower_bound_s_10000": bound_cpu / max(1, args.threads) if device.type == "cpu" else None,
        "runs": runs,
        "ratio_wall_to_bound": d["wall_s_10000"] / bound,
        "ratio_cpu_to_cpu_bound": d["cpu_s_10000"] / bound_cpu,
    }
    ext = " (extrapolated from {} images)"
    tp = "; ".join(f"{k}: {v / 1e9:.1f} GFLOP/s of wall time, {per_cpu_s[k] / 1e9:.1f} GFLOP per CPU-second"
                   for k, v in throughput.items())  # fmt: skip
    busy = info["busy_processes_start"]
    md = [
        f"### L_{args.K} on the 10,000 MNIST test images, 784-200-200-50 tanh VAE ({args.device})\n",
        (
            f"Decoder: {decoder_flops_per_draw():,} FLOPs per draw; {args.K} x 10,000 draws = {flops_total:.3e} FLOPs. "
            f"Measured matmul throughput on the same shapes ({tp}; load average {load0:.2f}). "
            f"Arithmetic lower bound at the better one: **{bound:.0f} s** of wall time at this load; "
            f"**{bound_cpu:.0f} CPU seconds** (the matmuls alone, at the better CPU-time rate; "
            f"{bound_cpu / max(1, args.threads):.0f} s of wall time on {args.threads} idle cores).\n"
        ),
        "Other processes using the CPU at the start: " + ("; ".join(busy) if busy else "none above 5%") + ".\n",
        (
            "| path | images timed | wall s (10,000 images) | CPU s (10,000 images) | wall / lower bound "
            "| CPU s / CPU lower bound | load avg (1 min) | RSS start -> end (peak), MB | mean L_K |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        md.append(
            f"| {name} | {r['points']} | {r['wall_s_10000']:.0f}{ext.format(r['points']) if r['extrapolated'] else ''} "
            f"| {r['cpu_s_10000']:.0f} | {r['wall_s_10000'] / bound:.2f} | {r['cpu_s_10000'] / bound_cpu:.2f} "
            f"| {r['loadavg_1min_before']:.2f} -> {r['loadavg_1min_after']:.2f} "
            f"| {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} ({r['rss_peak_sampled_mb']:.0f}) | {r['mean_L_K']:.2f} |"
        )
    name = "eval" if args.device == "cpu" else f"eval_{device.type}"
    write(args.out, name.replace("eval", "eval_quick") if args.quick else name, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
