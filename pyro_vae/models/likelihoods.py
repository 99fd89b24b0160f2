"""Likelihoods p(x|z): map decoder outputs ``(*lead, num_params, *event_shape)`` to a distribution.

Each likelihood says which data it can score (:meth:`Likelihood.check_data`) so that bad data is
rejected before training with a message that names the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .._typing import PositiveFloat, Shape, Tensor
from ..errors import DataError
from ..registry import register


class Likelihood(nn.Module):
    """Base: ``forward(params)`` returns a distribution whose event shape is the data's."""

    num_params: int = 1  # decoder outputs per data element

    def __init__(self, event_shape: Shape) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, params: Tensor) -> dist.Distribution:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z], used for reconstructions and samples in figures."""
        return self(params).mean

    def check_data(self, x: Tensor, where: str = "data") -> None:
        """Raise :class:`DataError` if this likelihood cannot score ``x``."""

    def normalized_on(self, x: Tensor) -> bool:
        """True if ``log_prob`` on ``x`` is a normalized log-density or log-mass, so that bounds built
        from it bound log p(x) (see :func:`pyro_vae.evaluation.measure_of`)."""
        return True

    def _event(self, d: dist.TorchDistribution) -> dist.TorchDistribution:
        return d.to_event(len(self.event_shape))

    def param(self, params: Tensor, i: int = 0) -> Tensor:
        """The ``i``-th parameter map, shape ``(*lead, *event_shape)``."""
        return params.select(-len(self.event_shape) - 1, i)

    _param = param

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) summed over the event, shape ``(*lead)``, for decoder outputs ``params``."""
        return self(params).log_prob(x)  # type: ignore[no-any-return]


def check_unit_interval(
    name: str,
    x: Tensor,
    where: str,
    needs: str = "needs values in [0, 1]",
    fix: str = "rescale the data or use likelihood kind: gaussian",
) -> None:
    """Raise :class:`DataError` naming the likelihood, the data's range and the fix if ``x`` leaves [0, 1]."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"model.likelihood: {name!r} {needs} but {where} spans [{lo:g}, {hi:g}]; {fix}")


@register("likelihood", "bernoulli", context=("event_shape",))
class Bernoulli(Likelihood):
    """Bernoulli with logits; on greyscale data in [0, 1] a cross-entropy (Loaiza-Ganem & Cunningham 2019)."""

    def __init__(self, *, event_shape: Shape) -> None:
        super().__init__(event_shape)

    def forward(self, params: Tensor) -> dist.Distribution:
        # validate_args=False: greyscale targets in [0, 1] are scored by the cross-entropy formula.
        return self._event(dist.Bernoulli(logits=self._param(params), validate_args=False))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(self._param(params))

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """The negative binary cross-entropy with logits, without a ``Distribution`` object."""
        if type(self).forward is not Bernoulli.forward:  # a subclass with another distribution
            return super().log_prob(params, x)
        logits = self.param(params)
        ll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        n_event = len(self.event_shape)
        return -ll.sum(dim=tuple(range(-n_event, 0))) if n_event else -ll

    def check_data(self, x: Tensor, where: str = "data") -> None:
        check_unit_interval("bernoulli", x, where)

    def normalized_on(self, x: Tensor) -> bool:
        """A probability mass only on {0, 1}: greyscale values give a cross-entropy, not log p(x)."""
        return bool(((x == 0) | (x == 1)).all())


@register("likelihood", "continuous_bernoulli", context=("event_shape",))
class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalized density on [0, 1]."""

    def __init__(self, *, event_shape: Shape) -> None:
        super().__init__(event_shape)

    def forward(self, params: Tensor) -> dist.Distribution:
        logits = self._param(params).clamp(-15, 15)
        return self._event(dist.ContinuousBernoulli(logits=logits, validate_args=False))

    def check_data(self, x: Tensor, where: str = "data") -> None:
        check_unit_interval("continuous_bernoulli", x, where)


class LocScale(Likelihood):
    """Base of location-scale likelihoods: the decoder gives the location; the scale is fixed, one
    learned number (``learned``) or one per data element (``learned_per_feature``)."""

    family: Callable[[Tensor, Tensor], dist.TorchDistribution] = dist.Normal  # family(loc, scale)
    fixed_scale: Tensor  # a buffer, when the scale is fixed

    def __init__(
        self,
        *,
        event_shape: Shape,
        scale: PositiveFloat | Literal["learned", "learned_per_feature"] = "learned",
        min_scale: PositiveFloat = 1e-3,  # floor on the scale: keeps a learned scale from collapsing
    ) -> None:
        super().__init__(event_shape)
        self.min_scale = min_scale
        self.learned = isinstance(scale, str)
        if scale == "learned":
            self.raw_scale = nn.Parameter(torch.zeros(()))
        elif scale == "learned_per_feature":
            self.raw_scale = nn.Parameter(torch.zeros(self.event_shape))
        else:
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))

    def scale(self) -> Tensor:
        if self.learned:
            return F.softplus(self.raw_scale + math.log(math.e - 1)) + self.min_scale  # starts at 1 + min
        return self.fixed_scale

    def forward(self, params: Tensor) -> dist.Distribution:
        loc = self._param(params)
        return self._event(self.family(loc, self.scale().expand(loc.shape[-len(self.event_shape) :])))

    def mean(self, params: Tensor) -> Tensor:
        return self._param(params)


@register("likelihood", "gaussian", context=("event_shape",))
class Gaussian(LocScale):
    """Normal(decoder mean, sigma): sigma fixed, ``learned`` (one shared) or ``learned_per_feature``."""

    family = dist.Normal

    def sigma(self) -> Tensor:
        return self.scale()


@register("likelihood", "laplace", context=("event_shape",))
class Laplace(LocScale):
    """Laplace(decoder location, b): an L1-type reconstruction; b fixed, ``learned`` or ``learned_per_feature``."""

    family = dist.Laplace

    def b(self) -> Tensor:
        return self.scale()
