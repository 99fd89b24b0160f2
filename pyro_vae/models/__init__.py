"""Generative side p(z) p(x|z). Importing this package registers every model, prior and likelihood."""

from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Laplace, Likelihood
from .pixel import Categorical256, DiscretizedLogisticLikelihood
from .priors import FlowPrior, LearnedNormal, MixturePrior, StandardNormal, VampPrior
from .vae import VAE, Generative, build_model
from .cvae import CVAE, ClassMeanPrior, ConditionalPrior  # noqa: E402  (registers model kind cvae)
from .vqvae import vqvae  # noqa: E402  (registers model kind vqvae)

__all__ = [
    "CVAE",
    "VAE",
    "ClassMeanPrior",
    "ConditionalPrior",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Generative",
    "Likelihood",
    "StandardNormal",
    "build_model",
    # component zoo (issue #3)
    "Categorical256",
    "DiscretizedLogisticLikelihood",
    "FlowPrior",
    "Laplace",
    "LearnedNormal",
    "MixturePrior",
    "VampPrior",
]
