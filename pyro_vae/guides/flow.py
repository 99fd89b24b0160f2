"""Amortized normalizing-flow posterior (Kingma et al. 2016, IAF)."""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
from torch import nn
from torch.nn import functional as F

from .._typing import NonNegativeFloat, PositiveInt, Tensor
from ..errors import SpecError
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide

_CONDITIONAL = {
    "affine_autoregressive": lambda d, c, hidden: T.conditional_affine_autoregressive(d, c, hidden_dims=hidden),
    "spline_autoregressive": lambda d, c, hidden: T.conditional_spline_autoregressive(d, c, hidden_dims=hidden),
}


@register("guide", "flow", context=("encoder", "latent_dim"))
class FlowGuide(AmortizedGuide):
    """Diagonal Normal from the encoder, then K inverse-autoregressive transforms conditioned on its features.

    z = f_K(... f_1(eps; h) ...; h) with eps ~ N(mu(x), sigma(x)^2) and h the encoder features (the
    context of Kingma et al.'s IAF). Sampling and scoring one's own draws cost one pass per layer
    (Pyro caches the inverse); there is no closed-form mean (``VAE.posterior_mean`` averages draws)
    and no closed-form KL (``meanfield`` uses Monte Carlo for the z term).
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        latent_dim: int,
        num_flows: PositiveInt = 2,  # K transforms
        transform: Literal["affine_autoregressive", "spline_autoregressive"] = "affine_autoregressive",
        hidden: list[PositiveInt] = (64,),  # type: ignore[assignment]  # widths of each transform's network
        min_scale: NonNegativeFloat = 1e-5,
    ) -> None:
        super().__init__(encoder, latent_dim)
        if latent_dim < 2:
            raise SpecError(f"guide.kind: 'flow' needs latent_dim >= 2, got {latent_dim}; use diagonal_normal")
        self.min_scale = min_scale
        h = encoder.out_features
        self.loc = nn.Linear(h, latent_dim)
        self.raw_scale = nn.Linear(h, latent_dim)
        self.flows = nn.ModuleList([_CONDITIONAL[transform](latent_dim, h, list(hidden)) for _ in range(num_flows)])

    def head(self, h: Tensor) -> dist.Distribution:
        base = dist.Normal(self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(h) for f in self.flows])  # type: ignore[operator]
