"""pyro-vae: variational autoencoders as Pyro model/guide pairs, built from a declarative spec.

    from pyro_vae import fit, evaluate, load_run
    res = fit(overrides=["train.epochs=5"])          # the embedded digits VAE
    print(evaluate(res.vae, res.data, "test", 1000).table())
"""

import pyro as _pyro

_pyro.settings.set(module_local_params=True)

from .data import Dataset  # noqa: E402
from .errors import DataError, PyroVAEError, RunError, SpecError  # noqa: E402
from .estimators import IWAE_ELBO, LogWeightELBO, Renyi_ELBO, log_terms  # noqa: E402
from .evaluate import EvalResult, evaluate, point_terms  # noqa: E402
from .guides import AmortizedGuide, DiagonalNormalGuide  # noqa: E402
from .models import VAE, Bernoulli, ContinuousBernoulli, Gaussian, Generative, StandardNormal, build_model  # noqa: E402
from .nets import conv, mlp  # noqa: E402
from .guides import DeltaGuide, FlowGuide, FullRankGuide, LowRankGuide  # noqa: E402  (component zoo, #3)
from .models import (  # noqa: E402  (component zoo, #3)
    Categorical256,
    DiscretizedLogisticLikelihood,
    FlowPrior,
    Laplace,
    LearnedNormal,
    MixturePrior,
    VampPrior,
)
from .nets import conv64  # noqa: E402
from .estimators import (  # noqa: E402  (estimators, #4)
    CIWAE_ELBO,
    DReG_ELBO,
    MIWAE_ELBO,
    PIWAE_ELBO,
    STL_ELBO,
    ScoreFunction_ELBO,
)
from .compare import CompareOptions, compare  # noqa: E402  (#4)
from .gradients import GradientStats, gradient_stats  # noqa: E402  (#4)
from .registry import REGISTRY, register  # noqa: E402
from .rundir import load_run  # noqa: E402
from .spec import DEFAULT_SPEC, resolve  # noqa: E402
from .train import FitResult, fit  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    # component zoo (#3)
    "Categorical256",
    "DeltaGuide",
    "DiscretizedLogisticLikelihood",
    "FlowGuide",
    "FlowPrior",
    "FullRankGuide",
    "Laplace",
    "LearnedNormal",
    "LowRankGuide",
    "MixturePrior",
    "VampPrior",
    "conv64",
    # estimators, compare, gradient statistics (#4)
    "CIWAE_ELBO",
    "CompareOptions",
    "DReG_ELBO",
    "GradientStats",
    "MIWAE_ELBO",
    "PIWAE_ELBO",
    "STL_ELBO",
    "ScoreFunction_ELBO",
    "compare",
    "gradient_stats",
    "DEFAULT_SPEC",
    "IWAE_ELBO",
    "REGISTRY",
    "VAE",
    "AmortizedGuide",
    "Bernoulli",
    "ContinuousBernoulli",
    "DataError",
    "Dataset",
    "DiagonalNormalGuide",
    "EvalResult",
    "FitResult",
    "Gaussian",
    "Generative",
    "LogWeightELBO",
    "PyroVAEError",
    "Renyi_ELBO",
    "RunError",
    "SpecError",
    "StandardNormal",
    "build_model",
    "conv",
    "evaluate",
    "fit",
    "load_run",
    "log_terms",
    "mlp",
    "point_terms",
    "register",
    "resolve",
]
