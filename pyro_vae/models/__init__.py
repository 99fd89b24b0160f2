"""Generative side p(z) p(x|z). Importing this package registers every model, prior and likelihood."""

from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Likelihood
from .priors import StandardNormal
from .vae import VAE, Generative, build_model

__all__ = [
    "VAE",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Generative",
    "Likelihood",
    "StandardNormal",
    "build_model",
]
