"""Encoder/decoder networks.

A network factory receives the data's ``event_shape``, the ``latent_dim``, the number of likelihood
parameters per data element ``out_params`` and an optional conditioning width ``cond_dim`` (CVAE),
and returns a :class:`Networks` pair:

- ``encoder(x, cond=None) -> h``: ``(B, *event_shape) -> (B, out_features)`` features that a guide
  maps to its distribution's parameters;
- ``decoder(z) -> params``: ``(*lead, latent_dim + cond_dim) -> (*lead, out_params, *event_shape)``;
  any number of leading dimensions (particles, batch) is allowed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._typing import Activation, PositiveInt, Shape, Tensor
from ..errors import SpecError
from ..registry import register

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class Encoder(nn.Module):
    """``body(x)`` then, with a condition, concatenate it and apply ``cond`` (a dense layer).

    ``activation=None`` leaves that layer linear (the linear networks of ``mlp`` with ``hidden: []``).
    """

    def __init__(self, body: nn.Module, out_features: int, cond_dim: int = 0, activation: str | None = "relu") -> None:
        super().__init__()
        self.body = body
        self.cond_dim = cond_dim
        self.out_features = out_features
        act: list[nn.Module] = [_ACTIVATIONS[activation]()] if activation is not None else []
        self.cond = nn.Sequential(nn.Linear(out_features + cond_dim, out_features), *act) if cond_dim else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.body(x)
        if self.cond is not None:
            if cond is None:
                raise ValueError("this encoder is conditional: pass cond=")
            h = self.cond(torch.cat([h, cond], dim=-1))
        return h


class Decoder(nn.Module):
    """Applies ``body`` to ``z`` flattened over leading dims; output ``(*lead, P, *event_shape)``."""

    def __init__(self, body: nn.Module, in_features: int, out_shape: Shape) -> None:
        super().__init__()
        self.body = body
        self.in_features = in_features
        self.out_shape = out_shape

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        out = self.body(z.reshape(-1, z.shape[-1]))
        return out.reshape(*lead, *self.out_shape)


@dataclass
class Networks:
    encoder: Encoder
    decoder: Decoder


def _mlp(sizes: list[int], activation: str, last_activation: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return layers


@register("network", "mlp", context=("event_shape", "latent_dim", "out_params", "cond_dim"))
def mlp(
    *,
    event_shape: Shape,
    latent_dim: int,
    out_params: int,
    cond_dim: int = 0,
    hidden: list[PositiveInt] = (400,),  # type: ignore[assignment]  # encoder widths; decoder mirrors
    activation: Activation = "relu",
) -> Networks:
    """Fully connected encoder/decoder; the decoder mirrors ``hidden`` (Pyro's VAE example: [400]).

    ``hidden: []`` gives linear networks: the guide's parameters are affine in x and the decoder's
    output affine in z (``activation`` is then unused). With a Gaussian likelihood and a Gaussian
    guide this is probabilistic PCA (Tipping & Bishop 1999) as a linear VAE (Lucas et al. 2019), the
    one model whose exact log p(x) and posterior are known (``pyro_vae.models.linear``).
    """
    hidden = list(hidden)
    d = math.prod(event_shape)
    enc = nn.Sequential(nn.Flatten(), *_mlp([d, *hidden], activation, last_activation=True))
    dec = nn.Sequential(*_mlp([latent_dim + cond_dim, *hidden[::-1], out_params * d], activation, False))
    return Networks(
        Encoder(enc, hidden[-1] if hidden else d, cond_dim, activation if hidden else None),
        Decoder(dec, latent_dim + cond_dim, (out_params, *event_shape)),
    )


@register("network", "conv", context=("event_shape", "latent_dim", "out_params", "cond_dim"))
def conv(
    *,
    event_shape: Shape,
    latent_dim: int,
    out_params: int,
    cond_dim: int = 0,
    filters: PositiveInt = 16,  # channels double per stride-2 conv: 2f, 4f (Keras variational_autoencoder_deconv example)
    dense: PositiveInt = 32,  # width of the dense layer after the convs
    kernel_size: PositiveInt = 3,
    activation: Activation = "relu",
) -> Networks:
    """Keras' convolutional VAE example: two stride-2 convs (2f, 4f filters) + dense; decoder mirrors with transposed convs.

    Works for any (C, H, W) with H and W divisible by 4 (28x28 MNIST, 8x8 digits).
    """
    if len(event_shape) != 3 or event_shape[1] % 4 or event_shape[2] % 4:
        raise SpecError(
            f"model.network.kind: 'conv' needs images (C, H, W) with H, W divisible by 4; data has shape "
            f"{tuple(event_shape)}; use kind: mlp"
        )
    if kernel_size % 2 == 0:
        raise SpecError(f"model.network.kernel_size: {kernel_size} must be odd (same padding)")
    c, h, w = event_shape
    act = _ACTIVATIONS[activation]
    pad = kernel_size // 2
    f2, f4 = 2 * filters, 4 * filters
    enc = nn.Sequential(
        nn.Conv2d(c, f2, kernel_size, stride=2, padding=pad), act(),
        nn.Conv2d(f2, f4, kernel_size, stride=2, padding=pad), act(),
        nn.Flatten(),
        nn.Linear(f4 * (h // 4) * (w // 4), dense), act(),
    )  # fmt: skip
    half = max(filters // 2, 1)
    dec = nn.Sequential(
        nn.Linear(latent_dim + cond_dim, f2 * (h // 4) * (w // 4)), act(),
        nn.Unflatten(1, (f2, h // 4, w // 4)),
        nn.ConvTranspose2d(f2, filters, kernel_size, stride=2, padding=pad, output_padding=1), act(),
        nn.ConvTranspose2d(filters, half, kernel_size, stride=2, padding=pad, output_padding=1), act(),
        nn.Conv2d(half, out_params * c, kernel_size, padding=pad),
    )  # fmt: skip
    return Networks(
        Encoder(enc, dense, cond_dim, activation),
        Decoder(dec, latent_dim + cond_dim, (out_params, c, h, w)),
    )


@register("network", "conv64", context=("event_shape", "latent_dim", "out_params", "cond_dim"))
def conv64(
    *,
    event_shape: Shape,
    latent_dim: int,
    out_params: int,
    cond_dim: int = 0,
    filters: list[PositiveInt] = (32, 32, 64, 64),  # type: ignore[assignment]  # one stride-2 4x4 conv each
    dense: PositiveInt = 256,  # width of the dense layer after the convs
    activation: Activation = "relu",
) -> Networks:
    """Conv encoder/decoder for 64x64 RGB faces (CelebA, Liu et al. 2015; the layout of Higgins et al. 2017's beta-VAE).

    Each of the ``len(filters)`` stride-2 4x4 convs halves the image (64 -> 4 with four); the decoder
    mirrors them with transposed convs. Works for any (C, H, W) with H, W divisible by 2^len(filters).
    """
    filters = list(filters)
    n = len(filters)
    if not filters:
        raise SpecError("model.network.filters: needs at least one conv layer, e.g. [32, 32, 64, 64]")
    if len(event_shape) != 3 or event_shape[1] % 2**n or event_shape[2] % 2**n:
        raise SpecError(
            f"model.network.kind: 'conv64' needs images (C, H, W) with H, W divisible by {2**n} "
            f"({n} stride-2 layers); data has shape {tuple(event_shape)}; use kind: conv or mlp"
        )
    c, h, w = event_shape
    hs, ws = h // 2**n, w // 2**n
    act = _ACTIVATIONS[activation]
    enc: list[nn.Module] = []
    for a, b in zip([c, *filters[:-1]], filters):
        enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), act()]
    enc += [nn.Flatten(), nn.Linear(filters[-1] * hs * ws, dense), act()]
    dec: list[nn.Module] = [
        nn.Linear(latent_dim + cond_dim, dense), act(),
        nn.Linear(dense, filters[-1] * hs * ws), act(),
        nn.Unflatten(1, (filters[-1], hs, ws)),
    ]  # fmt: skip
    rev = filters[::-1]
    for i, (a, b) in enumerate(zip(rev, [*rev[1:], out_params * c])):
        dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
        if i < n - 1:
            dec.append(act())
    return Networks(
        Encoder(nn.Sequential(*enc), dense, cond_dim, activation),
        Decoder(nn.Sequential(*dec), latent_dim + cond_dim, (out_params, c, h, w)),
    )
