"""ELBO estimators built from the spec: Pyro's own and ours, one family per module, each with its
direct (trace-free) form beside it.

- :mod:`.base`: per-particle log densities from Pyro traces (:func:`log_terms`), the loss conventions,
  the score-free terms (:func:`stopped_log_terms`), and :class:`DirectForm`, the declaration of a
  direct form (``fast_loss``);
- :mod:`.fast`: the direct-form machinery for the standard model/guide pair (:class:`FastELBO`,
  :func:`accelerate`), used by the training loop when ``train.fast_path: true``;
- one module per family: :mod:`.pyro_elbos` (``trace``, ``meanfield``), :mod:`.importance` (``iwae``,
  ``renyi``), :mod:`.doubly_reparameterized` (``dreg``), :mod:`.sticking_the_landing` (``stl``),
  :mod:`.multi_sample` (``miwae``, ``ciwae``, ``piwae``), :mod:`.likelihood_ratio` (``score_function``),
  :mod:`.free_bits` (``free_bits``), and :mod:`.divergences` (closed-form KLs, the mean-field ELBO).

Importing this package registers every ``elbo.kind``. The factories keep their ``elbo.kind`` names
(``pyro_vae.estimators.iwae`` is the factory), so the modules are named after the method.
"""

from __future__ import annotations

from .. import _internals
from . import base, importance, likelihood_ratio
from .base import (
    MAX_PLATE_NESTING,
    DifferentiableLossMixin,
    DirectForm,
    LogTerms,
    LogWeightELBO,
    StoppedTerms,
    has_direct_form,
    iwae_bound,
    log_terms,
    needs_density,
    num_points,
    refuse_point_mass,
    scale_grad,
    stopped_log_terms,
)
from .divergences import MeanField_ELBO, gaussian_kl_diagonal, has_closed_form_kl
from .doubly_reparameterized import DReG_ELBO, dreg
from .fast import FastELBO, accelerate, supports_direct
from .free_bits import FreeBitsELBO, kl_per_dimension
from .importance import IWAE_ELBO, Renyi_ELBO, iwae, renyi
from .likelihood_ratio import ScoreFunction_ELBO, score_function
from .multi_sample import CIWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO, ciwae, miwae, miwae_bound, piwae
from .pyro_elbos import meanfield, trace
from .sticking_the_landing import STL_ELBO, stl

# Private names of the module this package replaces, for code written against it.
_detached_parameters = _internals.detached_parameters
_Detach, _frozen, _latent_sites, _replay_trace = base._Detach, base._frozen, base._latent_sites, base._replay_trace
_ScoredDetached, _vectorized, _needs_density, _scale_grad = (
    base._ScoredDetached,
    base._vectorized,
    base._needs_density,
    base._scale_grad,
)
_alpha_not_one = importance._alpha_not_one
_DetachedSampling, _NoRsample = likelihood_ratio._DetachedSampling, likelihood_ratio._NoRsample
_num_points = num_points

__all__ = [
    "CIWAE_ELBO",
    "IWAE_ELBO",
    "MAX_PLATE_NESTING",
    "MIWAE_ELBO",
    "PIWAE_ELBO",
    "STL_ELBO",
    "DReG_ELBO",
    "DifferentiableLossMixin",
    "DirectForm",
    "FastELBO",
    "FreeBitsELBO",
    "LogTerms",
    "LogWeightELBO",
    "MeanField_ELBO",
    "Renyi_ELBO",
    "ScoreFunction_ELBO",
    "StoppedTerms",
    "accelerate",
    "ciwae",
    "dreg",
    "gaussian_kl_diagonal",
    "has_closed_form_kl",
    "has_direct_form",
    "iwae",
    "iwae_bound",
    "kl_per_dimension",
    "log_terms",
    "meanfield",
    "miwae",
    "miwae_bound",
    "needs_density",
    "num_points",
    "piwae",
    "refuse_point_mass",
    "renyi",
    "scale_grad",
    "score_function",
    "stl",
    "stopped_log_terms",
    "supports_direct",
    "trace",
]
