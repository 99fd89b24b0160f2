"""Where a training step's time goes: torch.profiler op tables for ``ours`` (the fit path) and ``torch``.

Profiles ``--steps`` steps of each variant of :mod:`bench_step` (same model, batch, estimator) and
writes the top operators by self CPU time, plus the Python-side time not spent in any operator
(wall time minus the sum of operator self times). Run:
``python benchmarks/profile_step.py --batch 20 --estimator trace --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write
from bench_step import ESTIMATORS, TorchVAE, spec

from pyro_vae import spec as spec_mod
from pyro_vae.estimators import fastpath
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.training.loop import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--estimator", default="trace")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    cfg = spec(ESTIMATORS[args.estimator], args.batch)
    tcfg = spec_mod.train_config(cfg)
    K, kind = int(ESTIMATORS[args.estimator].get("num_particles", 1)), ESTIMATORS[args.estimator]["kind"]
    torch.manual_seed(0)
    vae = build_model(cfg, (1, 28, 28))
    loss_fn = fastpath.accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
    params = list(vae.parameters())
    opt = make_optimizer(params, tcfg)
    tv = TorchVAE(vae)
    topt = make_optimizer(list(tv.parameters()), tcfg)
    x = torch.rand(args.batch, 1, 28, 28).bernoulli()

    def ours() -> None:
        fastpath.train_step(loss_fn, opt, params, x, None, len(x))

    def hand() -> None:
        loss = tv.loss(x, kind, K) / len(x)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    md: list[str] = []
    summary: dict[str, Any] = {}
    for name, fn in (("ours", ours), ("torch", hand)):
        for _ in range(10):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        ops = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
        total_ops_us = sum(e.self_cpu_time_total for e in ops)
        per_step_ms = wall / args.steps * 1e3
        summary[name] = {"wall_ms_per_step": per_step_ms, "op_self_ms_per_step": total_ops_us / args.steps / 1e3,
                         "ops_per_step": sum(e.count for e in ops) / args.steps}  # fmt: skip
        md += [(f"### {name}: {per_step_ms:.2f} ms/step (under the profiler), operators' self time "
               f"{total_ops_us / args.steps / 1e3:.2f} ms/step, {sum(e.count for e in ops) / args.steps:.0f} operator calls/step\n"),
               "| operator | calls/step | self ms/step |", "|---|---:|---:|"]  # fmt: skip
        md += [
            f"| `{e.key}` | {e.count / args.steps:.1f} | {e.self_cpu_time_total / args.steps / 1e3:.3f} |"
            for e in ops[: args.top]
        ]
        md.append("")
    write(args.out, f"profile_{args.estimator}_b{args.batch}", {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                                                "summary": summary}, "\n".join(md))  # fmt: skip


if __name__ == "__main__":
    main()
