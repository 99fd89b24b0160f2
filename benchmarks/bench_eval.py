"""L_5000 on the MNIST test set: measured time beside the arithmetic lower bound of the decoder.

The model is the 784-200-200-50 tanh VAE of the IWAE table (Burda et al. 2015, Table 1; Bernoulli
likelihood, diagonal-Normal guide), freshly initialized: the cost of L_K does not depend on the weights.
``evaluate.point_terms`` scores ``--points`` statically binarized test images with ``--K`` particles
each (the whole 10,000-image test set by default; fewer are extrapolated linearly and labelled so).

The lower bound is arithmetic only: K x N draws, each one decoder pass of
2 (50*200 + 200*200 + 200*784) floating-point operations, divided by the matmul throughput of this
machine measured on the same shapes (``torch.nn.functional.linear`` on the rows of one evaluation
chunk). It ignores the encoder (N passes), the Bernoulli log-mass over 784 pixels per draw and the
log-sum-exp, so the measured time is above it by those and by memory traffic.

``--old-points P`` also times the Pyro-traced path (what every pair not covered by the direct form
uses, and what the standard pair used before) on P images, for the before/after comparison.

Run: ``python benchmarks/bench_eval.py --out benchmarks/results`` (add ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
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


def matmul_throughput(rows: int, device: torch.device, seconds: float = 3.0) -> float:
    """FLOP/s of the decoder's three matmuls (with bias) on ``rows`` rows, float32, timed back to back."""
    dims = [LATENT, *HIDDEN[::-1], PIXELS]
    xs = [torch.randn(rows, a, device=device) for a in dims[:-1]]
    ws = [(torch.randn(b, a, device=device), torch.randn(b, device=device)) for a, b in itertools.pairwise(dims)]
    flops = rows * decoder_flops_per_draw()

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
    return n * flops / (time.perf_counter() - t0)


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=10000, help="test images scored (extrapolated to 10,000)")
    ap.add_argument("--K", type=int, default=5000)
    ap.add_argument("--old-points", type=int, default=0, help="also time the traced path on this many images")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    import pyro_vae.evaluate  # noqa: F401
    from pyro_vae import data as data_mod
    from pyro_vae.models.vae import build_model

    evaluate = sys.modules["pyro_vae.evaluate"]  # the module (the package exports the function of that name)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = spec(args.device)
    info = machine(args.threads)
    ds = data_mod.load(cfg["data"], "cpu")
    x = ds.x_test[: args.points]
    torch.manual_seed(0)
    vae = build_model(cfg, (1, 28, 28)).to(device)
    assert evaluate.direct_supported(vae)

    chunk = min(args.K, evaluate.ROW_BUDGET)
    rows = max(1, evaluate.ROW_BUDGET // chunk) * chunk  # decoder rows per pass, as point_terms chunks them
    load0 = os.getloadavg()[0]
    flops_s = matmul_throughput(rows, device)
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
            terms, wall, cpu = timed(lambda n=n: evaluate.point_terms(vae, x[:n], None, args.K), device)
        finally:
            evaluate.direct_supported = orig  # type: ignore[misc]
        scale = 10000 / n
        runs[name] = {
            "points": n, "wall_s": wall, "cpu_s": cpu, "loadavg_1min_before": la, "loadavg_1min_after": os.getloadavg()[0],
            "wall_s_10000": wall * scale, "cpu_s_10000": cpu * scale, "extrapolated": n != 10000,
            "mean_L_K": float(terms.log_likelihood.double().mean()),
        }  # fmt: skip

    flops_total = args.K * 10000 * decoder_flops_per_draw()
    bound = flops_total / flops_s
    d = runs["direct"]
    payload = {
        "machine": info,
        "model": "784-200-200-50 tanh MLP VAE, Bernoulli likelihood, diagonal-Normal guide (untrained)",
        "K": args.K,
        "rows_per_pass": rows,
        "decoder_flops_per_draw": decoder_flops_per_draw(),
        "decoder_flops_total_10000": flops_total,
        "matmul_flops_per_s": flops_s,
        "loadavg_1min": {"start": load0, "after_matmul": load_mm},
        "lower_bound_s_10000": bound,
        "runs": runs,
        "ratio_wall_to_bound": d["wall_s_10000"] / bound,
    }
    ext = " (extrapolated from {} images)"
    md = [
        f"### L_{args.K} on the 10,000 MNIST test images, 784-200-200-50 tanh VAE ({args.device})\n",
        (
            f"Decoder: {decoder_flops_per_draw():,} FLOPs per draw; {args.K} x 10,000 draws = {flops_total:.3e} FLOPs. "
            f"Measured matmul throughput on the same shapes ({rows} rows): {flops_s / 1e9:.1f} GFLOP/s "
            f"(load average {load0:.2f}). Arithmetic lower bound: **{bound:.0f} s**.\n"
        ),
        "| path | images timed | wall s (10,000 images) | CPU s (10,000 images) | wall / lower bound | load avg (1 min) | mean L_K |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        md.append(
            f"| {name} | {r['points']} | {r['wall_s_10000']:.0f}{ext.format(r['points']) if r['extrapolated'] else ''} "
            f"| {r['cpu_s_10000']:.0f} | {r['wall_s_10000'] / bound:.2f} | {r['loadavg_1min_before']:.2f} -> {r['loadavg_1min_after']:.2f} "
            f"| {r['mean_L_K']:.2f} |"
        )
    write(args.out, "eval" if args.device == "cpu" else f"eval_{device.type}", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
