"""Check 3: the amortization gap (Cremer, Li & Duvenaud 2018).

A per-point guide of the same family (diagonal or full-rank Gaussian; other families fall back to a
diagonal Gaussian, which the output says) is optimized from the encoder's output. log p(x) ~ the
IWAE-K bound of whichever guide has the smaller PSIS k-hat (the larger bound would be biased up:
heavy-tailed weights overshoot); approximation gap = log p(x) - ELBO(local), amortization gap =
ELBO(local) - ELBO(amortized).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Independent as _Independent
from torch.distributions import LowRankMultivariateNormal as _LowRankMVN
from torch.distributions import MultivariateNormal as _MVN
from torch.distributions import Normal as _Normal

from .._typing import Tensor
from ..estimators import log_terms
from ..evaluation.evaluate import ROW_BUDGET
from . import _arviz
from .density import log_joint
from .options import DiagnoseOptions


class LocalGaussian(nn.Module):
    """Per-point Gaussian guides for ``G`` points at once (independent parameters, no encoder)."""

    def __init__(self, loc: Tensor, scale: Tensor | None = None, scale_tril: Tensor | None = None) -> None:
        super().__init__()
        self.full = scale_tril is not None
        self.loc = nn.Parameter(loc.detach().clone())
        if scale_tril is not None:
            diag = scale_tril.diagonal(dim1=-2, dim2=-1)
            raw = torch.tril(scale_tril, -1) + torch.diag_embed(diag.clamp_min(1e-8).log())
            self.raw = nn.Parameter(raw.detach().clone())
        else:
            assert scale is not None
            self.raw = nn.Parameter(scale.detach().clamp_min(1e-8).log().clone())

    def dist(self) -> Any:
        if self.full:
            tril = torch.tril(self.raw, -1) + torch.diag_embed(self.raw.diagonal(dim1=-2, dim2=-1).exp())
            return dist.MultivariateNormal(self.loc, scale_tril=tril)
        return dist.Normal(self.loc, self.raw.exp()).to_event(1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("z", self.dist())


def local_guide_for(q: dist.Distribution, draws: Tensor) -> tuple[LocalGaussian, str, str]:
    """A per-point guide of q's family started at q (``draws`` ``(S, G, D)`` serve the fallback)."""
    if isinstance(q, _Independent) and isinstance(q.base_dist, _Normal) and q.reinterpreted_batch_ndims == 1:
        return LocalGaussian(q.base_dist.loc, scale=q.base_dist.scale), "diagonal_normal", "same family"
    if isinstance(q, _MVN):
        return LocalGaussian(q.mean, scale_tril=q.scale_tril), "full_rank_normal", "same family"
    if isinstance(q, _LowRankMVN):
        note = (
            "low-rank guide: the local guide is full-rank (a superset), so the amortization gap includes the rank limit"
        )
        return LocalGaussian(q.mean, scale_tril=q.scale_tril), "full_rank_normal", note
    note = (
        f"fallback: guide family {type(q).__name__} has no per-point version here; a diagonal Gaussian "
        "started at the guide's moments is used, so 'amortization gap' mixes family and amortization"
    )
    return LocalGaussian(draws.mean(0), scale=draws.std(0)), "diagonal_normal", note


def local_log_weights(
    model: Callable[..., Any], local: LocalGaussian, x: Tensor, cond: Tensor | None, k: int
) -> Tensor:
    """``(k, G)`` log p(x, z) - log q_local(z) for ``k`` reparameterized draws of the per-point guides."""
    q = local.dist()
    z = q.rsample((k,))
    return log_joint(model, x, cond, z) - q.log_prob(z)


def amortized_log_weights(vae: Any, x: Tensor, cond: Tensor | None, k: int) -> Tensor:
    """``(k, G)`` unscaled log weights of the amortized guide (through :func:`log_terms`: any guide)."""
    return log_terms(vae.model, vae.guide, (x, cond), {}, k, scaled=False).log_weight


