"""A deterministic code: the plain autoencoder baseline (MAP-style)."""

from __future__ import annotations

import pyro.distributions as dist
from torch import nn

from .._typing import Tensor
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide


@register("guide", "delta", context=("encoder", "latent_dim"))
class DeltaGuide(AmortizedGuide):
    """q(z|x) = delta(z - f(x)): a plain (deterministic) autoencoder, trained MAP-style.

    Every estimator then maximizes log p(x|f(x)) + log p(f(x)) (a reconstruction plus a prior penalty
    on the code). It is not a bound on log p(x): a point mass has KL = +inf to any density, so the
    "ELBO" reported for this guide is log p(x, f(x)), a baseline for reconstruction only.
    """

    is_point_mass = True  # no density: a VampPrior cannot be built from it

    def __init__(self, *, encoder: Encoder, latent_dim: int) -> None:
        super().__init__(encoder, latent_dim)
        self.loc = nn.Linear(encoder.out_features, latent_dim)

    def head(self, h: Tensor) -> dist.Distribution:
        return dist.Delta(self.loc(h), event_dim=1)
