"""Low-rank-plus-diagonal Gaussian posterior: Sigma = W W^T + D with W of rank r."""

from __future__ import annotations

import pyro.distributions as dist
from torch import nn
from torch.nn import functional as F

from .._typing import NonNegativeFloat, PositiveInt, Tensor
from ..estimators import divergences  # noqa: F401  (registers the closed-form KL to a diagonal prior)
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide


@register("guide", "low_rank", context=("encoder", "latent_dim"))
class LowRankGuide(AmortizedGuide):
    """N(mu(x), W(x) W(x)^T + diag d(x)) with W of shape (latent_dim, rank): O(k r) parameters, not O(k^2).

    Exact for posteriors whose covariance is a rank-r update of a diagonal; analytic KL to a diagonal prior.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        latent_dim: int,
        rank: PositiveInt = 2,  # r: columns of the covariance factor W
        min_scale: NonNegativeFloat = 1e-5,  # floor on the diagonal standard deviations
    ) -> None:
        super().__init__(encoder, latent_dim)
        self.rank = rank
        self.min_scale = min_scale
        h = encoder.out_features
        self.loc = nn.Linear(h, latent_dim)
        self.raw_diag = nn.Linear(h, latent_dim)
        self.factor = nn.Linear(h, latent_dim * rank)
        nn.init.normal_(self.factor.weight, std=1e-3)  # start near diagonal
        nn.init.zeros_(self.factor.bias)

    def head(self, h: Tensor) -> dist.Distribution:
        std = F.softplus(self.raw_diag(h)) + self.min_scale
        w = self.factor(h).reshape(*h.shape[:-1], self.latent_dim, self.rank)
        return dist.LowRankMultivariateNormal(self.loc(h), cov_factor=w, cov_diag=std**2)
