"""ELBO estimators built from the spec: Pyro's own and ours.

Conventions (the same for every estimator, so that they compare on equal footing):

- ``estimator(model, guide)`` is an ``nn.Module``; calling it on a batch returns the loss summed over
  the batch (Pyro's convention). The training loop divides by the batch size, so every reported
  number is in nats per data point and does not depend on batch or dataset size. The data plate is
  never subsampled, so Pyro's subsample scaling never enters a log-sum-exp.
- ``beta`` (``elbo.beta``) is applied by the model and guide as ``poutine.scale`` on the ``z`` site
  only: it weights ``log p(z) - log q(z|x)`` inside each particle's log-weight and never scales the
  log-sum-exp as a whole (for ``trace`` that is exactly ``E[log p(x|z)] - beta KL``).
- Pyro's ``RenyiELBO`` has no ``differentiable_loss`` (it calls ``backward`` itself and only when the
  param store holds parameters), so ``iwae`` and ``renyi`` are our own :class:`LogWeightELBO`
  subclasses; tests check them against ``RenyiELBO.loss`` on the same random draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ._typing import PositiveInt, Tensor
from .errors import SpecError
from .registry import register

MAX_PLATE_NESTING = 1


@dataclass
class LogTerms:
    """Per-particle, per-data-point log densities, each of shape ``(K, B)``.

    ``obs``: sum of observed sites' log p(x|z). ``latent``: sum over latent sites of
    log p(z) - log q(z|x). ``log_weight = obs + latent``.
    """

    obs: Tensor
    latent: Tensor
    guide_trace: Any

    @property
    def log_weight(self) -> Tensor:
        return self.obs + self.latent


def _vectorized(fn: Callable[..., Any], num_particles: int, dim: int) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("num_particles_vectorized", num_particles, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def log_terms(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    scaled: bool = True,
    max_plate_nesting: int = MAX_PLATE_NESTING,
) -> LogTerms:
    """Run ``num_particles`` vectorized guide draws and replay the model on them.

    ``scaled=True`` uses the sites' scaled log-probs (beta applied: training); ``scaled=False`` the
    raw ones (evaluation: the true bound whatever beta was used in training).
    """
    dim = -max_plate_nesting - 1
    guide_tr = poutine.trace(_vectorized(guide, num_particles, dim)).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(_vectorized(model, num_particles, dim), trace=guide_tr)).get_trace(
        *args, **kwargs
    )
    key = "log_prob" if scaled else "unscaled_log_prob"
    obs: Tensor | float = 0.0
    latent: Tensor | float = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr.compute_log_prob()
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site[key]
            lp = lp.reshape(lp.shape[:1] + (-1,)).sum(-1, keepdim=True) if lp.dim() > 2 else lp  # defensive
            if sign > 0 and site["is_observed"]:
                obs = obs + lp
            else:
                latent = latent + sign * lp
    ref = torch.as_tensor(obs) if isinstance(obs, torch.Tensor) else torch.as_tensor(latent)
    shape = torch.broadcast_shapes(torch.as_tensor(obs).shape, torch.as_tensor(latent).shape)
    o = torch.as_tensor(obs, dtype=ref.dtype, device=ref.device).expand(shape)
    lt = torch.as_tensor(latent, dtype=ref.dtype, device=ref.device).expand(shape)
    return LogTerms(o, lt, guide_tr)


class LogWeightELBO(ELBO):
    """An estimator that is a function of the ``(K, B)`` log-weights; subclasses define :meth:`objective`.

    ``differentiable_loss`` returns ``-sum_b objective_b``; gradients flow through the
    reparameterized draws (the guide must be reparameterizable).
    """

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING, vectorize_particles=True)

    def objective(self, terms: LogTerms) -> Tensor:
        """Per-data-point objective of shape ``(B,)`` (higher is better)."""
        raise NotImplementedError

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        terms = log_terms(model, guide, args, kwargs, self.num_particles)
        return -self.objective(terms).sum()

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


def iwae_bound(log_weight: Tensor) -> Tensor:
    """log (1/K) sum_k w_k over dim 0: the importance-weighted bound L_K (Burda et al. 2015)."""
    return torch.logsumexp(log_weight, dim=0) - math.log(log_weight.shape[0])


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


@register("elbo", "trace")
def trace(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's Trace_ELBO: Monte Carlo ELBO, reparameterized gradients, particles vectorized."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


@register("elbo", "meanfield")
def meanfield(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's TraceMeanField_ELBO: analytic KL(q||p) where it exists, Monte Carlo otherwise (warned once)."""
    from .divergences import MeanField_ELBO  # a TraceMeanField_ELBO that warns when it falls back

    return MeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


@register("elbo", "iwae")
def iwae(*, num_particles: PositiveInt = 5) -> ELBO:
    """Importance-weighted bound L_K (Burda et al. 2015) = Renyi alpha=0, K vectorized particles."""
    return IWAE_ELBO(num_particles)


def _alpha_not_one(p: dict[str, Any]) -> None:
    if p["alpha"] == 1.0:
        raise SpecError("alpha: 1 is the plain ELBO, not allowed here; use elbo.kind: trace (or alpha != 1)")


@register("elbo", "renyi", check=_alpha_not_one)
def renyi(*, alpha: float = 0.5, num_particles: PositiveInt = 5) -> ELBO:
    """Renyi divergence bound (Li & Turner 2016) for any alpha != 1 (alpha=0: IWAE; alpha->1: ELBO)."""
    _alpha_not_one({"alpha": alpha})
    return Renyi_ELBO(alpha, num_particles)
