"""Posterior diagnostics: can the amortized posterior q(z|x) be trusted, data point by data point?

``pyro-vae diagnose RUN_DIR`` runs four checks against the generic guide interface
(``vae.guide.dist(x, cond)``: a reparameterizable distribution with event dim 1), so it works for every
posterior family. One module per concept:

- :mod:`.density`: the unscaled log joint log p(x, z) every check evaluates, and the guide's requirements;
- :mod:`.psis`: 1. PSIS k-hat per point (Yao, Vehtari, Simpson & Gelman 2018; Vehtari et al. 2024);
- :mod:`.nuts`: 2. a reference posterior by NUTS for a few points (worst, median and random k-hat);
- :mod:`.gap`: 3. the amortization gap (Cremer, Li & Duvenaud 2018);
- :mod:`.sbc`: 4. calibration by simulation-based calibration (Talts et al. 2018) and VSBC (Yao et al. 2018);
- :mod:`.options`, :mod:`.run`: :class:`DiagnoseOptions`, :func:`run_diagnostics` (the checks in order on
  one seeded stream) and :func:`diagnose` (on a run directory);
- :mod:`.report`, :mod:`.outputs`, :mod:`.plots`: :class:`Diagnosis` and its verdict, the files, the figures;
- :mod:`._arviz`: the one module that calls ArviZ.

Outputs in ``--out`` (default ``RUN_DIR/diagnostics``): ``diagnostics.json`` (every number),
``posterior.nc`` (ArviZ InferenceData, see :func:`inference_data`), ``figures/*.png`` and a verdict.
"""

from .density import check_guide, frozen, log_joint, log_joint_traced
from .gap import LocalGaussian, amortization_gap, amortized_log_weights, bounds, local_log_weights
from .nuts import NutsResult, compare_draws, nuts_reference
from .options import DiagnoseOptions
from .outputs import inference_data, write_outputs
from .psis import KHAT_BAD, KHAT_GOOD, guide_log_ratios, psis_summary, select_points
from .report import Diagnosis
from .run import diagnose, run_diagnostics
from .sbc import calibration_tests, pit_values, simulate

__all__ = [
    "KHAT_BAD",
    "KHAT_GOOD",
    "DiagnoseOptions",
    "Diagnosis",
    "LocalGaussian",
    "NutsResult",
    "amortization_gap",
    "amortized_log_weights",
    "bounds",
    "calibration_tests",
    "check_guide",
    "compare_draws",
    "diagnose",
    "frozen",
    "guide_log_ratios",
    "inference_data",
    "local_log_weights",
    "log_joint",
    "log_joint_traced",
    "nuts_reference",
    "pit_values",
    "psis_summary",
    "run_diagnostics",
    "select_points",
    "simulate",
    "write_outputs",
]
