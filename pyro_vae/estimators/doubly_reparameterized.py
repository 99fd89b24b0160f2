"""Doubly reparameterized gradients of the IWAE bound (``elbo.kind: dreg``; Tucker, Lawson, Gu & Maddison 2018)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO

from .._typing import PositiveInt, Tensor
from ..registry import register
from .base import LogWeightELBO, iwae_bound, needs_density, refuse_point_mass, scale_grad, stopped_log_terms

_POINT_MASS = "its identity replaces the score of a density; use elbo.kind: iwae"


class DReG_ELBO(LogWeightELBO):
    """Doubly reparameterized gradients of the IWAE bound (Tucker, Lawson, Gu & Maddison 2018).

    Value: L_K, the same bound as :class:`~pyro_vae.estimators.importance.IWAE_ELBO`. Gradients: the
    model (decoder, prior) gets the IWAE gradient sum_k w~_k grad log w_k. While the KL weight beta
    (``elbo.beta`` times the KL schedule's factor) is at least 1, the guide gets

        sum_k [(1 - beta) w~_k + beta w~_k^2] d log w_k / d z_k  d z_k / d phi

    with log q scored at detached parameters and w~ the normalized weights. For beta = 1 this is
    Tucker et al.'s w~^2 estimator; the (1 - beta) w~ part makes it unbiased for the beta-weighted
    bound too (the score term it removes is scaled by beta). Unbiased, and its guide-gradient SNR does
    not vanish as K grows (IWAE's falls like 1/sqrt(K), Rainforth et al. 2018).
    While beta < 1 (a KL warm-up, a cyclical schedule's ramp, beta-VAE with beta < 1) the guide gets
    the plain reparameterized IWAE gradient of the same weighted bound on the same draws: the
    score-free form has variance of order beta / sigma there and explodes once q's scale sigma has
    collapsed at small beta (:func:`~pyro_vae.estimators.base.stopped_log_terms`).
    One latent site only (a hierarchical guide needs the per-layer form of the estimator).

    Direct form: the same with log q(z|x) at ``(loc, scale)`` detached and the gradient hook on the
    draws ``z = loc + eps * scale``.
    """

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        refuse_point_mass(guide, "dreg", _POINT_MASS)
        st = stopped_log_terms(model, guide, args, kwargs, self.num_particles, below_one="live")
        if len(st.roots) != 1:
            raise NotImplementedError(f"dreg supports guides with one latent site, got {sorted(st.roots)}")
        lw = st.terms.log_weight
        if st.stopped:
            w = torch.softmax(lw.detach(), dim=0)
            for z, scale in st.roots.values():  # d(-L_K)/dz_k carries w~_k already: times (1 - beta) + beta w~_k
                scale_grad(z, (1.0 - scale) + scale * w)
        return -iwae_bound(lw).sum()

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        refuse_point_mass(q.guide, "dreg", _POINT_MASS)
        d = q.draw(self.num_particles)
        beta = q.beta_q
        if beta < 1.0:
            return -iwae_bound(d.log_weight()).sum()
        lw = d.log_weight(stopped=True)
        w = torch.softmax(lw.detach(), dim=0)
        scale_grad(d.z, (1.0 - beta) + beta * w if beta != 1.0 else w)
        return -iwae_bound(lw).sum()


@register("elbo", "dreg")
@needs_density
def dreg(*, num_particles: PositiveInt = 5) -> ELBO:
    """IWAE bound L_K with doubly reparameterized guide gradients (Tucker et al. 2018); IWAE's while the KL weight < 1."""
    return DReG_ELBO(num_particles)


__all__ = ["DReG_ELBO", "dreg"]
