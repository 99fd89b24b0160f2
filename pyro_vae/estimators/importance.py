"""Importance-weighted bounds: IWAE (Burda et al. 2015) and the variational Renyi bound (Li & Turner 2016).

Pyro's ``RenyiELBO`` has no ``differentiable_loss`` (it calls ``backward`` itself and only when the
param store holds parameters), so ``iwae`` and ``renyi`` are our own
:class:`~pyro_vae.estimators.base.LogWeightELBO` subclasses; tests check them against
``RenyiELBO.loss`` on the same random draws. Their direct form is the log-weight one of the base class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyro.infer import ELBO

from .._typing import PositiveInt, Tensor
from ..errors import SpecError
from ..registry import register
from .base import LogTerms, LogWeightELBO, iwae_bound


class IWAE_ELBO(LogWeightELBO):
    """L_K = E[log 1/K sum_k p(x, z_k) / q(z_k|x)]; K=1 is the ELBO. Gradients: plain reparameterized."""

    def objective(self, terms: LogTerms) -> Tensor:
        return iwae_bound(terms.log_weight)


class Renyi_ELBO(LogWeightELBO):
    """Variational Renyi bound (Li & Turner 2016): 1/(1-a) log 1/K sum_k w_k^(1-a); a=0 is IWAE."""

    def __init__(self, alpha: float, num_particles: int) -> None:
        super().__init__(num_particles)
        self.alpha = alpha

    def objective(self, terms: LogTerms) -> Tensor:
        return iwae_bound((1.0 - self.alpha) * terms.log_weight) / (1.0 - self.alpha)


@register("elbo", "iwae")
def iwae(*, num_particles: PositiveInt = 5) -> ELBO:
    """Importance-weighted bound L_K (Burda et al. 2015) = Renyi alpha=0, K vectorized particles."""
    return IWAE_ELBO(num_particles)


def _alpha_not_one(p: Mapping[str, Any]) -> None:
    if p["alpha"] == 1.0:
        raise SpecError("alpha: 1 is the plain ELBO, not allowed here; use elbo.kind: trace (or alpha != 1)")


@register("elbo", "renyi", check=_alpha_not_one)
def renyi(*, alpha: float = 0.5, num_particles: PositiveInt = 5) -> ELBO:
    """Renyi divergence bound (Li & Turner 2016) for any alpha != 1 (alpha=0: IWAE; alpha->1: ELBO)."""
    _alpha_not_one({"alpha": alpha})
    return Renyi_ELBO(alpha, num_particles)


__all__ = ["IWAE_ELBO", "Renyi_ELBO", "iwae", "renyi"]
