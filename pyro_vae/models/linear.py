"""A linear-Gaussian VAE with a known answer: p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I).

Its marginal p(x) = N(b, W W^T + sigma^2 I) and posterior p(z|x) = N(S W^T (x - b) / sigma^2, S) with
S = (I + W^T W / sigma^2)^-1 are closed form, which makes it the reference for testing estimators
(IWAE converges to log p(x) from below), guides and diagnostics.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._typing import Tensor
from ..guides.normal import DiagonalNormalGuide
from .likelihoods import Gaussian
from .nets import Decoder, Encoder
from .priors import StandardNormal
from .vae import VAE, Generative


def exact_log_marginal(W: Tensor, b: Tensor, sigma: float | Tensor, x: Tensor) -> Tensor:
    """log p(x) per row of ``x`` (shape ``(N, F)``); ``sigma`` one number or one per feature ``(F,)``."""
    var = torch.as_tensor(sigma, dtype=W.dtype, device=W.device) ** 2
    cov = W @ W.T + torch.diag(var.expand(W.shape[0]))
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def linear_decoder_parameters(vae: VAE) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, b, sigma)`` of a VAE whose decoder is one linear layer and whose likelihood is Gaussian.

    That is the model built from a spec with ``model.network: {kind: mlp, hidden: []}`` and
    ``model.likelihood.kind: gaussian`` on vector data: p(x|z) = N(W z + b, diag sigma^2), so
    :func:`exact_log_marginal` gives its exact log p(x) (probabilistic PCA, Tipping & Bishop 1999).
    """
    layers = [m for m in vae.model.decoder.modules() if len(list(m.children())) == 0]
    lik = vae.model.likelihood
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear) or not isinstance(lik, Gaussian):
        raise ValueError("needs a decoder made of one nn.Linear and a Gaussian likelihood (mlp with hidden: [])")
    lin = layers[0]
    f = lin.out_features
    sigma = lik.sigma().detach().expand(lik.event_shape).reshape(f)
    return lin.weight.detach(), lin.bias.detach(), sigma


def exact_posterior(W: Tensor, b: Tensor, sigma: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior means ``(N, D)`` and the shared covariance ``(D, D)``."""
    d = W.shape[1]
    cov = torch.linalg.inv(torch.eye(d, dtype=W.dtype) + W.T @ W / sigma**2)
    mean = (x - b) @ (cov @ W.T / sigma**2).T
    return mean, cov


def linear_gaussian_vae(W: Tensor, b: Tensor, sigma: float, guide_scale: float = 1.0) -> VAE:
    """The model above with a diagonal guide set to the mean-field optimum for KL(q || p(z|x)).

    The guide's mean is the exact posterior mean; its variances are 1 / diag(S^-1) (the best a
    diagonal Gaussian can do), times ``guide_scale**2`` (< 1 makes a deliberately over-confident q).
    """
    f, d = W.shape
    dec_lin = nn.Linear(d, f)
    with torch.no_grad():
        dec_lin.weight.copy_(W)
        dec_lin.bias.copy_(b)
    model = Generative(
        StandardNormal(latent_dim=d), Decoder(dec_lin, d, (1, f)), Gaussian(event_shape=(f,), scale=sigma)
    )
    guide = DiagonalNormalGuide(encoder=Encoder(nn.Identity(), f), latent_dim=d, min_scale=0.0)
    _, cov = exact_posterior(W, b, sigma, torch.zeros(1, f))
    gain = cov @ W.T / sigma**2  # (D, F)
    mf_sd = guide_scale / torch.sqrt(torch.diagonal(torch.linalg.inv(cov)))
    with torch.no_grad():
        guide.loc.weight.copy_(gain)
        guide.loc.bias.copy_(-gain @ b)
        guide.raw_scale.weight.zero_()
        guide.raw_scale.bias.copy_(mf_sd + torch.log(-torch.expm1(-mf_sd)))  # softplus^-1
    vae = VAE(model, guide)
    assert torch.allclose(F.softplus(guide.raw_scale.bias), mf_sd, atol=1e-5)
    return vae


def random_linear_gaussian(f: int = 5, d: int = 2, sigma: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(f, d, generator=g) / math.sqrt(d)
    b = torch.randn(f, generator=g) * 0.1
    return W, b, sigma
