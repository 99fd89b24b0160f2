"""Check 2: a reference posterior by NUTS (``pyro.infer.NUTS``) for a few points, and the guide against it.

z only, decoder frozen. The ``C`` chains are ``C`` independent copies of z advanced by one vectorized
NUTS kernel (step size shared, diagonal mass matrix per coordinate), started over-dispersed around
guide draws. Gate: R-hat <= ``max_rhat``, bulk ESS >= ``min_ess``, no divergences; if it fails the
draws are kept in the files but no comparison is made from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from scipy import stats

from .._typing import Tensor
from . import _arviz
from .density import log_joint


@dataclass
class NutsResult:
    """The chains of one point, their convergence diagnostics and the gate's verdict."""

    draws: np.ndarray  # (chains, draws, D)
    divergences: int
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    step_size: float
    seconds: float
    gate_failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.gate_failures

    def summary(self) -> dict[str, Any]:
        return {
            "gate_passed": self.passed,
            "gate_failures": self.gate_failures,
            "max_rhat": float(np.max(self.rhat)),
            "min_ess_bulk": float(np.min(self.ess_bulk)),
            "min_ess_tail": float(np.min(self.ess_tail)),
            "divergences": self.divergences,
            "step_size": self.step_size,
            "seconds": self.seconds,
            "rhat": self.rhat,
            "ess_bulk": self.ess_bulk,
            "ess_tail": self.ess_tail,
            "mean": self.draws.reshape(-1, self.draws.shape[-1]).mean(0),
            "sd": self.draws.reshape(-1, self.draws.shape[-1]).std(0, ddof=1),
        }


def nuts_reference(
    model: Callable[..., Any],
    x: Tensor,
    cond: Tensor | None,
    init: Tensor,
    warmup: int,
    draws: int,
    max_rhat: float = 1.01,
    min_ess: float = 400.0,
) -> NutsResult:
    """NUTS on p(z | x) for ONE point ``x`` (shape ``(1, *event)``); ``init`` ``(chains, D)`` starts the chains.

    The model's parameters must be frozen by the caller (:func:`frozen`); only z moves.
    """
    chains, d = init.shape

    def potential(params: dict[str, Tensor]) -> Tensor:
        z = params["z"].reshape(chains, 1, d)
        return -log_joint(model, x, cond, z).sum()

    kernel = NUTS(potential_fn=potential, target_accept_prob=0.8, adapt_step_size=True, adapt_mass_matrix=True)
    mcmc = MCMC(
        kernel,
        num_samples=draws,
        warmup_steps=warmup,
        initial_params={"z": init.reshape(-1).detach().clone()},
        disable_progbar=True,
    )
    t0 = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - t0
    z = mcmc.get_samples()["z"].reshape(draws, chains, d).transpose(0, 1).double().cpu().numpy()
    divergences = sum(len(v) for v in mcmc.diagnostics().get("divergences", {}).values())
    diag = _arviz.chain_diagnostics(z)
    res = NutsResult(
        z, int(divergences), diag["rhat"], diag["ess_bulk"], diag["ess_tail"], float(kernel.step_size), seconds
    )
    if not np.all(res.rhat <= max_rhat):
        res.gate_failures.append(f"max R-hat {np.nanmax(res.rhat):.4f} > {max_rhat}")
    if not np.all(res.ess_bulk >= min_ess):
        res.gate_failures.append(f"min bulk ESS {np.nanmin(res.ess_bulk):.0f} < {min_ess:.0f}")
    if res.divergences:
        res.gate_failures.append(f"{res.divergences} divergent transitions")
    return res


def over_dispersed_start(guide_draws: Tensor, chains: int, gen: torch.Generator) -> Tensor:
    """``(chains, D)`` starting points: ``chains`` guide draws ``(S, D)`` pushed twice as far from their mean."""
    pick = torch.randperm(guide_draws.shape[0], generator=gen)[:chains]
    centre = guide_draws.mean(0)
    return centre + 2.0 * (guide_draws[pick] - centre)


def compare_draws(guide: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Guide draws ``(S, D)`` against reference draws ``(n, D)``, per dimension, in reference-sd units."""
    m_q, m_r = guide.mean(0), ref.mean(0)
    s_q, s_r = guide.std(0, ddof=1), ref.std(0, ddof=1)
    w = np.array([stats.wasserstein_distance(guide[:, j], ref[:, j]) for j in range(guide.shape[1])])
    md = (m_q - m_r) / s_r
    return {
        "mean_diff_sd": md,
        "sd_ratio": s_q / s_r,
        "sd_diff_sd": (s_q - s_r) / s_r,
        "wasserstein": w,
        "wasserstein_sd": w / s_r,
        "max_abs_mean_diff_sd": float(np.max(np.abs(md))),
        "min_sd_ratio": float(np.min(s_q / s_r)),
        "max_sd_ratio": float(np.max(s_q / s_r)),
        "max_wasserstein_sd": float(np.max(w / s_r)),
    }


__all__ = ["NutsResult", "compare_draws", "nuts_reference", "over_dispersed_start"]
