"""Likelihood-ratio (REINFORCE, score-function) gradients of the ELBO (``elbo.kind: score_function``).

No direct form: the gradient is Pyro's ``TraceGraph_ELBO`` surrogate, Rao-Blackwellized over the
dependency graph of the traces, which only the traces provide.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import ELBO, TraceGraph_ELBO
from pyro.ops.provenance import detach_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .. import _internals
from .._typing import Interval, PositiveInt, Tensor
from ..registry import register
from .base import (
    MAX_PLATE_NESTING,
    DifferentiableLossMixin,
    _latent_sites,
    needs_density,
    num_points,
    refuse_point_mass,
)


class _NoRsample(TorchDistribution):
    """``base`` drawn without a pathwise gradient (``has_rsample = False``), surviving ``expand``.

    ``base.has_rsample_(False)`` would not do: ``Independent``/``TransformedDistribution`` expose it
    as a read-only property and plates' ``expand`` drops the flag.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    has_rsample = False

    def __init__(self, base: Any) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return self.base.support

    def expand(self, batch_shape: Any, _instance: Any = None) -> _NoRsample:
        return _NoRsample(self.base.expand(batch_shape))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        return self.base.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)


class _DetachedSampling(Messenger):
    """Make every latent sample site of a program non-reparameterized (score-function gradients)."""

    def _pyro_sample(self, msg: Any) -> None:
        if not (msg["is_observed"] or site_is_subsample(msg) or isinstance(msg["fn"], _NoRsample)):
            msg["fn"] = _NoRsample(msg["fn"])


class ScoreFunction_ELBO(DifferentiableLossMixin, TraceGraph_ELBO):
    """Likelihood-ratio (REINFORCE) gradients of the ELBO via Pyro's ``TraceGraph_ELBO``.

    The guide is run with every latent site made non-reparameterized, so the guide gets
    grad log q(z|x) * (downstream cost - baseline), Rao-Blackwellized over the data plate; the model
    gets the usual pathwise gradient. ``baseline=True`` subtracts a decaying average (``baseline_beta``)
    of the per-point log-weight from every point's downstream cost; the average is kept in this
    object rather than Pyro's global param store (whose entry has a fixed shape, which breaks when
    the last batch is smaller). Adds the ``differentiable_loss`` that ``TraceGraph_ELBO`` lacks
    (value: the ELBO; gradient: the surrogate) so it works as an ``elbo(model, guide)`` module.
    beta (the z site's scale) weights log p(z) - log q(z|x) in the downstream cost; Pyro leaves the
    score function itself unscaled, so the gradient is unbiased for the beta-weighted ELBO (tested
    against the reparameterized gradient's mean).
    """

    def __init__(self, num_particles: int = 1, baseline: bool = True, baseline_beta: float = 0.9) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING, vectorize_particles=True)
        self.baseline = baseline
        self.baseline_beta = baseline_beta
        self.average: float | None = None  # decaying average of the per-point log-weight
        self._score: Tensor | float = 0.0  # sum of log q(z|x) over the last draws (the score function)

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        self._score = 0.0
        for _, site in _latent_sites(guide_trace):
            score = site["score_parts"].score_function  # log q(z|x), unscaled; 0 for reparameterized sites
            if isinstance(score, torch.Tensor):
                self._score = self._score + detach_provenance(score).sum()
        return model_trace, guide_trace

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        refuse_point_mass(
            guide, "score_function", "its score is 0 and the guide would get no gradient; use elbo.kind: trace"
        )
        elbo, surrogate = _internals.tracegraph_loss_and_surrogate(
            self, model, _DetachedSampling()(guide), args, kwargs
        )
        if self.baseline:
            if self.average is not None:  # surrogate ELBO -= b * score: the cost minus b, per point
                surrogate = surrogate + self.average * self._score / self.num_particles
            mean = float(elbo.detach()) / max(num_points(args), 1)
            b = self.baseline_beta
            self.average = mean if self.average is None else b * self.average + (1 - b) * mean
        self._score = 0.0
        loss = -elbo
        return surrogate + (loss - surrogate).detach()


@register("elbo", "score_function")
@needs_density
def score_function(
    *,
    num_particles: PositiveInt = 1,
    baseline: bool = True,
    baseline_beta: Annotated[float, Interval(0, 1, high_open=True)] = 0.9,
) -> ELBO:
    """Likelihood-ratio ELBO gradients (TraceGraph_ELBO), optional decaying-average baseline."""
    return ScoreFunction_ELBO(num_particles, baseline, baseline_beta)


__all__ = ["ScoreFunction_ELBO", "score_function"]
