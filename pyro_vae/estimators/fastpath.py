"""What ``pyro_vae.fastpath`` offered, in one namespace (the old module path is an alias of this one, see
:data:`pyro_vae._compat.MOVED`): the direct forms (:mod:`pyro_vae.estimators.fast`) and the training step
(:mod:`pyro_vae.training.step`). New code imports from those two modules; nothing in the package imports this one.
"""

from __future__ import annotations

from ..training.step import nonfinite, optimizer_options, train_step
from .fast import (
    _HALF_LOG_2PI,
    FastELBO,
    FastTerms,
    _diag_normal,
    _handlers,
    _obs_log_prob,
    _prior,
    accelerate,
    estimator_kind,
    particle_terms,
    supports,
)

__all__ = [
    "_HALF_LOG_2PI",
    "FastELBO",
    "FastTerms",
    "_diag_normal",
    "_handlers",
    "_obs_log_prob",
    "_prior",
    "accelerate",
    "estimator_kind",
    "nonfinite",
    "optimizer_options",
    "particle_terms",
    "supports",
    "train_step",
]