@torch.no_grad()
def bounds(
    log_weights: Callable[[int], Tensor], k: int, rows: int, row_budget: int = ROW_BUDGET
) -> tuple[Tensor, Tensor, np.ndarray]:
    """ELBO, L_K and PSIS k-hat per point from ``log_weights(n) -> (n, G)`` (drawn in chunks of <= ``row_budget`` rows)."""
    chunk = max(1, row_budget // rows)
    parts, done = [], 0
    while done < k:
        n = min(chunk, k - done)
        parts.append(log_weights(n).double().cpu())
        done += n
    lw = torch.cat(parts)
    return lw.mean(0), torch.logsumexp(lw, 0) - math.log(k), _arviz.psis(lw.T.numpy())[1]


def gap_positions(first: list[int], n: int, m: int, gen: torch.Generator) -> list[int]:
    """Up to ``m`` distinct positions among ``n`` points: ``first`` (the NUTS points) then random others."""
    chosen = first[:m]
    rest = [int(i) for i in torch.randperm(n, generator=gen) if int(i) not in set(chosen)]
    return chosen + rest[: max(0, min(m, n) - len(chosen))]


def amortization_gap(
    vae: Any, x: Tensor, y: Tensor | None, opts: DiagnoseOptions, draws: Tensor | None = None
) -> dict[str, Any]:
    """Cremer et al. (2018) gaps for the points ``x`` (G of them), in nats per point."""
    cond = vae.cond(y)
    with torch.no_grad():
        q = vae.guide.dist(x, cond)
        if draws is None:
            draws = q.sample((200,))
    local, family, note = local_guide_for(q, draws)
    local = local.to(x.device)
    opt = torch.optim.Adam(local.parameters(), lr=opts.gap_lr)
    # cosine decay to 1% of lr: the last iterate settles instead of jittering at the noise floor
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.gap_steps, eta_min=0.01 * opts.gap_lr)
    t0 = time.perf_counter()
    trace = []
    for step in range(opts.gap_steps):
        lw = local_log_weights(vae.model, local, x, cond, opts.gap_train_particles)
        loss = -lw.mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, opts.gap_steps // 20) == 0 or step == opts.gap_steps - 1:
            trace.append((step, float(-loss.detach()) / len(x)))
    seconds = time.perf_counter() - t0
    k, g = opts.gap_particles, len(x)
    elbo_a, iw_a, k_a = bounds(lambda n: amortized_log_weights(vae, x, cond, n), k, g, opts.row_budget)
    elbo_l, iw_l, k_l = bounds(lambda n: local_log_weights(vae.model, local, x, cond, n), k, g, opts.row_budget)
    # log p(x): L_K of the proposal with the smaller k-hat. Not the larger L_K: with heavy-tailed weights
    # (k-hat > 0.5, e.g. an over-confident q) one L_K can overshoot log p(x) by far more than its nominal error.
    use_local = torch.as_tensor(np.nan_to_num(k_l, nan=np.inf) <= np.nan_to_num(k_a, nan=np.inf))
    log_px = torch.where(use_local, iw_l, iw_a)
    approx, amort = log_px - elbo_l, elbo_l - elbo_a
    return {
        "points": len(x),
        "local_family": family,
        "local_family_note": note,
        "steps": opts.gap_steps,
        "lr": opts.gap_lr,
        "train_particles": opts.gap_train_particles,
        "K": opts.gap_particles,
        "seconds": seconds,
        "optimization_trace": trace,
        "log_px": log_px.numpy(),
        "log_px_from": np.where(use_local.numpy(), "local", "amortized").tolist(),
        "khat_amortized": k_a,
        "khat_local": k_l,
        "iwae_amortized": iw_a.numpy(),
        "iwae_local": iw_l.numpy(),
        "elbo_amortized": elbo_a.numpy(),
        "elbo_local": elbo_l.numpy(),
        "approximation_gap": approx.numpy(),
        "amortization_gap": amort.numpy(),
        "inference_gap": (log_px - elbo_a).numpy(),
        "mean_log_px": float(log_px.mean()),
        "mean_elbo_local": float(elbo_l.mean()),
        "mean_elbo_amortized": float(elbo_a.mean()),
        "mean_approximation_gap": float(approx.mean()),
        "mean_amortization_gap": float(amort.mean()),
        "mean_inference_gap": float((log_px - elbo_a).mean()),
    }


__all__ = [
    "LocalGaussian",
    "amortization_gap",
    "amortized_log_weights",
    "bounds",
    "gap_positions",
    "local_guide_for",
    "local_log_weights",
]
