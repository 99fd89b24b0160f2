"""Evaluation of a trained VAE: bounds on log p(x), gradient statistics, and resource checks.

- :mod:`.evaluate`: :func:`~.evaluate.evaluate` (``pyro-vae evaluate``), :func:`point_terms` (per-point
  ELBO, L_K, KL, reconstruction, posterior means), :class:`Measure` (what those numbers are), active units;
- :mod:`.log_weights`: the trace-free L_K of the standard model/guide pair, in fixed-size row blocks;
- :mod:`.gradients`: mean, variance and SNR of estimators' gradients (``pyro-vae gradients``);
- :mod:`.resources`: memory and time estimates checked before a command starts.

The function ``evaluate`` is ``pyro_vae.evaluate`` (or ``pyro_vae.evaluation.evaluate.evaluate``);
here the name ``evaluate`` is the module, so that ``import pyro_vae.evaluation.evaluate`` means one thing.
"""

from . import evaluate, gradients, log_weights, resources
from .evaluate import (
    MEAN_DRAWS,
    ROW_BUDGET,
    EvalResult,
    Measure,
    PointTerms,
    active_units,
    direct_supported,
    measure_of,
    point_terms,
    posterior_mean_stats,
    random_subset,
    summarize,
    unit_variances,
)
from .gradients import GradientStats, gradient_stats, stats_table

__all__ = [
    "MEAN_DRAWS",
    "ROW_BUDGET",
    "EvalResult",
    "GradientStats",
    "Measure",
    "PointTerms",
    "active_units",
    "direct_supported",
    "evaluate",
    "gradient_stats",
    "gradients",
    "log_weights",
    "measure_of",
    "point_terms",
    "posterior_mean_stats",
    "random_subset",
    "resources",
    "stats_table",
    "summarize",
    "unit_variances",
]
