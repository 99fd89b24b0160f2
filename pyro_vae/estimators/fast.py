"""Direct (trace-free) forms of the estimators for the standard model/guide pair.

Pyro's estimators trace the model and the guide on every step (poutine messengers, site dicts,
plate broadcasting, ``compute_log_prob``), which for a small network costs as much as the network
itself. When the model and guide declare ``supports_direct`` (the standard programs: ``z ~ p(z)``,
``x ~ p(x|z)`` in :class:`~pyro_vae.models.vae.Generative`; ``z ~ q(z|x)`` from ``guide.dist`` in
:class:`~pyro_vae.guides.base.AmortizedGuide`, forward not overridden), every estimator is a short
function of the same quantities, computed here directly:

- :class:`Posterior`: q(z|x) for the batch, before any draw (``(loc, scale)`` when the guide declares a
  diagonal Normal via ``diagonal_normal``, else its distribution), the prior, the analytic KL;
- :class:`Draws`: ``z = q.rsample((K,))`` (the same random draws, in the same order, as Pyro's
  vectorized particle plate: both draw a ``(K, B, D)`` standard normal), and from them
  ``log p(x|z)`` (``likelihood.log_prob(decoder(z), x)``), ``log p(z)``, ``log q(z|x)`` (live, or
  at the guide's parameters detached: the score-free forms), the decoder's parameters frozen or not.

An estimator declares its direct form with ``fast_loss(q, x, cond)`` (:class:`~pyro_vae.estimators.base.DirectForm`),
the formula of its own loss on these terms; :class:`FastELBO` calls it and takes the Pyro path where
it returns None (a family it does not cover; nothing is drawn before that decision) or a Pyro handler
other than a noise source is active. The fast path changes speed, never results:
tests/estimators/ check values and gradients against the Pyro path on the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.distributions import Normal as PyroNormal
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from .. import _internals
from .._typing import Tensor
from .base import has_direct_form

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_NORMALS = (Normal, PyroNormal)

#: Direct forms of estimator classes that cannot declare one themselves (Pyro's own), by exact class:
#: a subclass may compute another loss. Filled by :mod:`pyro_vae.estimators.pyro_elbos`.
FOREIGN_DIRECT_FORMS: dict[type, Callable[..., Tensor | None]] = {}


def direct_form(elbo: Any) -> Callable[..., Tensor | None] | None:
    """The estimator's ``fast_loss(q, x, cond)``, or None if it declares no direct form.

    Particles drawn in a Python loop (``vectorize_particles=False``) come in another order than one
    vectorized draw, so such an estimator has none.
    """
    if not getattr(elbo, "vectorize_particles", True):
        return None
    if has_direct_form(elbo):
        return elbo.fast_loss  # type: ignore[no-any-return]
    form = FOREIGN_DIRECT_FORMS.get(type(elbo))
    return None if form is None else form.__get__(elbo)


def supports_direct(model: Any, guide: Any) -> bool:
    """Whether the model and guide declare the standard programs (``supports_direct``)."""
    return bool(getattr(model, "supports_direct", False)) and bool(getattr(guide, "supports_direct", False))


supports = supports_direct


def handlers() -> str:
    """``"none"``: no Pyro handler is active; ``"noise"``: only noise sources (handlers declaring
    ``sample_values_only``: they set the values of sample sites and nothing else, so the draw comes
    from the handler); ``"other"``: anything else (trace, scale, condition...), which only the Pyro
    path honours."""
    stack = _internals.pyro_handlers()
    if not stack:
        return "none"
    return "noise" if all(getattr(h, "sample_values_only", False) for h in stack) else "other"


def diag_normal(d: Any) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` of an ``Independent(Normal, 1)``, else None."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and type(d.base_dist) in _NORMALS:
        return d.base_dist.loc, d.base_dist.scale
    return None


def prior_of(model: Any, cond: Tensor | None) -> Any:
    """p(z) (or p(z|cond)) of a model: ``model.prior_dist(cond)``, else ``model.prior()``."""
    prior_dist = getattr(model, "prior_dist", None)
    return prior_dist(cond) if prior_dist is not None else model.prior()


def obs_log_prob(lik: nn.Module, params: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) summed over the event, ``(K, B)``: the likelihood's own ``log_prob(params, x)``."""
    log_prob = getattr(lik, "log_prob", None)
    return log_prob(params, x) if log_prob is not None else lik(params).log_prob(x)


