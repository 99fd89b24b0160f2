"""Priors p(z): modules whose ``forward()`` returns a distribution over ``z`` with event dim 1."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ..registry import register


@register("prior", "standard_normal", context=("latent_dim",))
class StandardNormal(nn.Module):
    """N(0, I): the prior of the seeds and of Kingma & Welling (2014)."""

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
