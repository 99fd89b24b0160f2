"""Priors p(z): :class:`Prior` modules whose ``forward()`` returns a distribution over ``z`` with event dim 1.

Every prior a spec names (``model.prior.kind``) is a :class:`Prior`, built-in or a plugin's. Conditional
priors p(z|y) of the CVAE (:mod:`pyro_vae.models.cvae`) declare ``conditional = True`` and take the
condition in ``forward(cond)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn import functional as F

from .._typing import PositiveFloat, PositiveInt, Shape, Tensor
from ..errors import SpecError
from ..estimators import fast
from ..registry import register


class Prior(nn.Module):
    r"""p(z) as a module: ``forward()`` returns a Pyro distribution over ``z`` with event dim 1.

    The event shape is ``(latent_dim,)``; the batch shape is ``()`` (one p(z) for every data point) or,
    for a conditional prior, the condition's batch ``(B,)``. Parameters are ordinary ``nn.Parameter``\ s
    (trained with the model, saved in its ``state_dict``). A subclass implements ``forward``; a
    conditional one sets :attr:`conditional` and implements ``forward(cond)`` with ``cond`` of shape
    ``(B, cond_dim)``. Callers use :meth:`dist`, which passes the condition exactly to those.
    """

    #: True: p(z|y), ``forward(cond)`` (CVAE priors); False: p(z), ``forward()``.
    conditional: ClassVar[bool] = False

    def dist(self, cond: Tensor | None = None) -> dist.Distribution:
        """p(z), or p(z|cond) for a conditional prior (an unconditional prior ignores ``cond``)."""
        if not self.conditional:
            return self()  # type: ignore[no-any-return]
        if cond is None:
            raise ValueError(f"{type(self).__name__} is a conditional prior p(z|y): it needs the condition")
        return self(cond)  # type: ignore[no-any-return]


@register("prior", "standard_normal", context=("latent_dim",))
class StandardNormal(Prior):
    """N(0, I): the prior of Kingma & Welling (2014)."""

    #: Declares p(z) = N(0, I) exactly: estimators may write its log-density out (pyro_vae.estimators.fast).
    is_standard_normal = True

    loc: Tensor
    scale: Tensor

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


def _inv_softplus_one() -> float:
    return math.log(math.e - 1.0)  # softplus(x + this) is 1 at x = 0


@register("prior", "learned_normal", context=("latent_dim",))
class LearnedNormal(Prior):
    """N(mu, diag sigma^2) with learned mean and scale (starts at N(0, I)); analytic KL with Gaussian guides."""

    def __init__(self, *, latent_dim: int, min_scale: PositiveFloat = 1e-3) -> None:
        super().__init__()
        self.min_scale = min_scale
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim))

    def scale(self) -> Tensor:
        return F.softplus(self.raw_scale + _inv_softplus_one()) + self.min_scale

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale()).to_event(1)


def diagonal_mixture_log_prob(value: Tensor, loc: Tensor, scale: Tensor, log_weights: Tensor) -> Tensor:
    """``log sum_k w_k N(value; loc_k, diag(scale_k^2))`` for ``loc``, ``scale`` ``(K, D)`` and normalized
    ``log_weights`` ``(K,)``; ``value`` ``(..., D)`` gives ``(...)``.

    The squared distances to all K means come from three products, ``z^2 . (1/s^2) - 2 z . (m/s^2) +
    m^2 . (1/s^2)``, instead of a ``(..., K, D)`` tensor of differences: one matrix product per call,
    which is what makes L_5000 of a 100-component prior cost about what N(0, I) does. The products run in
    float64, so the cancellation between the three terms (each up to ``D * (z/s)^2``) stays far below
    float32 rounding of the result; the value and its gradients are those of the direct formula.
    """
    d = value.shape[-1]
    z = value.reshape(-1, d).double()
    prec = scale.double().pow(-2)  # (K, D)
    m = loc.double()
    quad = z.pow(2) @ prec.T - 2.0 * (z @ (m * prec).T) + (m.pow(2) * prec).sum(-1)  # (N, K)
    log_norm = log_weights.double() - scale.double().log().sum(-1) - 0.5 * d * math.log(2 * math.pi)  # (K,)
    out = torch.logsumexp(log_norm - 0.5 * quad, dim=-1)
    return out.to(value.dtype).reshape(value.shape[:-1])


def _diagonal_components(components: Any) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` ``(K, D)`` of a batch-``(K,)`` ``Independent(Normal, 1)``, else None."""
    parts = fast.diag_normal(components)
    if parts is None:
        return None
    loc, scale = torch.broadcast_tensors(*parts)
    return (loc, scale) if loc.dim() == 2 else None


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` of diagonal Normals whose ``log_prob`` is :func:`diagonal_mixture_log_prob`
    (sampling, moments and shapes are ``MixtureSameFamily``'s)."""

    def log_prob(self, value: Tensor) -> Tensor:
        parts = _diagonal_components(self.component_distribution)
        if parts is None or value.shape[-1:] != parts[0].shape[-1:]:
            return super().log_prob(value)
        return diagonal_mixture_log_prob(value, *parts, self.mixture_distribution.logits)


@register("prior", "mixture", context=("latent_dim",))
class MixturePrior(Prior):
    """Gaussian mixture with K learned weights, means and diagonal scales (TFP's VAE example: K=100).

    No closed-form KL: ``meanfield`` uses Monte Carlo for the z term.
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        num_components: PositiveInt = 100,  # K; TFP's VAE example uses 100
        init_spread: PositiveFloat = 1.0,  # means start as N(0, init_spread^2) draws
        min_scale: PositiveFloat = 1e-3,
    ) -> None:
        super().__init__()
        self.min_scale = min_scale
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(init_spread * torch.randn(num_components, latent_dim))
        self.raw_scale = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.Distribution:
        scale = F.softplus(self.raw_scale + _inv_softplus_one()) + self.min_scale
        return DiagonalNormalMixture(dist.Categorical(logits=self.logits), dist.Normal(self.loc, scale).to_event(1))


class EqualMixture(TorchDistribution):
    """(1/K) sum_k q_k(z) for a batch-``(K,)`` distribution ``components`` with event shape ``(D,)``.

    Unlike ``MixtureSameFamily`` the components only need ``log_prob`` on an explicitly expanded
    value of shape ``(..., K, D)`` and ``rsample``/``sample``: any guide family (flows included) works.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, components: Any, batch_shape: Any = (), validate_args: Any = None) -> None:
        self.components = components
        self.num_components = components.batch_shape[-1]
        super().__init__(torch.Size(batch_shape), components.event_shape, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> EqualMixture:
        return EqualMixture(self.components, torch.Size(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        d = value.shape[-1]
        parts = _diagonal_components(self.components)
        if parts is not None:  # diagonal Gaussian components: three matrix products, no (..., K, D) tensor
            uniform = parts[0].new_full((self.num_components,), -math.log(self.num_components))
            return diagonal_mixture_log_prob(value, *parts, uniform)
        v = value.unsqueeze(-2).expand(*value.shape[:-1], self.num_components, d)  # (..., K, D)
        lp = self.components.log_prob(v)  # (..., K)
        return torch.logsumexp(lp, -1) - math.log(self.num_components)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            draws = self.components.sample(shape)  # (*shape, K, D)
            k = torch.randint(self.num_components, shape, device=draws.device)
            idx = k[..., None, None].expand(*shape, 1, draws.shape[-1])
            return draws.gather(-2, idx).squeeze(-2)


@register("prior", "vamp", context=("latent_dim", "event_shape", "guide"))
class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k) at K learned pseudo-inputs u_k.

    The guide is shared with the inference side (not a submodule here, so it is saved once). No
    closed-form KL: ``meanfield`` uses Monte Carlo for the z term.
    """

    guide: Any  # the shared AmortizedGuide (set with object.__setattr__: not a submodule)

    def __init__(
        self,
        *,
        latent_dim: int,
        event_shape: Shape,
        guide: Any,  # an AmortizedGuide: its dist(x) gives the components
        num_components: PositiveInt = 100,  # K pseudo-inputs; the paper uses 500 on MNIST
        init_mean: float = 0.5,  # pseudo-inputs start as N(init_mean, init_std^2) images
        init_std: PositiveFloat = 0.1,
    ) -> None:
        super().__init__()
        if getattr(guide, "is_point_mass", False):
            raise SpecError(
                f"model.prior.kind: 'vamp' mixes the guide's densities but guide {type(guide).__name__} is a point "
                "mass (no density); use another prior or guide.kind: diagonal_normal"
            )
        self.latent_dim = latent_dim
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(num_components, *event_shape))
        object.__setattr__(self, "guide", guide)  # a reference, not a registered submodule

    def forward(self) -> dist.Distribution:
        return EqualMixture(self.guide.dist(self.pseudo_inputs))


_FLOWS = {
    "affine_autoregressive": lambda d, hidden: T.affine_autoregressive(d, hidden_dims=hidden),
    "spline_autoregressive": lambda d, hidden: T.spline_autoregressive(d, hidden_dims=hidden),
}


@register("prior", "flow", context=("latent_dim",))
class FlowPrior(Prior):
    """N(0, I) pushed through learned Pyro transforms (MAF direction: log p(z) costs one pass per layer).

    Each layer is used inverted, so scoring z (what training needs) is the fast direction of Pyro's
    autoregressive transforms and sampling is the sequential one. No closed-form KL.
    """

    loc: Tensor
    scale: Tensor

    def __init__(
        self,
        *,
        latent_dim: int,
        # spline_coupling is left out: Pyro 1.9's SplineCoupling failed our normalization test (mass 0.93).
        transform: Literal["affine_autoregressive", "spline_autoregressive"] = "affine_autoregressive",
        num_flows: PositiveInt = 2,  # stacked layers
        hidden: list[PositiveInt] = (64,),  # type: ignore[assignment]  # widths of each layer's network
    ) -> None:
        super().__init__()
        if latent_dim < 2:
            raise SpecError(f"model.prior.kind: 'flow' needs latent_dim >= 2, got {latent_dim}; use learned_normal")
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.layers = nn.ModuleList([_FLOWS[transform](latent_dim, list(hidden)) for _ in range(num_flows)])

    def forward(self) -> dist.Distribution:
        # z = f_1^-1(... f_K^-1(eps)): log p(z) applies f_K o ... o f_1 (the fast, parallel direction).
        inverted = [t.inv for t in reversed(self.layers)]
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1), inverted)
