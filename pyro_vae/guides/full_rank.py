"""Full-covariance Gaussian posterior: the encoder outputs a mean and a Cholesky factor."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .._typing import NonNegativeFloat, Tensor
from ..estimators import divergences  # noqa: F401  (registers the closed-form KL to a diagonal prior)
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide


@register("guide", "full_rank", context=("encoder", "latent_dim"))
class FullRankGuide(AmortizedGuide):
    """N(mu(x), L(x) L(x)^T): lower-triangular L with a softplus diagonal; reparameterized.

    KL to a diagonal Gaussian prior is closed-form (``pyro_vae.estimators.divergences``), so ``meanfield`` applies.
    """

    rows: Tensor  # (row, col) of the strictly lower triangle
    cols: Tensor

    def __init__(self, *, encoder: Encoder, latent_dim: int, min_scale: NonNegativeFloat = 1e-5) -> None:
        super().__init__(encoder, latent_dim)
        self.min_scale = min_scale
        h = encoder.out_features
        self.loc = nn.Linear(h, latent_dim)
        self.raw_diag = nn.Linear(h, latent_dim)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.off_diag = nn.Linear(h, len(rows))
        nn.init.zeros_(self.off_diag.weight)  # start diagonal: the same q as diagonal_normal
        nn.init.zeros_(self.off_diag.bias)

    def scale_tril(self, h: Tensor) -> Tensor:
        d = self.latent_dim
        diag = F.softplus(self.raw_diag(h)) + self.min_scale
        tril = h.new_zeros(*h.shape[:-1], d, d)
        tril[..., self.rows, self.cols] = self.off_diag(h)
        return tril + torch.diag_embed(diag)

    def head(self, h: Tensor) -> dist.Distribution:
        return dist.MultivariateNormal(self.loc(h), scale_tril=self.scale_tril(h))
