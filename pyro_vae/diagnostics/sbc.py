"""Check 4: calibration by simulation-based calibration (Talts et al. 2018).

z* ~ p(z), x ~ p(x|z*) from the trained model, then the rank of z*_d among ``L`` draws of q(z|x) per
dimension, randomized to a PIT in (0, 1): uniform iff q is calibrated. KS test per dimension
(Bonferroni), ECDF-difference with simultaneous bands, and the VSBC symmetry test (Yao et al. 2018)
for directional bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from scipy import stats

from .._typing import Tensor
from . import _arviz


@torch.no_grad()
def simulate(vae: Any, x_template: Tensor, y_template: Tensor | None) -> tuple[Tensor, Tensor]:
    """(z*, x) with z* ~ p(z), x ~ p(x|z*) from the model, one per template row (templates give shape/labels)."""
    cond = vae.cond(y_template)
    tr = poutine.trace(poutine.uncondition(vae.model)).get_trace(x_template, cond)
    return tr.nodes["z"]["value"], tr.nodes["x"]["value"].to(x_template.dtype)


def pit_values(q: dist.Distribution, z_star: Tensor, num_draws: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Ranks of z*_d among ``num_draws`` draws of q (0..L) and their randomized PIT in (0, 1), each ``(N, D)``."""
    draws = q.sample((num_draws,))
    ranks = (draws < z_star).sum(0)
    u = torch.rand(ranks.shape, generator=gen, dtype=torch.float64).to(ranks.device)
    return ranks.cpu(), ((ranks.double().cpu() + u.cpu()) / (num_draws + 1))


def run_sbc(
    vae: Any, x: Tensor, y: Tensor | None, simulations: int, num_draws: int, alpha: float, gen: torch.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """PIT values ``(simulations, D)`` and :func:`calibration_tests` of as many simulations from the model
    (shapes and labels taken from the points ``x``, ``y`` in turn) against ``num_draws`` draws of q each."""
    tmpl = torch.arange(simulations) % len(x)
    xt = x[tmpl.to(x.device)]
    yt = None if y is None else y[tmpl.to(x.device)]
    z_star, x_sim = simulate(vae, xt, yt)
    with torch.no_grad():
        q = vae.guide.dist(x_sim, vae.cond(yt))
        _, pit_t = pit_values(q, z_star, num_draws, gen)
    pit = pit_t.numpy()
    return pit, calibration_tests(pit, alpha)


def calibration_tests(pit: np.ndarray, alpha: float = 0.01) -> dict[str, Any]:
    """Uniformity (KS per dim, Bonferroni), simultaneous ECDF band, VSBC symmetry, central-95% coverage."""
    n, d = pit.shape
    ks = np.array([stats.kstest(pit[:, j], "uniform").pvalue for j in range(d)])
    vsbc = np.array([stats.ks_2samp(pit[:, j], 1.0 - pit[:, j]).pvalue for j in range(d)])
    grid = np.linspace(0.0, 1.0, 101)
    lo, hi = _arviz.uniform_ecdf_band(n, grid, prob=1.0 - alpha)
    ecdf = (pit[:, :, None] <= grid).mean(0)  # (D, G)
    outside_band = np.any((ecdf < lo - 1e-12) | (ecdf > hi + 1e-12), axis=1)
    outside95 = np.mean((pit < 0.025) | (pit > 0.975), axis=0)
    mean_pit = pit.mean(0)
    return {
        "simulations": n,
        "ks_pvalue": ks,
        "vsbc_pvalue": vsbc,
        "min_ks_pvalue": float(ks.min()),
        "min_vsbc_pvalue": float(vsbc.min()),
        "uniform": bool(ks.min() >= alpha / d),
        "symmetric": bool(vsbc.min() >= alpha / d),
        "dims_outside_band": int(outside_band.sum()),
        "band_prob": 1.0 - alpha,
        "outside_central95": outside95,
        "mean_outside_central95": float(outside95.mean()),
        "mean_pit": mean_pit,
        "alpha": alpha,
        "test": f"KS vs Uniform(0,1) per latent dimension, Bonferroni over {d} dims at family-wise {alpha}",
        "_ecdf": ecdf,
        "_grid": grid,
        "_band": (lo, hi),
    }


__all__ = ["calibration_tests", "pit_values", "run_sbc", "simulate"]
