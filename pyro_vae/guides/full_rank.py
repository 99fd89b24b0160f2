"""Full-covariance Gaussian posterior, parametrized by its inverse Cholesky factor.

q(z|x) is the linear-Gaussian autoregression ``z_i = mu_i + sum_{j<i} B_ij (z_j - mu_j) + s_i eps_i``
(``eps ~ N(0, I)``): ``N(mu, L L^T)`` with ``L = (I - B)^-1 diag(s)``, any covariance (every
lower-triangular ``L`` with a positive diagonal has exactly one such ``(B, s)``). The encoder outputs
``mu``, ``s`` (softplus + ``min_scale``) and the strictly lower ``B``.

Why not ``L`` itself: ``log q(z) = -|L^-1 (z - mu)|^2 / 2 - sum log L_ii`` then needs a triangular
solve, and with a weak KL weight (a warm-up starting at 0) training drives the diagonal of ``L`` small
while its off-diagonals stay O(1): ``L`` reaches condition numbers of 1e11 to 1e19 within the first
epoch of MNIST and ``L^-1 (z - mu)`` overflows float32 at the guide's own draws. Here
``L^-1 = diag(s)^-1 (I - B)`` is known in closed form, so ``log q(z)`` is a matrix product and an
elementwise division for every ``z`` (and so is its gradient in ``z``, ``-L^-T L^-1 (z - mu)``); a
narrow posterior (small ``s``) is no harder to score than in the diagonal family. The triangular solve
is left to sampling and to ``scale_tril``, where a large ``(I - B)^-1`` means a wide posterior,
which the likelihood and the KL term penalise.
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .. import _internals
from .._typing import NonNegativeFloat, Tensor
from ..estimators import divergences  # noqa: F401  (registers the closed-form KL to a diagonal prior)
from ..models.nets import Encoder
from ..registry import register
from .base import AmortizedGuide


def autoregressive_scale_tril(cond_scale: Tensor, coupling: Tensor) -> Tensor:
    """``L = (I - B)^-1 diag(s)``: ``coupling`` ``B`` (..., d, d) strictly lower, ``cond_scale`` ``s`` (..., d) > 0."""
    unit = torch.eye(cond_scale.shape[-1], dtype=cond_scale.dtype, device=cond_scale.device) - coupling
    return torch.linalg.solve_triangular(unit, torch.diag_embed(cond_scale), upper=False, unitriangular=True)


class AutoregressiveMultivariateNormal(dist.MultivariateNormal):
    """``N(loc, L L^T)``, ``L = (I - B)^-1 diag(s)``, scored through ``L^-1 = diag(s)^-1 (I - B)`` (no solve).

    A :class:`~pyro.distributions.MultivariateNormal` in every other respect (``scale_tril``, ``rsample``
    ``= loc + L eps``, ``covariance_matrix``, ``variance``, the closed-form KLs): only ``log_prob``,
    ``entropy`` and ``precision_matrix`` use the factors ``(s, B)`` directly.
    """

    def __init__(self, loc: Tensor, cond_scale: Tensor, coupling: Tensor, validate_args: bool | None = None) -> None:
        self.cond_scale = cond_scale  # s: the standard deviation of z_i given z_<i
        self.coupling = coupling  # B: the regression of z_i on z_<i (strictly lower)
        super().__init__(loc, scale_tril=autoregressive_scale_tril(cond_scale, coupling), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> AutoregressiveMultivariateNormal:
        new = _internals.checked_instance(self, AutoregressiveMultivariateNormal, _instance)
        new.cond_scale, new.coupling = self.cond_scale, self.coupling  # broadcast in log_prob
        return super().expand(batch_shape, _instance=new)  # type: ignore[no-any-return]

    def whiten(self, value: Tensor) -> Tensor:
        """``L^-1 (value - loc) = (I - B)(value - loc) / s`` (``eps`` for ``value = loc + L eps``)."""
        diff = value - self.loc
        resid = diff - (self.coupling @ diff.unsqueeze(-1)).squeeze(-1)
        return resid / self.cond_scale

    def log_prob(self, value: Tensor) -> Tensor:
        _internals.validate_sample(self, value)
        eps = self.whiten(value)
        d = self.event_shape[0]
        log_det = self.cond_scale.log().sum(-1)  # log det L = sum log s
        return -0.5 * eps.pow(2).sum(-1) - log_det - d * 0.5 * math.log(2 * math.pi)

    def entropy(self) -> Tensor:
        d = self.event_shape[0]
        h = 0.5 * d * (1.0 + math.log(2 * math.pi)) + self.cond_scale.log().sum(-1)
        return h.expand(self.batch_shape)

    @property
    def precision_matrix(self) -> Tensor:  # type: ignore[override]
        """``(I - B)^T diag(s)^-2 (I - B)``."""
        eye = torch.eye(self.event_shape[0], dtype=self.loc.dtype, device=self.loc.device)
        w = (eye - self.coupling) / self.cond_scale.unsqueeze(-1)  # L^-1
        p = w.transpose(-1, -2) @ w
        return p.expand(self.batch_shape + self.event_shape + self.event_shape)


@register("guide", "full_rank", context=("encoder", "latent_dim"))
class FullRankGuide(AmortizedGuide):
    """N(mu(x), L(x) L(x)^T) with L = (I - B(x))^-1 diag(s(x)): z_i regressed on z_<i with residual scale s_i.

    ``raw_diag`` gives ``s`` (softplus + ``min_scale``, the diagonal of ``L``), ``off_diag`` the strictly
    lower ``B``; reparameterized, any covariance. KL to a diagonal Gaussian prior is closed-form
    (``pyro_vae.estimators.divergences``), so ``meanfield`` applies.

    Checkpoints from before this parametrization (``off_diag`` gave ``L`` itself) are refused on load.
    """

    _version = 2  # 1: off_diag held the off-diagonal of L (unstable log_prob); 2: the regression B

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

    def factors(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(s, B)`` for encoder features ``h``: residual scales ``(..., d)`` and strictly lower ``(..., d, d)``."""
        d = self.latent_dim
        cond_scale = F.softplus(self.raw_diag(h)) + self.min_scale
        coupling = h.new_zeros(*h.shape[:-1], d, d)
        coupling[..., self.rows, self.cols] = self.off_diag(h)
        return cond_scale, coupling

    def scale_tril(self, h: Tensor) -> Tensor:
        return autoregressive_scale_tril(*self.factors(h))

    def head(self, h: Tensor) -> dist.Distribution:
        return AutoregressiveMultivariateNormal(self.loc(h), *self.factors(h))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:  # fmt: skip
        version = local_metadata.get("version")
        if version is not None and version < 2 and any(k.startswith(prefix) for k in state_dict):
            error_msgs.append(
                f"{prefix or 'guide'}: a full_rank guide saved before its parametrization changed to "
                "L = (I - B)^-1 diag(s) (off_diag held L's off-diagonal); its weights would mean another "
                "posterior: retrain it"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)  # fmt: skip
