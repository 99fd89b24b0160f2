"""The VAE: a Pyro model p(z) p(x|z) and an amortized guide q(z|x) sharing site names.

Sites: ``z`` (latent), ``x`` (observation), plate ``data`` at dim -1. Both programs are
``nn.Module``s, so ``elbo(vae.model, vae.guide)`` is an ``nn.Module`` whose parameters a plain torch
optimizer trains and whose ``state_dict`` is the checkpoint (``module_local_params=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated, Any

import pyro
import torch
from pyro import poutine
from torch import nn

from .._typing import Component, ComponentSpec, PositiveInt, Shape, Tensor
from ..errors import SpecError
from ..registry import REGISTRY, register
from .likelihoods import Likelihood
from .nets import Decoder, Networks
from .priors import Prior

if TYPE_CHECKING:  # the guide package imports models.nets: no import back at run time
    from ..guides.base import AmortizedGuide


class Generative(nn.Module):
    """p(z) p(x|z) as a Pyro program: ``forward(x)`` scores a batch ``x`` of shape ``(B, *event)``."""

    def __init__(self, prior: nn.Module, decoder: Decoder, likelihood: Likelihood) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.kl_weight = 1.0

    @property
    def supports_direct(self) -> bool:
        """True while :meth:`forward` is this class's program (``z ~ prior_dist(cond)``, ``x ~ likelihood(decoder(z))``):
        estimators may then compute its log densities without tracing (:mod:`pyro_vae.estimators.fast`)."""
        return type(self).forward is Generative.forward

    def prior_dist(self, cond: Tensor | None = None) -> Any:
        """p(z), or p(z|cond) for a conditional :class:`~pyro_vae.models.priors.Prior` (CVAE priors take ``cond``).

        A plain module (not a ``Prior``) is called without arguments: an unconditional p(z).
        """
        return self.prior.dist(cond) if isinstance(self.prior, Prior) else self.prior()

    def log_joint(self, x: Tensor, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Unscaled log p(x, z) = log p(z) + log p(x|z) of :meth:`forward`'s sites, without Pyro's tracing.

        ``z`` ``(..., B, D)`` for ``x`` ``(B, *event)``; returns ``(..., B)`` (``kl_weight`` never enters).
        """
        zc = z if cond is None else torch.cat([z, cond.expand(*z.shape[:-1], cond.shape[-1])], dim=-1)
        return self.prior_dist(cond).log_prob(z) + self.likelihood(self.decoder(zc)).log_prob(x)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            scale = poutine.scale(scale=self.kl_weight) if self.kl_weight != 1.0 else nullcontext()
            with scale:
                z = pyro.sample("z", self.prior_dist(cond))
            if cond is not None:
                z = torch.cat([z, cond.expand(*z.shape[:-1], cond.shape[-1])], dim=-1)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


class ModelGuidePair(nn.Module):
    """A model/guide pair with a KL weight: what training, evaluation and comparison need of a VAE."""

    model: Any
    guide: Any

    @property
    def latent_dim(self) -> int:
        return int(self.guide.latent_dim)

    def set_kl_weight(self, beta: float) -> None:
        """beta of beta-VAE: weights log p(z) - log q(z|x) (the KL term) in every estimator."""
        self.model.kl_weight = float(beta)
        self.guide.kl_weight = float(beta)


class VAE(ModelGuidePair):
    """Holds the model/guide pair and the conveniences figures and users need.

    Example::

        vae = build_model(resolved_spec, dataset)
        loss = pyro.infer.Trace_ELBO()(vae.model, vae.guide)   # an nn.Module
    """

    def __init__(self, model: Generative, guide: AmortizedGuide) -> None:
        super().__init__()
        self.model = model
        self.guide = guide

    def cond(self, y: Tensor | None) -> Tensor | None:
        """The conditioning tensor for a batch of labels (None for an unconditional VAE)."""
        return None

    @torch.no_grad()
    def decode_mean(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        return self.model.likelihood.mean(self.model.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] at the posterior mean of q(z|x)."""
        c = self.cond(y)
        q = self.guide.dist(x, c)
        return self.decode_mean(_mean(q), c)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """E[x|z] for ``n`` draws z ~ p(z)."""
        c = self.cond(y)
        pz = self.model.prior_dist(c)
        z = pz.sample() if pz.batch_shape else pz.sample((n,))
        return self.decode_mean(z, c)

    @torch.no_grad()
    def posterior_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return _mean(self.guide.dist(x, self.cond(y)))


#: Draws behind the Monte Carlo posterior mean of a guide without a closed-form mean (a flow).
MEAN_DRAWS = 64


def _mean(q: Any) -> Tensor:
    """E_q[z]: closed form where the family has one, else the average of MEAN_DRAWS draws (one at a time)."""
    try:
        return q.mean
    except NotImplementedError:
        return sum(q.sample() for _ in range(MEAN_DRAWS)) / MEAN_DRAWS


@register("model", "vae", context=("event_shape", "guide", "num_classes"))
def vae(
    *,
    event_shape: Shape,
    guide: Mapping[str, Any],
    num_classes: int = 0,
    latent_dim: PositiveInt = 50,
    network: Annotated[ComponentSpec, Component("network")] = {"kind": "mlp"},  # noqa: B006
    prior: Annotated[ComponentSpec, Component("prior")] = {"kind": "standard_normal"},  # noqa: B006
    likelihood: Annotated[ComponentSpec, Component("likelihood")] = {"kind": "bernoulli"},  # noqa: B006
) -> VAE:
    """Variational autoencoder p(z) p(x|z) with an amortized guide q(z|x) (Kingma & Welling 2014)."""
    lik: Likelihood = REGISTRY.build("likelihood", likelihood, event_shape=event_shape)
    nets: Networks = REGISTRY.build(
        "network", network, event_shape=event_shape, latent_dim=latent_dim, out_params=lik.num_params, cond_dim=0
    )
    q = REGISTRY.build("guide", guide, encoder=nets.encoder, latent_dim=latent_dim)
    # The guide is built first: a VampPrior mixes the guide's posteriors at learned pseudo-inputs.
    p = check_prior(REGISTRY.build("prior", prior, latent_dim=latent_dim, event_shape=event_shape, guide=q), prior)
    return VAE(Generative(p, nets.decoder, lik), q)


def check_prior(p: Any, cfg: Mapping[str, Any]) -> Prior:
    """``p`` if the prior ``cfg`` named built a :class:`~pyro_vae.models.priors.Prior`, else one clear error."""
    if not isinstance(p, Prior):
        entry = REGISTRY.get("prior", cfg.get("kind"))
        raise SpecError(
            f"model.prior.kind: {cfg.get('kind')!r} ({entry.origin}) built a {type(p).__name__}, not a "
            "pyro_vae.models.Prior; subclass Prior (forward() returns p(z))"
        )
    return p


def build_model(resolved: Mapping[str, Any], event_shape: Shape, num_classes: int = 0) -> VAE:
    """Build the model/guide pair of a resolved spec for data of ``event_shape``."""
    return REGISTRY.build(
        "model", resolved["model"], event_shape=tuple(event_shape), guide=resolved["guide"], num_classes=num_classes
    )
