"""Gaussian posterior families."""

from __future__ import annotations

import pyro.distributions as dist
from torch import nn
from torch.nn import functional as F

from .._typing import NonNegativeFloat, Tensor
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide


@register("guide", "diagonal_normal", context=("encoder", "latent_dim"))
class DiagonalNormalGuide(AmortizedGuide):
    """N(mu(x), diag sigma(x)^2): the mean-field Gaussian of Kingma & Welling; reparameterized."""

    def __init__(self, *, encoder: Encoder, latent_dim: int, min_scale: NonNegativeFloat = 1e-5) -> None:
        super().__init__(encoder, latent_dim)
        self.min_scale = min_scale
        self.loc = nn.Linear(encoder.out_features, latent_dim)
        self.raw_scale = nn.Linear(encoder.out_features, latent_dim)

    def diagonal_normal(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        if type(self).head is not DiagonalNormalGuide.head:  # a subclass with another family
            return None
        h = self.encoder(x, cond)
        return self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale

    def head(self, h: Tensor) -> dist.Distribution:
        scale = F.softplus(self.raw_scale(h)) + self.min_scale
        return dist.Normal(self.loc(h), scale).to_event(1)
