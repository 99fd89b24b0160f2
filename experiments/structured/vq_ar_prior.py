"""An autoregressive prior over a trained VQ-VAE's code grid: MADE (Germain et al. 2015) over the
P = h*w code indices in raster order, p(k) = prod_p p(k_p | k_<p), fitted by maximum likelihood on the
training codes. Compared with the independent per-position categorical by the test codes' negative
log-likelihood, and sampled ancestrally (P passes) then decoded.

Usage: python experiments/structured/vq_ar_prior.py RUN_DIR [--epochs 20] [--hidden 512]
       (writes RUN_DIR/figures/vq_samples_made.png and RUN_DIR/vq_made.json)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae import load_run
from pyro_vae.models.vqvae import _all_codes, fit_code_prior
from pyro_vae.plots import as_images, save_grid


class MaskedLinear(nn.Linear):
    def __init__(self, fin: int, fout: int, mask: torch.Tensor) -> None:
        super().__init__(fin, fout)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Logits ``(B, P, K)`` for one-hot codes ``(B, P, K)``; output p sees only positions < p."""

    def __init__(self, positions: int, codes: int, hidden: int) -> None:
        super().__init__()
        self.p, self.k = positions, codes
        deg_in = torch.arange(positions).repeat_interleave(codes)  # position of each input unit
        deg_h = torch.arange(hidden) % max(positions - 1, 1)  # hidden unit h sees inputs with position <= deg_h
        deg_out = torch.arange(positions).repeat_interleave(codes)
        self.l1 = MaskedLinear(positions * codes, hidden, deg_h[:, None] >= deg_in[None, :])
        self.l2 = MaskedLinear(hidden, hidden, deg_h[:, None] >= deg_h[None, :])
        self.l3 = MaskedLinear(hidden, positions * codes, deg_out[:, None] > deg_h[None, :])

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.l2(F.relu(self.l1(onehot.flatten(1)))))
        return self.l3(h).reshape(-1, self.p, self.k)

    def nll(self, k: torch.Tensor) -> torch.Tensor:
        logits = self(F.one_hot(k, self.k).float())
        return F.cross_entropy(logits.transpose(1, 2), k, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        k = torch.zeros(n, self.p, dtype=torch.long)
        for p in range(self.p):
            logits = self(F.one_hot(k, self.k).float())[:, p]
            k[:, p] = torch.distributions.Categorical(logits=logits).sample()
        return k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run = load_run(a.run_dir, device="cpu")
    vae, ds = run.vae, run.data
    cb = vae.guide.codebook
    k_tr, k_va, k_te = (_all_codes(vae, x) for x in (ds.x_train, ds.x_valid, ds.x_test))
    made = MADE(cb.positions, cb.num_codes, a.hidden)
    opt = torch.optim.Adam(made.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    best, best_state = float("inf"), None
    for _ in range(a.epochs):
        for idx in torch.randperm(len(k_tr)).split(128):
            loss = made.nll(k_tr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            va = float(made.nll(k_va).mean())
        if va < best:  # early stopping on the validation codes
            best, best_state = va, {k: v.clone() for k, v in made.state_dict().items()}
    made.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        nll_made = made.nll(k_te)
    usage = fit_code_prior(vae, ds.x_train)
    nll_ind = -usage.clamp_min(1e-8).log().gather(1, k_te.T).sum(0)
    k = made.sample(64)
    imgs = as_images(vae.decode_mean(cb.weight.detach()[k]), ds.event_shape)
    (Path(a.run_dir) / "figures").mkdir(exist_ok=True)
    save_grid(
        imgs, 8, 8, Path(a.run_dir) / "figures" / "vq_samples_made.png", "codes from the autoregressive (MADE) prior"
    )
    out = {
        "test_code_nll_made": float(nll_made.mean()),
        "test_code_nll_made_stderr": float(nll_made.std() / len(nll_made) ** 0.5),
        "test_code_nll_independent": float(nll_ind.mean()),
        "test_code_nll_uniform": cb.positions * float(torch.log(torch.tensor(float(cb.num_codes)))),
        "valid_code_nll_made": best,
        "epochs": a.epochs,
        "hidden": a.hidden,
        "train_seconds": seconds,
    }
    (Path(a.run_dir) / "vq_made.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
