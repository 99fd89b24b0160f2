"""pyro-vae: variational autoencoders as Pyro model/guide pairs, built from a declarative spec.

    from pyro_vae import fit, evaluate, load_run
    res = fit(overrides=["train.epochs=5"])          # the embedded digits VAE
    print(evaluate(res.vae, res.data, "test", 1000).table())

This module is the table of contents: the names users import, whichever subpackage defines them. The
subpackages, each re-exporting its own public names: ``models``, ``guides``, ``estimators``, ``data``,
``training``, ``rundir``, ``evaluation``, ``compare``, ``diagnostics``, ``plots``, ``cli``. A top-level
name never hides a subpackage: ``pyro_vae.compare`` is the subpackage (its function is
``pyro_vae.compare.compare``).

Importing the package changes no global setting of Pyro or torch.
"""

import sys as _sys

from . import _compat

_compat.install()  # old import paths of modules that moved into subpackages, with a DeprecationWarning
_sys.modules[__name__].__class__ = _compat.Package  # an old path never replaces a function of the same name

from . import compare
from .compare import CompareOptions
from .data import Dataset
from .errors import DataError, PyroVAEError, RunError, SpecError
from .estimators import (
    CIWAE_ELBO,
    IWAE_ELBO,
    MIWAE_ELBO,
    PIWAE_ELBO,
    STL_ELBO,
    DReG_ELBO,
    LogWeightELBO,
    Renyi_ELBO,
    ScoreFunction_ELBO,
    log_terms,
)
from .evaluation.evaluate import EvalResult, Measure, evaluate, measure_of, point_terms
from .evaluation.gradients import GradientStats, gradient_stats
from .guides import AmortizedGuide, DeltaGuide, DiagonalNormalGuide, FlowGuide, FullRankGuide, LowRankGuide
from .models import (
    VAE,
    Bernoulli,
    Categorical256,
    ContinuousBernoulli,
    DiscretizedLogisticLikelihood,
    FlowPrior,
    Gaussian,
    Generative,
    Laplace,
    LearnedNormal,
    MixturePrior,
    StandardNormal,
    VampPrior,
    build_model,
)
from .models.nets import conv, conv64, mlp
from .registry import REGISTRY, register
from .rundir import load_run
from .spec import DEFAULT_SPEC, resolve
from .training import FitResult, fit

# ``pyro_vae.compare`` was the function until the subpackage took its name: calling the module still works,
# with a DeprecationWarning, for one release.
compare.__class__ = _compat.CallableModule

__version__ = "0.1.0"

__all__ = [
    "CIWAE_ELBO",
    "DEFAULT_SPEC",
    "IWAE_ELBO",
    "MIWAE_ELBO",
    "PIWAE_ELBO",
    "REGISTRY",
    "STL_ELBO",
    "VAE",
    "AmortizedGuide",
    "Bernoulli",
    "Categorical256",
    "CompareOptions",
    "ContinuousBernoulli",
    "DReG_ELBO",
    "DataError",
    "Dataset",
    "DeltaGuide",
    "DiagonalNormalGuide",
    "DiscretizedLogisticLikelihood",
    "EvalResult",
    "FitResult",
    "FlowGuide",
    "FlowPrior",
    "FullRankGuide",
    "Gaussian",
    "Generative",
    "GradientStats",
    "Laplace",
    "LearnedNormal",
    "LogWeightELBO",
    "LowRankGuide",
    "Measure",
    "MixturePrior",
    "PyroVAEError",
    "Renyi_ELBO",
    "RunError",
    "ScoreFunction_ELBO",
    "SpecError",
    "StandardNormal",
    "VampPrior",
    "build_model",
    "compare",
    "conv",
    "conv64",
    "evaluate",
    "fit",
    "gradient_stats",
    "load_run",
    "log_terms",
    "measure_of",
    "mlp",
    "point_terms",
    "register",
    "resolve",
]
