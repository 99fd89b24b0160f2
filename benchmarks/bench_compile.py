"""torch.compile of the training loss: does it pay for the MNIST MLP step on this machine?

The step is ``fastpath.train_step`` (fast-path loss, backward, non-finite guard, fused Adam) on the
784-400-50 ReLU VAE of ``bench_step.py``, with the loss module either eager or wrapped in
``torch.compile`` (inductor, default mode). Per-step time is the median over interleaved rounds
(``_common.interleaved``); the one-off compile time (first call) is reported separately, since a
short run pays it in full. Random draws inside a compiled graph come from inductor's own generator
unless ``torch._inductor.config.fallback_random`` is set, so compiled and eager steps are equal in
distribution, not draw for draw.

Run: ``python benchmarks/bench_compile.py --out benchmarks/results`` (``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="20,128")
    ap.add_argument("--estimators", default="trace,iwae5")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    from bench_step import spec

    from pyro_vae import spec as spec_mod
    from pyro_vae.estimators import fastpath
    from pyro_vae.models.vae import build_model
    from pyro_vae.registry import REGISTRY
    from pyro_vae.training.loop import make_optimizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine(args.threads)
    elbos = {"trace": {"kind": "trace"}, "iwae5": {"kind": "iwae", "num_particles": 5}}
    rows: list[dict[str, Any]] = []
    for est in args.estimators.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            cfg = spec(elbos[est], batch)
            xs = torch.bernoulli(torch.rand(16 * batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))).to(
                device
            )
            steps: dict[str, Any] = {}
            compile_s = 0.0
            for name in ("eager", "compiled"):
                torch.manual_seed(0)
                vae = build_model(cfg, (1, 28, 28)).to(device)
                loss_fn: Any = fastpath.accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
                if name == "compiled":
                    loss_fn = torch.compile(loss_fn)
                params = list(vae.parameters())
                opt = make_optimizer(params, spec_mod.train_config(cfg))
                it = {"i": 0}

                def step(
                    loss_fn: Any = loss_fn,
                    opt: Any = opt,
                    params: Any = params,
                    it: Any = it,
                    xs: torch.Tensor = xs,
                    batch: int = batch,
                ) -> None:
                    it["i"] = (it["i"] + 1) % 16
                    x = xs[it["i"] * batch : (it["i"] + 1) * batch]
                    fastpath.train_step(loss_fn, opt, params, x, None, batch)
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                if name == "compiled":
                    t = time.perf_counter()
                    step()
                    compile_s = time.perf_counter() - t
                steps[name] = step
            res = interleaved(steps, args.rounds, args.round_seconds)
            e, c = res["eager"], res["compiled"]
            rows.append({
                "estimator": est, "batch": batch, "eager_ms": 1e3 * e["median_s"], "compiled_ms": 1e3 * c["median_s"],
                "eager_cpu_ms": 1e3 * e["median_cpu_s"], "compiled_cpu_ms": 1e3 * c["median_cpu_s"],
                "speedup": e["median_s"] / c["median_s"], "compile_s": compile_s,
                "break_even_steps": compile_s / max(e["median_s"] - c["median_s"], 1e-12) if c["median_s"] < e["median_s"] else None,
            })  # fmt: skip
            print(rows[-1], flush=True)
    md = [
        f"### torch.compile of the training loss ({args.device}; 784-400-50 ReLU VAE, fused Adam, {args.rounds} interleaved rounds)\n",
        "| estimator | batch | eager ms/step | compiled ms/step | eager CPU ms | compiled CPU ms | speed-up | compile s | break-even steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        be = f"{r['break_even_steps']:.0f}" if r["break_even_steps"] is not None else "never"
        md.append(
            f"| {r['estimator']} | {r['batch']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | {r['eager_cpu_ms']:.2f} "
            f"| {r['compiled_cpu_ms']:.2f} | {r['speedup']:.2f}x | {r['compile_s']:.1f} | {be} |"
        )
    write(
        args.out,
        "compile" if args.device == "cpu" else f"compile_{device.type}",
        {"machine": info, "rows": rows},
        "\n".join(md) + "\n",
    )


if __name__ == "__main__":
    main()
