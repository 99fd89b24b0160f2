"""Generative side p(z) p(x|z): the VAE, priors (:class:`Prior`), likelihoods, networks, the CVAE and VQ-VAE,
and a user's own Pyro program (``model.kind: pyro``, :mod:`.program`). Importing this package registers
every model, prior, likelihood and network."""

from . import vqvae as vqvae  # registers model kind vqvae (the module; its factory is vqvae.vqvae)
from .cvae import CVAE, ClassMeanPrior, ConditionalPrior  # registers model kind cvae
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Laplace, Likelihood
from .pixel import Categorical256, DiscretizedLogisticLikelihood
from .priors import FlowPrior, LearnedNormal, MixturePrior, Prior, StandardNormal, VampPrior
from .program import ProgramVAE, program_vae  # registers model kind pyro (a hand-written Pyro program)
from .vae import VAE, Generative, build_model

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
    "Prior",
    "ProgramVAE",
    "StandardNormal",
    "VampPrior",
    "build_model",
    "program_vae",
]
