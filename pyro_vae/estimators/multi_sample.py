"""The multi-sample bounds of Rainforth et al. 2018 ("Tighter variational bounds are not necessarily
better"): MIWAE, CIWAE (``elbo.kind: miwae``, ``ciwae``: functions of the log-weights, direct form of
the base class) and PIWAE (``piwae``: the model on IWAE, the guide on MIWAE, its own direct form)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO

from .._internals import detached_parameters
from .._typing import PositiveInt, Tensor, UnitInterval
from ..registry import register
from .base import LogTerms, LogWeightELBO, _frozen, _latent_sites, _replay_trace, iwae_bound, log_terms


def miwae_bound(log_weight: Tensor, num_groups: int) -> Tensor:
    """(1/M) sum_m L_K over M groups of K particles, from ``(M*K, B)`` log-weights."""
    lw = log_weight.reshape(num_groups, -1, *log_weight.shape[1:])
    return (torch.logsumexp(lw, dim=1) - math.log(lw.shape[1])).mean(0)


class MIWAE_ELBO(LogWeightELBO):
    """MIWAE(M, K) (Rainforth et al. 2018): the average of M independent IWAE bounds of K particles.

    M=1 is IWAE; K=1 is the M-sample ELBO. ``num_particles`` here is K per group (M*K draws in all).
    """

    def __init__(self, num_particles: int, num_groups: int) -> None:
        super().__init__(num_particles * num_groups)
        self.num_groups = num_groups

    def objective(self, terms: LogTerms) -> Tensor:
        return miwae_bound(terms.log_weight, self.num_groups)


class CIWAE_ELBO(LogWeightELBO):
    """CIWAE (Rainforth et al. 2018): mix * ELBO + (1 - mix) * L_K on the same K draws.

    mix = 1 is the K-sample ELBO (``trace``), mix = 0 is IWAE. (Called beta in the paper; here
    ``mix``, since ``elbo.beta`` is the KL weight.)
    """

    def __init__(self, num_particles: int, mix: float) -> None:
        super().__init__(num_particles)
        self.mix = mix

    def objective(self, terms: LogTerms) -> Tensor:
        lw = terms.log_weight
        return self.mix * lw.mean(0) + (1.0 - self.mix) * iwae_bound(lw)


class PIWAE_ELBO(LogWeightELBO):
    """PIWAE (Rainforth et al. 2018): the model trains on IWAE, the guide on MIWAE, same draws.

    With M groups of K particles: the model (decoder, prior) parameters get the gradient of L_{MK}
    (IWAE over all M*K draws) and the guide parameters the gradient of MIWAE(M, K) (K=1: the ELBO).
    One surrogate loss carries both, so the ordinary optimizer and training loop work:

        loss = -(L_MK[model live, draws and q frozen] + MIWAE[model frozen, guide live]
                 - stop(MIWAE))

    whose value is -L_MK. Parameters are grouped by the program they belong to (model vs guide); the
    guide's parameters get MIWAE's gradient only, also where the model uses them (a VampPrior).

    Direct form: the same two halves, the decoder run once with its parameters detached on the live
    draws and once live on the detached draws.
    """

    def __init__(self, num_particles: int, num_groups: int) -> None:
        super().__init__(num_particles * num_groups)
        self.num_groups = num_groups

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        k = self.num_particles
        guide_side = log_terms(_frozen(model), guide, args, kwargs, k)
        sites = _latent_sites(guide_side.guide_trace)
        replay = _replay_trace({n: s["value"].detach() for n, s in sites}, sites)
        # The guide's parameters are detached on the model side wherever they appear: in q, and in a
        # prior built from the guide (a VampPrior mixes q at pseudo-inputs), so they train on MIWAE only.
        with detached_parameters(guide) if isinstance(guide, torch.nn.Module) else nullcontext():
            model_side = log_terms(model, poutine.replay(_frozen(guide), trace=replay), args, kwargs, k)
        enc = miwae_bound(guide_side.log_weight, self.num_groups)
        dec = iwae_bound(model_side.log_weight)
        return -(dec + enc - enc.detach()).sum()

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        d = q.draw(self.num_particles)
        log_q = d.log_q()  # live: the guide side's score
        with detached_parameters(q.model):  # guide side: the model frozen, gradient through z and q only
            obs, log_p = d.obs(), d.log_p()
        enc = miwae_bound(obs + q.beta_p * log_p - q.beta_q * log_q, self.num_groups)
        z = d.z.detach()
        with detached_parameters(q.guide):  # model side: draws and q frozen, also inside the model
            dec_lw = d.obs(z) + q.beta_p * d.log_p(z) - q.beta_q * log_q.detach()
        dec = iwae_bound(dec_lw)
        return -(dec + enc - enc.detach()).sum()


@register("elbo", "miwae")
def miwae(*, num_particles: PositiveInt = 5, num_groups: PositiveInt = 2) -> ELBO:
    """MIWAE(M, K): mean of M=num_groups IWAE bounds of K=num_particles draws (Rainforth et al. 2018)."""
    return MIWAE_ELBO(num_particles, num_groups)


@register("elbo", "ciwae")
def ciwae(*, num_particles: PositiveInt = 5, mix: UnitInterval = 0.5) -> ELBO:
    """CIWAE: mix * ELBO + (1 - mix) * IWAE on the same K draws (Rainforth et al. 2018's beta)."""
    return CIWAE_ELBO(num_particles, mix)


@register("elbo", "piwae")
def piwae(*, num_particles: PositiveInt = 8, num_groups: PositiveInt = 8) -> ELBO:
    """PIWAE: model on IWAE over M*K draws, guide on MIWAE(M, K) (Rainforth et al. 2018)."""
    return PIWAE_ELBO(num_particles, num_groups)


__all__ = ["CIWAE_ELBO", "MIWAE_ELBO", "PIWAE_ELBO", "ciwae", "miwae", "miwae_bound", "piwae"]
