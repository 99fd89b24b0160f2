"""The amortized guide protocol shared by every posterior family."""

from __future__ import annotations

from contextlib import nullcontext
from typing import cast

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import nn

from .._typing import Tensor
from ..models.nets import Encoder


class AmortizedGuide(nn.Module):
    """q(z|x): ``encoder`` features, then :meth:`head` maps them to a distribution (event dim 1).

    A new posterior family overrides only :meth:`head`. ``kl_weight`` (beta) scales the ``z`` site,
    and so ``log q(z|x)`` inside every estimator, exactly as the model scales ``log p(z)``.
    """

    def __init__(self, encoder: Encoder, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.kl_weight = 1.0

    def head(self, h: Tensor) -> dist.Distribution:
        raise NotImplementedError

    @property
    def supports_direct(self) -> bool:
        """True while :meth:`forward` is this class's program (``z ~ dist(x, cond)``, scaled by ``kl_weight``):
        estimators may then draw and score z without tracing (:mod:`pyro_vae.estimators.fast`)."""
        return type(self).forward is AmortizedGuide.forward

    def diagonal_normal(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """``(loc, scale)`` of q(z|x) when it is a diagonal Normal, computed without a ``Distribution``
        object (the direct forms' hot path); None for other families."""
        return None

    def dist(self, x: Tensor, cond: Tensor | None = None) -> dist.Distribution:
        """q(z|x) for a batch ``x``: batch shape ``(B,)``, event shape ``(latent_dim,)``."""
        return self.head(self.encoder(x, cond))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        with pyro.plate("data", x.shape[0], dim=-1):
            scale = poutine.scale(scale=self.kl_weight) if self.kl_weight != 1.0 else nullcontext()
            with scale:
                q = cast(dist.TorchDistribution, self.dist(x, cond))  # every head returns a Pyro TorchDistribution
                return pyro.sample("z", q)
