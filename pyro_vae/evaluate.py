"""Evaluation: ELBO, importance-sampled log-likelihood, KL, reconstruction, active units.

All numbers are nats per data point (higher is better for bounds), computed from unscaled
log-densities, so ``beta`` used in training never leaks into a reported bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ._typing import Tensor
from .data import Dataset
from .estimators import iwae_bound, log_terms
from .gradients import GradientStats, gradient_stats  # re-exported: pyro_vae.evaluate.gradient_stats
from .models.vae import VAE

#: Decoder evaluations (points x particles) per forward pass: bounds memory at any K.
ROW_BUDGET = 1 << 14


@dataclass(frozen=True)
class PointTerms:
    """Per-data-point estimates, each of shape ``(N,)``."""

    elbo: Tensor  # mean over K draws of log p(x,z) - log q(z|x)
    log_likelihood: Tensor  # L_K = log mean_k w_k, a stochastic lower bound on log p(x)
    reconstruction: Tensor  # mean over K of log p(x|z)
    kl: Tensor  # mean over K of log q(z|x) - log p(z) (Monte Carlo KL)
    posterior_mean: Tensor  # E_q[z|x], shape (N, latent_dim)


@dataclass(frozen=True)
class EvalResult:
    """What ``pyro-vae evaluate`` writes to ``eval.json`` (nats per data point)."""

    split: str
    n: int
    num_particles: int
    elbo: float
    log_likelihood: float
    log_likelihood_stderr: float
    kl: float
    reconstruction: float
    active_units: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("split", self.split),
            ("points", f"{self.n}"),
            ("particles K", f"{self.num_particles}"),
            ("ELBO", f"{self.elbo:.3f}"),
            (f"log p(x) >= L_{self.num_particles}", f"{self.log_likelihood:.3f} ± {self.log_likelihood_stderr:.3f}"),
            ("reconstruction E[log p(x|z)]", f"{self.reconstruction:.3f}"),
            ("KL(q(z|x) || p(z))", f"{self.kl:.3f}"),
            ("active units", f"{self.active_units}"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

    def save(self, path: Any) -> None:
        """Write eval.json atomically; a failing write raises RunError and leaves the old file."""
        from .checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _posterior_mean(vae: VAE, x: Tensor, y: Tensor | None, draws: Tensor | None) -> Tensor:
    try:
        return vae.posterior_mean(x, y)
    except NotImplementedError:  # e.g. a flow guide: no closed-form mean
        assert draws is not None, "the guide trace has no 'z' site"
        return draws.mean(0)


@torch.no_grad()
def point_terms(
    vae: VAE,
    x: Tensor,
    y: Tensor | None = None,
    num_particles: int = 1,
    row_budget: int = ROW_BUDGET,
) -> PointTerms:
    """Per-point estimates with K particles, chunked over points and particles (bounded memory)."""
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    chunk = min(num_particles, row_budget)
    per = max(1, row_budget // chunk)
    out: dict[str, list[Tensor]] = {k: [] for k in ("elbo", "ll", "rec", "kl", "mean")}
    was_training = vae.training
    vae.eval()
    try:
        for s in range(0, len(x), per):
            xb = x[s : s + per]
            yb = None if y is None else y[s : s + per]
            cond = vae.cond(yb)
            lse_parts: list[Tensor] = []
            sum_w: Tensor | float = 0.0
            sum_rec: Tensor | float = 0.0
            sum_lat: Tensor | float = 0.0
            draws: Tensor | None = None
            done = 0
            while done < num_particles:
                k = min(chunk, num_particles - done)
                t = log_terms(vae.model, vae.guide, (xb, cond), {}, k, scaled=False)
                lw = t.log_weight
                lse_parts.append(torch.logsumexp(lw, 0))
                sum_w = sum_w + lw.sum(0)
                sum_rec = sum_rec + t.obs.sum(0)
                sum_lat = sum_lat + t.latent.sum(0)
                if draws is None and "z" in t.guide_trace.nodes:
                    draws = t.guide_trace.nodes["z"]["value"]
                done += k
            # num_particles >= 1, so the loop ran and the sums are tensors
            assert isinstance(sum_w, Tensor) and isinstance(sum_rec, Tensor) and isinstance(sum_lat, Tensor)
            ll = torch.logsumexp(torch.stack(lse_parts), 0) - math.log(num_particles)
            out["ll"].append(ll)
            out["elbo"].append(sum_w / num_particles)
            out["rec"].append(sum_rec / num_particles)
            out["kl"].append(-sum_lat / num_particles)
            out["mean"].append(_posterior_mean(vae, xb, yb, draws).reshape(len(xb), -1))
    finally:
        vae.train(was_training)
    cat = {k: torch.cat(v) for k, v in out.items()}
    return PointTerms(cat["elbo"], cat["ll"], cat["rec"], cat["kl"], cat["mean"])


def active_units(posterior_mean: Tensor, threshold: float = 0.01) -> int:
    """Burda et al. (2015): unit u is active if Var_x(E_q[z_u|x]) > threshold."""
    if len(posterior_mean) < 2:
        return 0
    return int((posterior_mean.var(0) > threshold).sum())


def summarize(terms: PointTerms, split: str, num_particles: int) -> EvalResult:
    n = len(terms.elbo)
    ll = terms.log_likelihood.double()
    stderr = float(ll.std() / math.sqrt(n)) if n > 1 else float("nan")
    return EvalResult(
        split=split,
        n=n,
        num_particles=num_particles,
        elbo=float(terms.elbo.double().mean()),
        log_likelihood=float(ll.mean()),
        log_likelihood_stderr=stderr,
        kl=float(terms.kl.double().mean()),
        reconstruction=float(terms.reconstruction.double().mean()),
        active_units=active_units(terms.posterior_mean),
    )


def evaluate(
    vae: VAE, data: Dataset, split: str = "test", num_particles: int = 5000, row_budget: int = ROW_BUDGET
) -> EvalResult:
    """ELBO, L_K log-likelihood (with standard error), KL, reconstruction and active units on a split."""
    x, y = data.split(split)
    return summarize(point_terms(vae, x, y, num_particles, row_budget), split, num_particles)


__all__ = [
    "EvalResult",
    "GradientStats",
    "PointTerms",
    "active_units",
    "evaluate",
    "gradient_stats",
    "iwae_bound",
    "point_terms",
    "summarize",
]
