"""Structured-output prediction (Sohn et al. 2015; Pyro's CVAE tutorial): predict the unobserved
quadrants of an MNIST digit from 1, 2 or 3 observed ones, with a tensor-conditioned CVAE
(``model.kind: cvae, condition: tensor``, conditional prior network p(z|x)) and a deterministic MLP
baseline. Masks follow Pyro's tutorial: 1 quadrant = bottom-left observed; 2 = left half; 3 = all but
the bottom-right. Pixels are MNIST grey levels in [0, 1] scored by a Bernoulli (cross-entropy), as in
the tutorial.

Reports, per setting, on the MNIST test set (nats per image, over the unobserved pixels only):
- CVAE: -log p(y|x) estimated by importance sampling with the recognition network q(z|x,y) as proposal
  (L_K with K particles, a stochastic upper bound on -log p(y|x)), and the negative ELBO;
- baseline: -log p(y|x) of the deterministic net = its cross-entropy.

Usage: PYRO_VAE_DATA=/work/shared/data python experiments/structured/cvae_quadrants.py OUT_DIR
       [--epochs 5] [--particles 100] [--limit 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import pyro_vae
from pyro_vae import data as data_mod
from pyro_vae.evaluation import point_terms
from pyro_vae.plots import save_grid


def target_mask(q: int) -> torch.Tensor:
    """Boolean (28, 28): True where the pixel is to be predicted (Pyro tutorial's MaskImages)."""
    observed = torch.zeros(28, 28, dtype=torch.bool)
    observed[14:, :14] = True  # bottom-left
    if q >= 2:
        observed[:, :14] = True  # left half
    if q >= 3:
        observed[:14, :] = True  # and top-right: all but bottom-right
    return ~observed


def baseline(d_in: int, d_out: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_out)
    )


def train_baseline(
    xin: torch.Tensor, yout: torch.Tensor, epochs: int, hidden: int, seed: int
) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    net = baseline(xin.shape[1], yout.shape[1], hidden)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in data_mod.batches(len(xin), 128, shuffle=True, generator=gen):
            loss = F.binary_cross_entropy_with_logits(net(xin[idx]), yout[idx], reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net, time.perf_counter() - t0


@torch.no_grad()
def baseline_nll(net: nn.Module, xin: torch.Tensor, yout: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(net(xin), yout, reduction="none").sum(-1)


def paste(observed: torch.Tensor, predicted: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Whole 28x28 images from the observed pixels and the predicted ones (mask ``m``: predicted)."""
    img = torch.zeros(len(predicted), 784)
    img[:, ~m] = observed
    img[:, m] = predicted
    return img.reshape(-1, 28, 28)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--particles", type=int, default=100)
    ap.add_argument("--limit", type=int, default=0, help="training images (0: all 60,000)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    mn = data_mod.load({"name": "mnist", "valid_size": 0, "limit": a.limit})
    xtr, xte = mn.x_train.reshape(len(mn.x_train), -1), mn.x_test.reshape(len(mn.x_test), -1)
    results: dict[str, dict[str, float]] = {}
    panels = []
    for q in (1, 2, 3):
        m = target_mask(q).reshape(-1)
        path = out / f"quadrants{q}.npz"
        # x: the pixels to predict (the CVAE's "data"), y: the observed pixels (its condition)
        np.savez(
            path,
            x_train=xtr[:, m].numpy(),
            y_train=xtr[:, ~m].numpy(),
            x_test=xte[:, m].numpy(),
            y_test=xte[:, ~m].numpy(),
        )
        spec = {
            "name": f"mnist-cvae-quadrants{q}",
            "seed": a.seed,
            "data": {"name": "npz", "path": str(path), "valid_size": 0.1},
            "model": {
                "kind": "cvae",
                "condition": "tensor",
                "cond_dim": int((~m).sum()),
                "latent_dim": a.latent,
                "network": {"kind": "mlp", "hidden": [a.hidden]},
                "prior": {"kind": "conditional", "hidden": [a.hidden]},
                "likelihood": {"kind": "bernoulli"},
            },
            "guide": {"kind": "diagonal_normal"},
            "elbo": {"kind": "trace"},
            "train": {
                "epochs": a.epochs,
                "batch_size": 128,
                "lr": 1e-3,
                "eval_particles": 1,
                "progress": False,
                "figures": False,
            },
        }
        res = pyro_vae.fit(spec, out=out / f"cvae_q{q}", force=True)
        ds = res.data
        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        terms = point_terms(res.vae, ds.x_test, ds.y_test, a.particles)
        eval_s = time.perf_counter() - t0
        n = len(terms.log_likelihood)
        net, base_s = train_baseline(ds.y_train, ds.x_train, a.epochs, a.hidden, a.seed)
        bnll = baseline_nll(net, ds.y_test, ds.x_test)
        results[str(q)] = {
            "cvae_neg_log_lik_IS": float(-terms.log_likelihood.double().mean()),
            "cvae_neg_log_lik_IS_stderr": float(terms.log_likelihood.double().std() / n**0.5),
            "cvae_neg_elbo": float(-terms.elbo.double().mean()),
            "baseline_neg_log_lik": float(bnll.double().mean()),
            "baseline_neg_log_lik_stderr": float(bnll.double().std() / n**0.5),
            "particles": a.particles,
            "test_points": n,
            "cvae_train_seconds": res.summary["train_seconds"],
            "cvae_eval_seconds": eval_s,
            "baseline_train_seconds": base_s,
        }
        print(q, json.dumps(results[str(q)]), flush=True)
        # figure rows: observed input (unobserved area grey), truth, baseline mean, 3 CVAE draws
        k = 8
        xs, ys = ds.x_test[:k], ds.y_test[:k]

        preds = [torch.full_like(xs, 0.5), xs, torch.sigmoid(net(ys)).detach()]
        preds += [res.vae.sample(k, ys) for _ in range(3)]
        rows = [paste(ys, p, m) for p in preds]
        panels.append(torch.cat(rows))
    imgs = torch.cat(panels).numpy()
    labels = [f"q{q} {r}" for q in (1, 2, 3) for r in ("input", "truth", "baseline", "cvae", "cvae", "cvae")]
    save_grid(imgs, 18, 8, out / "cvae_quadrants.png",
              "observed quadrants -> rest: input, truth, baseline mean, 3 CVAE samples E[y|z,x]", row_labels=labels)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
