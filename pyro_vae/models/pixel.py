"""Likelihoods for 8-bit images: values k/255, k = 0..255 (the scaling every image loader here applies).

- ``categorical``: a 256-way softmax per pixel (a cross-entropy over the 256 levels: van den
  Oord et al. 2016's PixelRNN output). The decoder emits 256 logits per data element.
- ``discretized_logistic``: the logistic density integrated over each pixel's bin of width 1/255, with the
  edge bins taking the tails (Kingma et al. 2016; Salimans et al. 2017, PixelCNN++). Two outputs per
  element: location and log-scale.

Both are normalized probability mass functions over the 256 levels, so their bounds are comparable
(in nats) with each other and, after adding ``D log 255``, with continuous densities on [0, 1].
Neither can score data that are not 8-bit levels: :meth:`check_data` rejects it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch.nn import functional as F

from .._typing import Shape, Tensor
from ..errors import DataError
from ..registry import register
from .likelihoods import Likelihood, check_unit_interval

LEVELS = 256
_STEP = 1.0 / (LEVELS - 1)  # spacing of the levels in [0, 1]


def to_levels(x: Tensor) -> Tensor:
    """Integer levels 0..255 of values k/255."""
    return (x * (LEVELS - 1)).round().long().clamp(0, LEVELS - 1)


def check_8bit(name: str, x: Tensor, where: str) -> None:
    """Raise :class:`DataError` unless ``x`` holds values k/255 in [0, 1]."""
    check_unit_interval(
        name, x, where, needs="scores 8-bit images scaled to [0, 1],", fix="use likelihood kind: gaussian or laplace"
    )
    off = (x * (LEVELS - 1) - (x * (LEVELS - 1)).round()).abs()
    if float(off.max()) > 1e-3:
        bad = float(x.flatten()[int(off.flatten().argmax())])
        raise DataError(
            f"model.likelihood: {name!r} scores 8-bit images (values k/255), but {where} holds {bad:g}, "
            "which is not one of the 256 levels; use data.binarize: none with raw 8-bit data, or likelihood "
            "kind: gaussian / continuous_bernoulli for other values"
        )


class QuantizedCategorical(TorchDistribution):
    """A categorical over the 256 levels, with values expressed as k/255 (batch shape = logits.shape[:-1])."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor, validate_args: Any = None) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> QuantizedCategorical:
        return QuantizedCategorical(self.logits.expand(*batch_shape, LEVELS))

    def log_prob(self, value: Tensor) -> Tensor:
        k = to_levels(value)
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        return self.logits.expand(*shape, LEVELS).gather(-1, k.expand(shape).unsqueeze(-1)).squeeze(-1)

    @property
    def mean(self) -> Tensor:
        levels = torch.arange(LEVELS, dtype=self.logits.dtype, device=self.logits.device) * _STEP
        return (self.logits.exp() * levels).sum(-1)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return k.to(self.logits.dtype) * _STEP


class DiscretizedLogistic(TorchDistribution):
    """Logistic(loc, scale) integrated over bins of width 1/255 around each level; edge bins take the tails."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: Any = None) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> DiscretizedLogistic:
        return DiscretizedLogistic(self.loc.expand(batch_shape), self.log_scale.expand(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        x = to_levels(value).to(self.loc.dtype) * _STEP  # snap to the level grid
        inv_s = torch.exp(-self.log_scale)
        centered = x - self.loc
        plus = inv_s * (centered + _STEP / 2)
        minus = inv_s * (centered - _STEP / 2)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the bin of level 0 takes (-inf, x + h]
        log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): level 255 takes [x - h, inf)
        log_mid = _log_sigmoid_diff(plus, minus)
        return torch.where(x < _STEP / 2, log_cdf_plus, torch.where(x > 1 - _STEP / 2, log_sf_minus, log_mid))

    @property
    def mean(self) -> Tensor:
        return self.loc.clamp(0.0, 1.0)  # the mode of the binned logistic; figures only

    def sample(self, sample_shape: Any = ()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            y = self.loc + self.log_scale.exp() * (u.log() - (-u).log1p())
            return to_levels(y.clamp(0.0, 1.0)).to(self.loc.dtype) * _STEP


def _log_sigmoid_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, without cancellation.

    sigmoid(a) - sigmoid(b) = (e^a - e^b) / ((1 + e^a)(1 + e^b)) = e^a (1 - e^(b - a)) / ((1 + e^a)(1 + e^b)).
    """
    return a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)


@register("likelihood", "categorical", context=("event_shape",))
class Categorical256(Likelihood):
    """256-way softmax per pixel of an 8-bit image (PixelRNN's output, van den Oord et al. 2016); rejects non-8-bit data."""

    num_params = LEVELS

    def __init__(self, *, event_shape: Shape) -> None:
        super().__init__(event_shape)

    def forward(self, params: Tensor) -> dist.Distribution:
        logits = params.movedim(-len(self.event_shape) - 1, -1)  # (*lead, *event, 256)
        return self._event(QuantizedCategorical(logits))

    def check_data(self, x: Tensor, where: str = "data") -> None:
        check_8bit("categorical", x, where)


@register("likelihood", "discretized_logistic", context=("event_shape",))
class DiscretizedLogisticLikelihood(Likelihood):
    """Logistic binned to the 256 levels of 8-bit images (IAF / PixelCNN++); rejects non-8-bit data."""

    num_params = 2

    def __init__(self, *, event_shape: Shape, min_log_scale: float = -7.0) -> None:
        super().__init__(event_shape)
        self.min_log_scale = min_log_scale  # floor on log s: a bin is 1/255 ~ e^-5.5 wide

    def forward(self, params: Tensor) -> dist.Distribution:
        loc = self._param(params, 0)
        log_scale = self._param(params, 1).clamp(min=self.min_log_scale)
        return self._event(DiscretizedLogistic(loc, log_scale))

    def mean(self, params: Tensor) -> Tensor:
        return self._param(params, 0).clamp(0.0, 1.0)

    def check_data(self, x: Tensor, where: str = "data") -> None:
        check_8bit("discretized_logistic", x, where)


__all__ = [
    "Categorical256",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "QuantizedCategorical",
    "check_8bit",
]
