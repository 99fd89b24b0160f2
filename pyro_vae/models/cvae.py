"""The conditional VAE (Sohn et al. 2015): p(x|z,y) p(z|y) with a guide q(z|x,y).

A CVAE is the shared :class:`~pyro_vae.models.vae.VAE` with one method changed, :meth:`CVAE.cond`,
which turns a batch's labels ``y`` into the conditioning tensor the networks and priors receive:

- ``condition: label``: ``y`` holds integer class labels, the condition is one-hot (``cond_dim`` =
  number of classes);
- ``condition: tensor``: ``y`` is any float tensor ``(B, ...)`` (e.g. the observed quadrants of an
  image), flattened to ``(B, cond_dim)``.

The encoder concatenates the condition after its body, the decoder reads ``[z, cond]``, and a prior
whose class declares ``conditional = True`` (:class:`~pyro_vae.models.priors.Prior`) maps the condition
to p(z|y). Priors registered here:

- ``class_mean``: N(mu_y, I) with one learned mean per class (linear in the condition, so
  for one-hot y it is exactly a table of means);
- ``conditional``: a network y -> diagonal Normal (the prior network p(z|x) of Sohn et al. 2015).

Unconditional priors (``standard_normal`` and the rest) work unchanged: they ignore the condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .._typing import Activation, Component, ComponentSpec, NonNegativeInt, PositiveInt, Shape, Tensor
from ..errors import SpecError
from ..registry import REGISTRY, register
from .likelihoods import Likelihood
from .nets import _ACTIVATIONS, Networks
from .priors import Prior
from .vae import VAE, Generative, check_prior


class CVAE(VAE):
    """A VAE whose model, guide and prior all see ``cond(y)``.

    ``num_classes`` > 0 for label conditioning (``pyro-vae sample RUN --label Y`` draws class Y);
    0 for a tensor condition, which must then always be passed.
    """

    conditional = True

    def __init__(self, model: Generative, guide: Any, num_classes: int, cond_dim: int) -> None:
        super().__init__(model, guide)
        self.num_classes = num_classes
        self.cond_dim = cond_dim

    def cond(self, y: Tensor | None) -> Tensor | None:
        if y is None:
            raise ValueError("a conditional VAE needs its condition y (labels or a conditioning tensor)")
        if self.num_classes:
            if y.dtype.is_floating_point:
                raise ValueError("condition: label expects integer class labels, got a float tensor")
            return F.one_hot(y.long(), self.num_classes).to(self._dtype())
        c = y.to(self._dtype()).reshape(len(y), -1)
        if c.shape[-1] != self.cond_dim:
            raise ValueError(
                f"conditioning tensor has {c.shape[-1]} features per point; the model expects {self.cond_dim}"
            )
        return c

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """E[x|z,y], z ~ p(z|y). Without ``y`` a label model cycles through the classes 0, 1, ..."""
        if y is None and self.num_classes:
            y = torch.arange(n, device=next(self.parameters()).device) % self.num_classes
        return super().sample(n, y)


# --------------------------------------------------------------------------- priors p(z|y)


def _needs_cond(kind: str, cond_dim: int) -> None:
    if cond_dim <= 0:
        raise SpecError(f"model.prior.kind: {kind!r} needs a conditional model; use model.kind: cvae")


@register("prior", "class_mean", context=("latent_dim", "cond_dim"))
class ClassMeanPrior(Prior):
    """N(mu_y, I): each class y has its own learned mean, unit variance (a CVAE prior, Sohn et al. 2015)."""

    conditional = True
    scale: Tensor

    def __init__(self, *, latent_dim: int, cond_dim: int = 0) -> None:
        super().__init__()
        _needs_cond("class_mean", cond_dim)
        self.means = nn.Linear(cond_dim, latent_dim, bias=False)  # row y of weight.T is mu_y
        nn.init.zeros_(self.means.weight)
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, cond: Tensor) -> dist.Distribution:
        loc = self.means(cond)
        return dist.Normal(loc, self.scale.expand_as(loc)).to_event(1)


@register("prior", "conditional", context=("latent_dim", "cond_dim"))
class ConditionalPrior(Prior):
    """p(z|y) = N(mu(y), diag sigma(y)^2) from an MLP: the prior network of Sohn et al. (2015)."""

    conditional = True

    def __init__(
        self,
        *,
        latent_dim: int,
        cond_dim: int = 0,
        hidden: list[PositiveInt] = (256,),  # type: ignore[assignment]  # MLP widths y -> h
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        _needs_cond("conditional", cond_dim)
        layers: list[nn.Module] = []
        width = cond_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)
        nn.init.zeros_(self.raw_scale.weight)  # start near N(., I): softplus(0.5413) = 1
        nn.init.constant_(self.raw_scale.bias, 0.5413)

    def forward(self, cond: Tensor) -> dist.Distribution:
        h = self.body(cond)
        return dist.Normal(self.loc(h), F.softplus(self.raw_scale(h)) + 1e-5).to_event(1)


# --------------------------------------------------------------------------- the model kind


def _check_cvae(p: Mapping[str, Any]) -> None:
    if p["condition"] == "tensor" and p["cond_dim"] < 1:
        raise SpecError("cond_dim: condition 'tensor' needs the conditioning width, e.g. cond_dim: 392")


@register("model", "cvae", context=("event_shape", "guide", "num_classes"), check=_check_cvae)
def cvae(
    *,
    event_shape: Shape,
    guide: Mapping[str, Any],
    num_classes: int = 0,
    latent_dim: PositiveInt = 20,
    network: Annotated[ComponentSpec, Component("network")] = {"kind": "mlp"},  # noqa: B006
    prior: Annotated[ComponentSpec, Component("prior")] = {"kind": "standard_normal"},  # noqa: B006
    likelihood: Annotated[ComponentSpec, Component("likelihood")] = {"kind": "bernoulli"},  # noqa: B006
    condition: Literal["label", "tensor"] = "label",  # label: one-hot class y; tensor: float y (B, ...)
    cond_dim: NonNegativeInt = 0,  # condition 'tensor': features of y per point (label: number of classes)
) -> CVAE:
    """Conditional VAE p(x|z,y) p(z|y), q(z|x,y) (Sohn et al. 2015); y a class label or any tensor."""
    if condition == "label":
        if num_classes < 1:
            raise SpecError("model.condition: 'label' needs integer class labels in the data; use condition: tensor")
        cond_dim = num_classes
    else:
        _check_cvae({"condition": condition, "cond_dim": cond_dim})
        num_classes = 0
    lik: Likelihood = REGISTRY.build("likelihood", likelihood, event_shape=event_shape)
    nets: Networks = REGISTRY.build(
        "network", network, event_shape=event_shape, latent_dim=latent_dim, out_params=lik.num_params,
        cond_dim=cond_dim,
    )  # fmt: skip
    q = REGISTRY.build("guide", guide, encoder=nets.encoder, latent_dim=latent_dim)
    p = check_prior(
        REGISTRY.build("prior", prior, latent_dim=latent_dim, cond_dim=cond_dim, event_shape=event_shape, guide=q),
        prior,
    )
    if not p.conditional:
        try:  # e.g. a VampPrior encodes pseudo-inputs, which a conditional encoder cannot do without y
            p()
        except ValueError as e:
            raise SpecError(f"model.prior.kind: {prior['kind']!r} does not work in a CVAE ({e}); "
                            "priors made for it: class_mean, conditional") from None  # fmt: skip
    return CVAE(Generative(p, nets.decoder, lik), q, num_classes, cond_dim)


__all__ = ["CVAE", "ClassMeanPrior", "ConditionalPrior", "cvae"]
