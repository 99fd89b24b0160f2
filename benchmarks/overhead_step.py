"""What the training step's remaining overhead is made of: ``ours`` with and without its parts.

Variants (interleaved, CPU time per step, medians), relative to the hand-written ``torch`` step:
``ours`` (fast path + non-finite guard), ``ours_noise`` (+ fit's per-step noise handler),
``ours_nocheck`` (fast path without the guard), ``torch_check`` (hand-written + the same guard).
Run: ``python benchmarks/overhead_step.py --batch 20 --estimator trace``; prints one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved
from bench_step import ESTIMATORS, TorchVAE, spec

from pyro_vae import distributed, fastpath
from pyro_vae import spec as spec_mod
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.training.loop import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--estimator", default="trace")
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(1)
    B, est = args.batch, args.estimator
    cfg = spec(ESTIMATORS[est], B)
    tcfg = spec_mod.train_config(cfg)
    K, kind = int(ESTIMATORS[est].get("num_particles", 1)), ESTIMATORS[est]["kind"]
    x = torch.rand(B, 1, 28, 28).bernoulli()
    vae = build_model(cfg, (1, 28, 28))
    lf = fastpath.accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
    params = list(vae.parameters())
    opt = make_optimizer(params, tcfg)
    ctx = distributed.context()
    wrapped = ctx.wrap_loss(lf, vae)
    tv = TorchVAE(vae)
    tparams = list(tv.parameters())
    topt = make_optimizer(tparams, tcfg)
    step = [0]

    def ours() -> None:
        fastpath.train_step(lf, opt, params, x, None, B)

    def ours_noise() -> None:
        step[0] += 1
        ctx.noise(0, 1, step[0], B)
        fastpath.train_step(wrapped, opt, params, x, None, B)

    def ours_nocheck() -> None:
        loss = lf(x, None) / B
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def hand() -> None:
        loss = tv.loss(x, kind, K) / B
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    def hand_check() -> None:
        loss = tv.loss(x, kind, K) / B
        topt.zero_grad(set_to_none=True)
        loss.backward()
        if not bool(fastpath.nonfinite(loss, tparams)):
            topt.step()

    fns = {
        "ours": ours,
        "ours_noise": ours_noise,
        "ours_nocheck": ours_nocheck,
        "torch": hand,
        "torch_check": hand_check,
    }
    r = interleaved(fns, args.rounds, 0.2)
    t = r["torch"]["median_cpu_s"]
    print(f"{est} B={B}: torch {t * 1e3:.2f} CPU ms/step;", {k: round(v["median_cpu_s"] / t, 3) for k, v in r.items()})


if __name__ == "__main__":
    main()
