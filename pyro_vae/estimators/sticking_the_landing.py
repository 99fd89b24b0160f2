"""Sticking the landing (``elbo.kind: stl``; Roeder, Wu & Duvenaud 2017): the ELBO with the score term dropped."""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO

from .._typing import PositiveInt, Tensor
from ..registry import register
from .base import LogWeightELBO, stopped_log_terms


class STL_ELBO(LogWeightELBO):
    """Sticking the landing (Roeder, Wu & Duvenaud 2017): the ELBO with the score term dropped.

    Value: the K-sample average ELBO (the same as ``trace``). While the KL weight beta is at least 1
    the guide gets only the path derivative through z (log q scored at detached parameters):
    unbiased, since E_q[grad log q] = 0, and zero variance when q equals the posterior. While beta < 1
    (a KL warm-up or schedule, beta-VAE with beta < 1) it gets the plain reparameterized gradient of
    the weighted ELBO on the same draws, for the reason given in
    :func:`~pyro_vae.estimators.base.stopped_log_terms`.

    Direct form: the same, log q(z|x) at ``(loc, scale)`` detached.
    """

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        st = stopped_log_terms(model, guide, args, kwargs, self.num_particles, below_one="live")
        return -st.terms.log_weight.mean(0).sum()

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        lw = q.draw(self.num_particles).log_weight(stopped=q.beta_q >= 1.0)
        return -(lw.mean(0) if lw.shape[0] != 1 else lw).sum()


@register("elbo", "stl")
def stl(*, num_particles: PositiveInt = 1) -> ELBO:
    """ELBO with sticking-the-landing guide gradients (Roeder et al. 2017); the plain ones while the KL weight < 1."""
    return STL_ELBO(num_particles)


__all__ = ["STL_ELBO", "stl"]
