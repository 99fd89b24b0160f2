"""Generative side p(z) p(x|z). Importing this package registers every model, prior and likelihood."""

from .cvae import CVAE, ClassMeanPrior, ConditionalPrior  # registers model kind cvae
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Laplace, Likelihood
from .pixel import Categorical256, DiscretizedLogisticLikelihood
from .priors import FlowPrior, LearnedNormal, MixturePrior, StandardNormal, VampPrior
from .vae import VAE, Generative, build_model
from .vqvae import vqvae as vqvae  # registers model kind vqvae (the name stays bound to the factory, as before)

__all__ = [
    "CVAE",
    "VAE",
    "Bernoulli",
    "Categorical256",
    "ClassMeanPrior",
    "ConditionalPrior",
    "ContinuousBernoulli",
    "DiscretizedLogisticLikelihood",
    "FlowPrior",
    "Gaussian",
    "Generative",
    "Laplace",
    "LearnedNormal",
    "Likelihood",
    "MixturePrior",
    "StandardNormal",
    "VampPrior",
    "build_model",
]
