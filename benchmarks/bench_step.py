"""Training-step benchmark: pyro-vae's training step (the one ``fit`` runs) vs a hand-written PyTorch step.

Variants, timed interleaved in one process on the same MNIST batches:

- ``ours``: what ``fit`` does: ``REGISTRY.build("elbo")(model, guide)`` -> ``estimators.fast.accelerate``
  (the estimator's direct form; ``score_function`` has none and keeps the Pyro path) -> (the
  per-step seeded noise of ``training.distributed``, as ``fit`` draws it) -> ``training.make_optimizer``
  -> ``training.step.train_step`` (non-finite guard included);
- ``pyro``: the same with ``train.fast_path: false`` (Pyro traces every step; same optimizer and guard);
- ``core``: the loop without the trace-free fast path: Pyro traces, default (for-loop) Adam,
  ``clip_grad_norm_(inf)`` + ``isfinite`` per step;
- ``torch``: a hand-written PyTorch step with copies of the same networks (same initial weights),
  the same Bernoulli likelihood, estimator and optimizer (``make_optimizer``'s Adam, fused where
  available), no Pyro and no guard; each estimator written out as one would by hand (:class:`TorchVAE`).

Model: MLP VAE 784-400-50 (relu), diagonal-Normal guide, N(0, I) prior, Bernoulli likelihood, Adam
lr 1e-3. Run: ``python benchmarks/bench_step.py --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST_ROOT, interleaved, machine, write

from pyro_vae import data as data_mod
from pyro_vae import spec as spec_mod
from pyro_vae.estimators.fast import FastELBO, accelerate
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.training import make_optimizer
from pyro_vae.training.step import train_step

ESTIMATORS = {
    "trace": {"kind": "trace"},
    "meanfield": {"kind": "meanfield"},
    "iwae5": {"kind": "iwae", "num_particles": 5},
    "iwae50": {"kind": "iwae", "num_particles": 50},
    "dreg5": {"kind": "dreg", "num_particles": 5},
    "stl": {"kind": "stl", "num_particles": 1},
    "miwae": {"kind": "miwae", "num_particles": 5, "num_groups": 2},
    "ciwae": {"kind": "ciwae", "num_particles": 5, "mix": 0.5},
    "piwae": {"kind": "piwae", "num_particles": 5, "num_groups": 2},
    "free_bits": {"kind": "free_bits", "lam": 0.5, "num_particles": 1},
    "score_function": {"kind": "score_function", "num_particles": 1},
}
TARGETS = {20: 1.25, 128: 1.10, 1024: 1.10}
IWAE50_TARGET = 1.2
NO_TARGET = {"score_function"}  # no direct form: measured and reported only


def target(est: str, batch: int) -> float | None:
    if est in NO_TARGET:
        return None
    return IWAE50_TARGET if est == "iwae50" else TARGETS[batch]


def spec(elbo: dict[str, Any], batch: int) -> dict[str, Any]:
    return spec_mod.resolve(
        {
            "name": "bench",
            "seed": 0,
            "data": {"name": "mnist", "root": MNIST_ROOT},
            "model": {"kind": "vae", "latent_dim": 50, "network": {"kind": "mlp", "hidden": [400], "activation": "relu"},
                      "prior": {"kind": "standard_normal"}, "likelihood": {"kind": "bernoulli"}},
            "guide": {"kind": "diagonal_normal"},
            "elbo": elbo,
            "train": {"batch_size": batch, "lr": 1e-3, "optimizer": "adam", "device": "cpu"},
        }
    )  # fmt: skip


class TorchVAE(torch.nn.Module):
    """The same networks as a plain module (weights copied), and the estimators written out by hand."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.enc = copy.deepcopy(vae.guide.encoder.body)
        self.loc = copy.deepcopy(vae.guide.loc)
        self.raw_scale = copy.deepcopy(vae.guide.raw_scale)
        self.dec = copy.deepcopy(vae.model.decoder.body)
        self.min_scale = vae.guide.min_scale
        self.baseline = 0.0  # score_function's decaying average

    def decode(self, z: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Bernoulli logits for draws ``z`` ``(K, B, D)``; ``frozen``: the decoder's parameters detached."""
        K, B = z.shape[:2]
        flat = z.reshape(K * B, -1)
        if frozen:
            params = {n: p.detach() for n, p in self.dec.named_parameters()}
            return torch.func.functional_call(self.dec, params, (flat,)).reshape(K, B, -1)
        return self.dec(flat).reshape(K, B, -1)

    def loss(self, x: torch.Tensor, est: str) -> torch.Tensor:
        """The estimator's loss summed over the batch, written out by hand for this model."""
        e = ESTIMATORS[est]
        kind, K = e["kind"], int(e.get("num_particles", 1)) * int(e.get("num_groups", 1))
        B = x.shape[0]
        xf = x.reshape(1, B, -1)
        h = self.enc(x)
        mu, s = self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale
        eps = torch.randn(K, *mu.shape)
        z = mu + s * eps  # (K, B, D)

        def rec(logits: torch.Tensor) -> torch.Tensor:
            return -F.binary_cross_entropy_with_logits(logits, xf.expand_as(logits), reduction="none").sum(-1)

        def iwae(lw: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(lw, 0) - math.log(lw.shape[0])

        def miwae(lw: torch.Tensor, m: int) -> torch.Tensor:
            return iwae(lw.reshape(m, -1, B).transpose(0, 1)).mean(0)

        log_pz = (-0.5 * z.pow(2)).sum(-1)  # the log(2 pi) terms cancel in every log-weight
        if kind == "score_function":  # REINFORCE with a decaying-average baseline; the decoder pathwise
            zd = z.detach()
            log_q = (-0.5 * ((zd - mu) / s).pow(2) - s.log()).sum(-1)
            lw = rec(self.decode(zd)) + (-0.5 * zd.pow(2)).sum(-1) - log_q
            cost = lw.detach() - self.baseline
            self.baseline = 0.9 * self.baseline + 0.1 * float(lw.detach().mean())
            return -(lw + log_q * cost).sum() / K
        if kind in ("meanfield", "free_bits"):
            kl = 0.5 * (s.pow(2) + mu.pow(2) - 1) - s.log()  # (B, D)
            r = rec(self.decode(z)).mean(0).sum()
            if kind == "free_bits":
                return -(r - B * kl.mean(0).clamp_min(e["lam"]).sum())
            return -(r - kl.sum())
        if kind in ("dreg", "stl"):  # log q at (mu, s) detached: the guide's gradient only through z
            md, sd = mu.detach(), s.detach()
            lw = rec(self.decode(z)) + log_pz - (-0.5 * ((z - md) / sd).pow(2) - sd.log()).sum(-1)
            if kind == "stl":
                return -lw.mean(0).sum()
            w = torch.softmax(lw.detach(), 0).unsqueeze(-1)
            z.register_hook(lambda g: g * w)  # the guide's gradient: sum_k w_k^2 d log w_k / dz_k
            return -iwae(lw).sum()
        log_q = (-0.5 * eps.pow(2) - s.log()).sum(-1)
        if kind == "piwae":  # the guide on MIWAE (decoder frozen), the decoder on IWAE (draws frozen)
            m = int(e["num_groups"])
            enc = miwae(rec(self.decode(z, frozen=True)) + log_pz - log_q, m)
            zd = z.detach()
            dec = iwae(rec(self.decode(zd)) + (-0.5 * zd.pow(2)).sum(-1) - log_q.detach())
            return -(dec + enc - enc.detach()).sum()
        log_w = rec(self.decode(z)) + log_pz - log_q
        if kind == "iwae":
            return -iwae(log_w).sum()
        if kind == "miwae":
            return -miwae(log_w, int(e["num_groups"])).sum()
        if kind == "ciwae":
            return -(e["mix"] * log_w.mean(0) + (1 - e["mix"]) * iwae(log_w)).sum()
        return -log_w.mean(0).sum()


def check_reference(tv: TorchVAE, vae: Any, cfg: dict[str, Any], est: str, x: torch.Tensor) -> None:
    """The hand-written step computes our loss and gradients (same weights, same draws): it is the same estimator."""
    fast = accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
    ours = [*vae.guide.encoder.body.parameters(), *vae.guide.loc.parameters(), *vae.guide.raw_scale.parameters(),
            *vae.model.decoder.body.parameters()]  # fmt: skip
    theirs = [*tv.enc.parameters(), *tv.loc.parameters(), *tv.raw_scale.parameters(), *tv.dec.parameters()]
    out = []
    for fn, params in ((lambda: fast(x, None), ours), (lambda: tv.loss(x, est), theirs)):
        torch.manual_seed(1)
        loss = fn()
        out.append((loss.detach(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])))
    (la, ga), (lb, gb) = out
    assert torch.allclose(la, lb, rtol=1e-4), (est, float(la), float(lb))
    assert (ga - gb).norm() <= 1e-4 * gb.norm(), (est, float((ga - gb).norm() / gb.norm()))


def run_config(xs: torch.Tensor, est: str, batch: int, rounds: int, round_seconds: float) -> dict[str, Any]:
    cfg = spec(ESTIMATORS[est], batch)
    tcfg = spec_mod.train_config(cfg)
    K = int(ESTIMATORS[est].get("num_particles", 1)) * int(ESTIMATORS[est].get("num_groups", 1))
    x_batches = [xs[i : i + batch] for i in range(0, len(xs) - batch + 1, batch)] or [xs[:batch]]
    state = {"i": 0, "step": 0}
    from pyro_vae.training import distributed  # fit draws each step's noise from a seeded per-step handler

    dctx: Any = distributed.context()

    def nxt() -> torch.Tensor:
        state["i"] = (state["i"] + 1) % len(x_batches)
        return x_batches[state["i"]]

    variants: dict[str, Any] = {}
    for name in ("ours", "pyro", "core"):
        torch.manual_seed(0)
        vae = build_model(cfg, (1, 28, 28))
        loss_fn = REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide)
        if name == "ours":
            loss_fn = accelerate(loss_fn)
            assert isinstance(loss_fn, FastELBO) == (est not in NO_TARGET), est
        if name != "core" and dctx is not None:  # fit's per-step seeded noise (pyro_vae/distributed.py)
            loss_fn = dctx.wrap_loss(loss_fn, vae)
        params = list(vae.parameters())
        if name == "core":
            opt = torch.optim.Adam(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)

            def step(loss_fn: Any = loss_fn, opt: Any = opt, params: Any = params) -> None:
                x = nxt()
                loss = loss_fn(x, None) / len(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                g = torch.nn.utils.clip_grad_norm_(params, float("inf"))
                if torch.isfinite(loss) and torch.isfinite(g):
                    opt.step()
        else:
            opt = make_optimizer(params, tcfg)

            def step(loss_fn: Any = loss_fn, opt: Any = opt, params: Any = params) -> None:
                x = nxt()
                if dctx is not None:
                    state["step"] += 1
                    dctx.noise(0, 1, state["step"], len(x))
                train_step(loss_fn, opt, params, x, None, len(x))

        variants[name] = step
        if name == "ours":
            ref_vae = vae
    tv = TorchVAE(ref_vae)
    if est not in NO_TARGET:
        check_reference(tv, ref_vae, cfg, est, x_batches[0])
    topt = make_optimizer(list(tv.parameters()), tcfg)

    def torch_step() -> None:
        x = nxt()
        loss = tv.loss(x, est) / len(x)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    variants["torch"] = torch_step
    res = interleaved(variants, rounds, round_seconds)
    t, tc = res["torch"]["median_s"], res["torch"]["median_cpu_s"]
    out = {"estimator": est, "batch": batch, "K": K, "optimizer": type(topt).__name__, "step_noise": dctx is not None,
           "fused": bool(topt.defaults.get("fused")), "variants": res}  # fmt: skip
    out["steps_per_s"] = {k: 1.0 / v["median_s"] for k, v in res.items()}
    out["steps_per_cpu_s"] = {k: 1.0 / v["median_cpu_s"] for k, v in res.items()}
    out["ratio_vs_torch_wall"] = {k: v["median_s"] / t for k, v in res.items()}
    out["ratio_vs_torch"] = {k: v["median_cpu_s"] / tc for k, v in res.items()}  # CPU time: steadier under load
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| estimator | batch | ours steps/CPU-s | torch steps/CPU-s | ours / torch (CPU) | target | met | "
            "ours / torch (wall) | pyro path / torch | core loop / torch |"
        ),
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in results:
        t = target(r["estimator"], r["batch"])
        ratio = r["ratio_vs_torch"]["ours"]
        met = "-" if t is None else ("yes" if ratio <= t else "no")
        lines.append(
            f"| {r['estimator']} | {r['batch']} | {r['steps_per_cpu_s']['ours']:.3g} | {r['steps_per_cpu_s']['torch']:.3g} | "
            f"{ratio:.3f} | {'none' if t is None else f'<= {t:.2f}'} | {met} | "
            f"{r['ratio_vs_torch_wall']['ours']:.3f} | {r['ratio_vs_torch']['pyro']:.3f} | {r['ratio_vs_torch']['core']:.3f} |"
        )
    return "\n".join(lines) + (
        "\n\nRatios are of median step times (lower is better; < 1: faster than the hand-written step), "
        "from this process's CPU time per step unless marked wall; steps/CPU-s = 1 / median CPU seconds per step. "
        "Settings: dreg5 K=5, stl K=1, miwae and piwae K=5 M=2, ciwae K=5 mix 0.5, free_bits lam 0.5 K=1, "
        "score_function K=1 with its decaying-average baseline (no direct form: ours is the Pyro path).\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-seconds", type=float, default=0.25)
    ap.add_argument("--batches", default="20,128,1024")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--name", default="step")
    ap.add_argument("--render", type=Path, help="re-write the markdown of an earlier JSON result (no timing)")
    args = ap.parse_args()
    if args.render:
        import json

        payload = json.loads(args.render.read_text())
        write(args.render.parent, args.render.stem, payload, markdown(payload["results"]), keep_load=True)
        return
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    ds = data_mod.load(
        {"name": "mnist", "root": MNIST_ROOT, "binarize": "static", "valid_size": 0, "limit": 4096}, "cpu"
    )
    xs = ds.x_train
    results = []
    for est in args.estimators.split(","):
        for b in (int(v) for v in args.batches.split(",")):
            r = run_config(xs, est, b, args.rounds, args.round_seconds)
            print(
                f"{est:10s} B={b:5d} ratios { ({k: round(v, 3) for k, v in r['ratio_vs_torch'].items()}) }", flush=True
            )
            results.append(r)
    write(
        args.out,
        args.name,
        {"machine": info, "args": vars(args) | {"out": str(args.out)}, "results": results},
        markdown(results),
    )


if __name__ == "__main__":
    main()
