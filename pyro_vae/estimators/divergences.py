"""Closed-form KL divergences that torch and Pyro lack, and the mean-field ELBO that says when it has none
(with its direct form: the closed-form KL of a diagonal Normal guide).

Importing this module registers, with :func:`torch.distributions.register_kl`,

- ``KL(MultivariateNormal || Independent(Normal, 1))`` and
- ``KL(LowRankMultivariateNormal || Independent(Normal, 1))``,

i.e. a full- or low-rank Gaussian posterior against a diagonal Gaussian prior (standard or learned).
With ``q = N(m, S)`` and ``p = N(mu, diag s^2)`` in ``k`` dimensions::

    KL(q || p) = 1/2 [ tr(diag(s)^-2 S) + (mu - m)^T diag(s)^-2 (mu - m) - k + log det diag(s^2) - log det S ]

which for ``p = N(0, I)`` is ``1/2 [tr(S) + m^T m - k - log det S]``. ``log det S`` comes from the
entropy ``H(q) = k/2 (1 + log 2 pi) + 1/2 log det S``, which both torch Gaussians compute from their
Cholesky (or capacitance) factor; only ``diag(S)`` (``q.variance``) is needed besides.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
    register_kl,
)

from .._typing import Tensor
from .base import DirectForm


def gaussian_kl_diagonal(q: MultivariateNormal | LowRankMultivariateNormal, p: Independent) -> Tensor:
    """KL(q || p) for a Gaussian ``q`` with any covariance and a diagonal Gaussian ``p`` (closed form)."""
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    k = q.event_shape[-1]
    mu, s = p.base_dist.loc, p.base_dist.scale
    log_det_s_q = 2.0 * q.entropy() - k * (1.0 + math.log(2 * math.pi))  # log det S
    quad = ((q.variance + (q.mean - mu) ** 2) / s**2).sum(-1)  # tr(P^-1 S) + (mu-m)^T P^-1 (mu-m)
    return 0.5 * (quad - k + 2.0 * s.log().sum(-1) - log_det_s_q)


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    return gaussian_kl_diagonal(q, p)


@register_kl(LowRankMultivariateNormal, Independent)
def _kl_lowrank_diagonal(q: LowRankMultivariateNormal, p: Independent) -> Tensor:
    return gaussian_kl_diagonal(q, p)


def has_closed_form_kl(q: Any, p: Any) -> bool:
    """Whether ``kl_divergence(q, p)`` is registered for this pair (analytic KL available)."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


class MeanField_ELBO(DirectForm, TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` that warns once per estimator when a latent site has no closed-form KL.

    Pyro silently falls back to the Monte Carlo term ``log p(z) - log q(z|x)`` for such a site (a
    mixture, VampPrior or flow prior; a flow guide). The estimate is still unbiased, only noisier;
    the warning says so, once, so that a comparison of estimators is read correctly.

    Direct form (:func:`meanfield_fast_loss`) where the KL has a closed form; else the Pyro path,
    which warns.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.monte_carlo_sites: list[str] | None = None  # filled on the first step

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> Any:
        if self.monte_carlo_sites is None:
            self.monte_carlo_sites = []
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
                    continue
                q, p = guide_trace.nodes[name]["fn"], site["fn"]
                with torch.no_grad():
                    if not has_closed_form_kl(q, p):
                        self.monte_carlo_sites.append(name)
                        warnings.warn(
                            f"elbo.kind 'meanfield': no closed-form KL(q||p) for site {name!r} "
                            f"(guide {type(q).__name__} vs prior {type(p).__name__}); "
                            "using the Monte Carlo estimate log q(z|x) - log p(z) for that term",
                            stacklevel=2,
                        )
        return super()._differentiable_loss_particle(model_trace, guide_trace)

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        return meanfield_fast_loss(self, q, x, cond)


def meanfield_fast_loss(elbo: Any, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
    """``TraceMeanField_ELBO``'s loss directly: ``-(sum_k,b log p(x|z_kb) / K - beta sum_b KL(q_b || p))``;
    None (nothing drawn) where the KL has no closed form."""
    kl = q.kl()  # before any draw: a fallback must leave the random stream untouched
    if kl is None:
        return None
    if q.beta_q != 1.0:
        kl = kl * q.beta_q
    K = int(elbo.num_particles)
    obs = q.draw(K).obs().sum()
    return -((obs / K if K != 1 else obs) - kl.sum())


__all__ = ["MeanField_ELBO", "gaussian_kl_diagonal", "has_closed_form_kl", "meanfield_fast_loss"]