def standard_prior(model: Any) -> bool:
    """True when the model declares its prior N(0, I) (``is_standard_normal``) and unconditional."""
    prior = model.prior
    return bool(getattr(prior, "is_standard_normal", False)) and not getattr(prior, "conditional", False)


class Posterior:
    """q(z|x) of one batch for the direct forms; nothing drawn yet.

    ``loc``, ``scale``: a diagonal Normal written out (no ``Distribution`` object), else ``dist``.
    ``beta_p``, ``beta_q``: the model's and guide's KL weight (``poutine.scale`` of the ``z`` site),
    1 when ``scaled=False``.
    """

    __slots__ = ("beta_p", "beta_q", "cond", "dist", "guide", "loc", "model", "noise", "scale", "standard", "x")

    def __init__(
        self, model: Any, guide: Any, x: Tensor, cond: Tensor | None, *, scaled: bool = True, noise: bool = False
    ) -> None:
        self.model, self.guide, self.x, self.cond, self.noise = model, guide, x, cond, noise
        self.beta_q = float(guide.kl_weight) if scaled else 1.0
        self.beta_p = float(model.kl_weight) if scaled else 1.0
        self.standard = standard_prior(model)  # N(0, I): closed forms without a Distribution object
        normal = guide.diagonal_normal(x, cond) if hasattr(guide, "diagonal_normal") else None
        self.dist: Any = None
        if normal is None:
            self.dist = guide.dist(x, cond)
            normal = diag_normal(self.dist)
        self.loc: Any = None if normal is None else normal[0]
        self.scale: Any = None if normal is None else normal[1]

    @property
    def reparameterized(self) -> bool:
        return self.dist is None or bool(self.dist.has_rsample)

    def as_dist(self) -> Any:
        if self.dist is None:
            self.dist = PyroNormal(self.loc, self.scale).to_event(1)  # type: ignore[arg-type]
        return self.dist

    def prior(self) -> Any:
        """p(z) for this batch (None for N(0, I))."""
        return None if self.standard else prior_of(self.model, self.cond)

    def kl(self) -> Tensor | None:
        """KL(q || p) ``(B,)`` in closed form (unweighted), or None where there is none."""
        if self.loc is not None and self.standard:
            var = self.scale.pow(2)
            return (0.5 * (var + self.loc.pow(2) - 1 - var.log())).sum(-1)
        p = self.prior()
        kl = self.kl_per_dimension(p)
        if kl is not None:
            return kl.sum(-1)
        try:
            return kl_divergence(self.as_dist(), p if p is not None else prior_of(self.model, self.cond))
        except NotImplementedError:
            return None

    def kl_per_dimension(self, p: Any = None) -> Tensor | None:
        """KL(q(z_j|x) || p(z_j)) ``(B, D)`` for a diagonal Normal q and a diagonal Normal (or standard) prior."""
        if self.loc is None:
            return None
        if self.standard:
            var = self.scale.pow(2)
            return 0.5 * (var + self.loc.pow(2) - 1 - var.log())
        pn = diag_normal(self.prior() if p is None else p)
        if pn is None:
            return None
        ploc, pscale = pn
        var_ratio = (self.scale / pscale).pow(2)
        t1 = ((self.loc - ploc) / pscale).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())

    def draw(self, num_particles: int) -> Draws:
        """``num_particles`` reparameterized draws, as the guide's vectorized particle plate draws them."""
        K, x = num_particles, self.x
        noise = _internals.noise_source() if self.noise else None
        eps: Tensor | None = None
        if self.loc is not None and (noise is None or _internals.has_noise_draw(noise)):
            loc, scale = self.loc, self.scale
            if noise is not None:  # the handler's own draw for a (K, B, D) standard normal, data dim 1
                eps = _internals.noise_draw(noise, (K, *loc.shape), 1, loc.dtype, loc.device)
            else:
                eps = torch.empty((K, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()  # = Normal.rsample
            z = loc + eps * scale
        elif noise is not None:  # the draw goes through the noise handler exactly as in the guide's trace
            with pyro.plate("num_particles_vectorized", K, dim=-2), pyro.plate("data", x.shape[0], dim=-1):
                z = pyro.sample("z", self.as_dist())
        else:
            z = self.as_dist().rsample((K,))
        return Draws(self, z, eps)


class Draws:
    """K draws ``z`` ``(K, B, D)`` of a :class:`Posterior` and the log densities the estimators combine."""

    __slots__ = ("_log_q", "eps", "q", "z")

    def __init__(self, q: Posterior, z: Tensor, eps: Tensor | None) -> None:
        self.q, self.z, self.eps = q, z, eps
        self._log_q: Tensor | None = None

    def log_q(self, stopped: bool = False) -> Tensor:
        """log q(z|x) ``(K, B)``; ``stopped``: scored at the guide's parameters detached (gradient only via z)."""
        q, z = self.q, self.z
        if stopped:
            if q.loc is not None:
                loc, scale = q.loc.detach(), q.scale.detach()
                return (-0.5 * ((z - loc) / scale).pow(2) - scale.log()).sum(-1) - z.shape[-1] * HALF_LOG_2PI
            with _internals.detached_parameters(q.guide):
                return q.guide.dist(q.x, q.cond).log_prob(z)  # type: ignore[no-any-return]
        if self._log_q is None:
            if self.eps is not None:  # the same function of (loc, scale) as log_prob(loc + eps * scale)
                eps, scale = self.eps, q.scale
                self._log_q = (-0.5 * eps.pow(2) - scale.log()).sum(-1) - eps.shape[-1] * HALF_LOG_2PI
            else:
                self._log_q = q.as_dist().log_prob(z)
        return self._log_q

    def log_p(self, z: Tensor | None = None) -> Tensor:
        """log p(z) ``(K, B)`` at the draws (or at ``z``)."""
        z = self.z if z is None else z
        if self.q.standard:
            return -0.5 * z.pow(2).sum(-1) - z.shape[-1] * HALF_LOG_2PI
        p = self.q.prior()
        pn = diag_normal(p)
        if pn is not None:
            ploc, pscale = pn
            return (-0.5 * ((z - ploc) / pscale).pow(2) - pscale.log()).sum(-1) - z.shape[-1] * HALF_LOG_2PI
        return p.log_prob(z)  # type: ignore[no-any-return]

    def obs(self, z: Tensor | None = None) -> Tensor:
        """log p(x|z) ``(K, B)`` at the draws (or at ``z``)."""
        q = self.q
        z = self.z if z is None else z
        cond = q.cond
        zc = z if cond is None else torch.cat([z, cond.expand(*z.shape[:-1], cond.shape[-1])], dim=-1)
        return obs_log_prob(q.model.likelihood, q.model.decoder(zc), q.x)

    def latent(self, stopped: bool = False) -> Tensor:
        """``beta_p log p(z) - beta_q log q(z|x)`` ``(K, B)``: the latent part of each log-weight."""
        q = self.q
        log_p, log_q = self.log_p(), self.log_q(stopped)
        return (log_p * q.beta_p if q.beta_p != 1.0 else log_p) - (log_q * q.beta_q if q.beta_q != 1.0 else log_q)

    def log_weight(self, stopped: bool = False) -> Tensor:
        return self.obs() + self.latent(stopped)


def posterior(model: Any, guide: Any, x: Tensor, cond: Tensor | None, *, scaled: bool = True) -> Posterior | None:
    """The batch's :class:`Posterior`, or None when the direct forms cannot take this call: a Pyro
    handler other than a noise source is active, or the guide is not reparameterized."""
    h = handlers()
    if h == "other":
        return None
    q = Posterior(model, guide, x, cond, scaled=scaled, noise=h == "noise")
    return q if q.reparameterized else None


class FastTerms:
    """Per-particle ``(K, B)`` terms of one batch; ``kl`` ``(B,)`` only for the analytic-KL estimator."""

    __slots__ = ("kl", "latent", "obs", "z")

    def __init__(self, obs: Tensor, latent: Tensor | None, kl: Tensor | None, z: Tensor) -> None:
        self.obs, self.latent, self.kl, self.z = obs, latent, kl, z


def particle_terms(
    model: Any,
    guide: Any,
    x: Tensor,
    cond: Tensor | None,
    num_particles: int,
    *,
    analytic_kl: bool = False,
    scaled: bool = True,
) -> FastTerms | None:
    """The log-weight ingredients for ``num_particles`` vectorized draws, or None when not covered.

    ``scaled=True`` applies ``kl_weight`` (training), ``scaled=False`` gives raw densities.
    ``analytic_kl``: the closed-form KL (weighted by the guide's ``kl_weight``) instead of ``latent``.
    """
    q = posterior(model, guide, x, cond, scaled=scaled)
    if q is None:
        return None
    kl = None
    if analytic_kl:  # before any draw: a fallback must leave the random stream untouched
        kl = q.kl()
        if kl is None:
            return None
        if q.beta_q != 1.0:
            kl = kl * q.beta_q
    d = q.draw(num_particles)
    return FastTerms(d.obs(), None if analytic_kl else d.latent(), kl, d.z)


class FastELBO(nn.Module):
    """``elbo(model, guide)`` computed by the estimator's direct form; falls back to ``elbo`` where it has none.

    Call it like Pyro's ``ELBOModule``: ``loss = fast(x, cond)`` is the loss summed over the batch.
    """

    def __init__(self, elbo: Any, model: Any, guide: Any) -> None:
        super().__init__()
        form = direct_form(elbo)
        if form is None or not supports_direct(model, guide):
            raise ValueError(f"the fast path does not implement {type(elbo).__name__} for this model/guide")
        self.elbo: Any = elbo
        self.model = model
        self.guide = guide
        self.form = form
        self.num_particles = int(elbo.num_particles)
        self.fallbacks = 0  # Pyro-path calls (a guide, prior or handler the direct form does not cover)
        self._pyro_only = False

    def pyro_loss(self, *args: Any, **kwargs: Any) -> Tensor:
        """The same loss through Pyro's traces (what the fast path replaces)."""
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)  # type: ignore[no-any-return]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if not self._pyro_only:
            h = handlers()
            if h != "other":
                q = Posterior(self.model, self.guide, x, cond, noise=h == "noise")
                loss = self.form(q, x, cond) if q.reparameterized else None
                if loss is not None:
                    return loss
                self._pyro_only = True  # the families do not change between steps
        self.fallbacks += 1
        return self.pyro_loss(x, cond)


def accelerate(loss_fn: Any) -> Any:
    """``loss_fn`` (an ``elbo(model, guide)`` module) as a :class:`FastELBO` where supported, else unchanged."""
    elbo, model, guide = (getattr(loss_fn, k, None) for k in ("elbo", "model", "guide"))
    if isinstance(loss_fn, FastELBO) or elbo is None or direct_form(elbo) is None or not supports_direct(model, guide):
        return loss_fn
    return FastELBO(elbo, model, guide)


# Names the direct-form functions had before they were public.
_HALF_LOG_2PI = HALF_LOG_2PI
_diag_normal = diag_normal
_prior = prior_of
_obs_log_prob = obs_log_prob
_handlers = handlers


def estimator_kind(elbo: Any) -> str | None:
    """``"direct"`` if the fast path can compute this estimator (it declares a direct form), else None."""
    return None if direct_form(elbo) is None else "direct"


__all__ = [
    "FOREIGN_DIRECT_FORMS",
    "HALF_LOG_2PI",
    "Draws",
    "FastELBO",
    "FastTerms",
    "Posterior",
    "accelerate",
    "diag_normal",
    "direct_form",
    "estimator_kind",
    "handlers",
    "obs_log_prob",
    "particle_terms",
    "posterior",
    "prior_of",
    "supports",
    "supports_direct",
]
