"""Pyro's own estimators as ``elbo.kind`` (``trace``, ``meanfield``) and their direct forms.

The factories return Pyro's classes (``Trace_ELBO``; ``meanfield``: :class:`~pyro_vae.estimators.divergences.MeanField_ELBO`,
a ``TraceMeanField_ELBO`` that warns when it falls back to Monte Carlo). Pyro's classes cannot declare
a direct form themselves, so it is registered here for exactly those classes
(:data:`~pyro_vae.estimators.fast.FOREIGN_DIRECT_FORMS`).
"""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .._typing import PositiveInt, Tensor
from ..registry import register
from .base import MAX_PLATE_NESTING
from .divergences import MeanField_ELBO, meanfield_fast_loss
from .fast import FOREIGN_DIRECT_FORMS


def trace_fast_loss(elbo: Any, q: Any, x: Tensor, cond: Tensor | None) -> Tensor:
    """``Trace_ELBO``'s loss from direct log-weights: ``-sum_k,b log w_kb / K``."""
    K = int(elbo.num_particles)
    lw = q.draw(K).log_weight()
    return -lw.sum() / K if K != 1 else -lw.sum()


FOREIGN_DIRECT_FORMS[Trace_ELBO] = trace_fast_loss
FOREIGN_DIRECT_FORMS[TraceMeanField_ELBO] = meanfield_fast_loss


@register("elbo", "trace")
def trace(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's Trace_ELBO: Monte Carlo ELBO, reparameterized gradients, particles vectorized."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


@register("elbo", "meanfield")
def meanfield(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's TraceMeanField_ELBO: analytic KL(q||p) where it exists, Monte Carlo otherwise (warned once)."""
    return MeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


__all__ = ["meanfield", "trace", "trace_fast_loss"]
