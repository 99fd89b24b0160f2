"""Check 1: PSIS k-hat per point (Yao, Vehtari, Simpson & Gelman 2018; Vehtari et al. 2024).

``S`` draws from q(z|x), log ratios ``log p(x, z) - log q(z|x)`` (unscaled: beta never enters),
Pareto-smoothed by ArviZ. k-hat < 0.5: importance sampling with q converges fast; 0.5-0.7: slowly;
> 0.7: q misses mass that p(z|x) has, and neither q's moments nor importance-weighted ones can be
trusted. Per point also the ELBO, the importance-weighted bound L_S and their gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._typing import Tensor
from ..estimators import log_terms
from ..evaluation.evaluate import ROW_BUDGET
from . import _arviz

KHAT_GOOD = 0.5
KHAT_BAD = 0.7


@torch.no_grad()
def guide_log_ratios(
    vae: Any, x: Tensor, y: Tensor | None, num_samples: int, row_budget: int = ROW_BUDGET
) -> tuple[Tensor, Tensor]:
    """``(N, S)`` log ratios log p(x, z_s) - log q(z_s|x) and the ``(S, N, D)`` draws z_s ~ q(z|x)."""
    per = max(1, row_budget // num_samples)
    ratios, draws = [], []
    for s in range(0, len(x), per):
        xb = x[s : s + per]
        cond = vae.cond(None if y is None else y[s : s + per])
        t = log_terms(vae.model, vae.guide, (xb, cond), {}, num_samples, scaled=False)
        ratios.append(t.log_weight.T.float().cpu())
        draws.append(t.guide_trace.nodes["z"]["value"].reshape(num_samples, len(xb), -1).float().cpu())
    return torch.cat(ratios), torch.cat(draws, dim=1)


def psis_summary(log_ratios: Tensor) -> dict[str, np.ndarray]:
    """k-hat, ELBO, L_S and gap per point from ``(N, S)`` log ratios."""
    lr = log_ratios.double()
    _, khat = _arviz.psis(lr.numpy())
    elbo = lr.mean(1)
    iwae = torch.logsumexp(lr, 1) - math.log(lr.shape[1])
    return {"khat": khat, "elbo": elbo.numpy(), "iwae": iwae.numpy(), "gap": (iwae - elbo).numpy()}


def khat_shares(khat: np.ndarray) -> dict[str, float]:
    k = np.where(np.isnan(khat), np.inf, khat)
    return {
        "share_below_0.5": float(np.mean(k < KHAT_GOOD)),
        "share_0.5_to_0.7": float(np.mean((k >= KHAT_GOOD) & (k < KHAT_BAD))),
        "share_above_0.5": float(np.mean(k >= KHAT_GOOD)),
        "share_above_0.7": float(np.mean(k >= KHAT_BAD)),
        "share_above_1": float(np.mean(k >= 1.0)),
    }


def select_points(khat: np.ndarray, m: int, gen: torch.Generator) -> list[tuple[int, str]]:
    """Up to ``m`` distinct positions: worst k-hat, median k-hat, then random and next-worst alternately."""
    k = np.where(np.isnan(khat), np.inf, khat)
    order = np.argsort(k, kind="stable")
    chosen: list[tuple[int, str]] = []
    taken: set[int] = set()

    def add(i: int, why: str) -> None:
        if len(chosen) < m and int(i) not in taken:
            taken.add(int(i))
            chosen.append((int(i), why))

    add(order[-1], "worst k-hat")
    add(order[len(order) // 2], "median k-hat")
    perm = torch.randperm(len(k), generator=gen).tolist()
    worst = list(order[::-1][1:])
    while len(chosen) < min(m, len(k)):
        while perm and perm[0] in taken:
            perm.pop(0)
        if perm:
            add(perm.pop(0), "random")
        while worst and int(worst[0]) in taken:
            worst.pop(0)
        if worst:
            add(worst.pop(0), "next-worst k-hat")
    return chosen


__all__ = ["KHAT_BAD", "KHAT_GOOD", "guide_log_ratios", "khat_shares", "psis_summary", "select_points"]
