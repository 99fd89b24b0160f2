"""Free bits (Kingma et al. 2016, "Improved variational inference with inverse autoregressive flow",
appendix C): the ELBO with the KL of each latent dimension floored at ``lam`` nats,

    L_fb = E_q[log p(x|z)] - beta * sum_j max(lam, KL_j),   KL_j = batch mean of KL(q(z_j|x) || p(z_j)),

so no gradient pushes a dimension's KL below ``lam`` (against posterior collapse / inactive units).

Why an estimator (``elbo.kind: free_bits``) and not a model/guide switch like beta: the floor acts on
per-dimension KL terms averaged over the batch, which no single particle's log-weight contains, and
``max`` does not distribute over the model and guide sites. So the estimator reads the guide's
distribution from the trace and the model's prior from ``model.prior_dist(cond)`` and combines them
itself. The KL_j are analytic when q and p are factorized Normals, else Monte Carlo per dimension
(both must factorize over dimensions: diagonal guides with the standard-normal, learned-normal,
class-mean or conditional priors; not mixtures, flows, full-rank guides).

It is a training objective, not a bound: evaluation reports the plain ELBO and L_K. ``lam = 0`` gives
exactly the ``trace`` ELBO with the KL term of ``meanfield`` (analytic where available).
"""

from __future__ import annotations

from typing import Any

from pyro.distributions import Independent, Normal
from pyro.infer import ELBO
from torch.distributions import kl_divergence

from .._typing import NonNegativeFloat, PositiveInt, Tensor
from ..errors import SpecError
from ..registry import register
from .base import MAX_PLATE_NESTING, DifferentiableLossMixin, DirectForm, log_terms


def _factors(d: Any) -> Any:
    return d.base_dist if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 else None


def kl_per_dimension(q: Any, p: Any, z: Tensor) -> Tensor:
    """KL(q(z_j|x) || p(z_j)) per dimension, shape ``z.shape``: analytic for Normal factors, else the
    one-sample Monte Carlo log q_j(z_j) - log p_j(z_j) at the draws ``z``."""
    qb, pb = _factors(q), _factors(p)
    if qb is None or pb is None:
        raise SpecError(
            "elbo.kind: free_bits needs a guide and prior that factorize over latent dimensions "
            f"(got {type(q).__name__} and {type(p).__name__}); use guide diagonal_normal with a Normal prior"
        )
    if isinstance(qb, Normal) and isinstance(pb, Normal):
        return kl_divergence(qb, pb).expand(z.shape)
    return qb.log_prob(z) - pb.log_prob(z)


class FreeBitsELBO(DirectForm, DifferentiableLossMixin, ELBO):
    """E_q[log p(x|z)] - beta * sum_j max(lam, KL_j), K vectorized particles; loss summed over the batch.

    Direct form: for a diagonal Normal guide and a diagonal Normal (or standard) prior, the analytic
    KL_j from ``(loc, scale)``; other families take the Pyro path.
    """

    def __init__(self, lam: float, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING, vectorize_particles=True)
        self.lam = lam

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        terms = log_terms(model, guide, args, kwargs, self.num_particles)
        site = terms.guide_trace.nodes["z"]
        cond = args[1] if len(args) > 1 else kwargs.get("cond")
        kl = kl_per_dimension(site["fn"], model.prior_dist(cond), site["value"])  # (K, B, D)
        per_dim = kl.reshape(-1, kl.shape[-1]).mean(0)  # batch (and particle) mean KL_j
        batch = terms.obs.shape[-1]
        beta = float(getattr(model, "kl_weight", 1.0))
        return -(terms.obs.mean(0).sum() - beta * batch * per_dim.clamp_min(self.lam).sum())

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        kl = q.kl_per_dimension()  # (B, D), before any draw: a fallback leaves the random stream untouched
        if kl is None:
            return None
        obs = q.draw(self.num_particles).obs()  # (K, B)
        beta = q.beta_p
        return -(obs.mean(0).sum() - beta * obs.shape[-1] * kl.mean(0).clamp_min(self.lam).sum())

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:  # abstract in ELBO; unused
        raise NotImplementedError


@register("elbo", "free_bits")
def free_bits(*, lam: NonNegativeFloat = 0.5, num_particles: PositiveInt = 1) -> ELBO:
    """Free bits (Kingma et al. 2016): per-dimension KL floored at ``lam`` nats (batch mean); a training objective."""
    return FreeBitsELBO(lam, num_particles)


__all__ = ["FreeBitsELBO", "free_bits", "kl_per_dimension"]
