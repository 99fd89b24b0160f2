"""What every estimator shares: per-particle log densities from Pyro traces, the loss conventions,
the stopped (score-free) terms, and the declaration of a direct (trace-free) form.

Conventions (the same for every estimator, so that they compare on equal footing):

- ``estimator(model, guide)`` is an ``nn.Module``; calling it on a batch returns the loss summed over
  the batch (Pyro's convention). The training loop divides by the batch size, so every reported
  number is in nats per data point and does not depend on batch or dataset size. The data plate is
  never subsampled, so Pyro's subsample scaling never enters a log-sum-exp.
- ``beta`` (``elbo.beta``) is applied by the model and guide as ``poutine.scale`` on the ``z`` site
  only: it weights ``log p(z) - log q(z|x)`` inside each particle's log-weight and never scales the
  log-sum-exp as a whole (for ``trace`` that is exactly ``E[log p(x|z)] - beta KL``). ``site["scale"]``
  is read at run time, so KL schedules work.
- The reported value is the bound itself even where the gradient comes from a surrogate.

The direct form. An estimator that can compute its loss without Pyro tracing for the standard
model/guide pair (see :mod:`pyro_vae.estimators.fast`) says so by defining
:meth:`DirectForm.fast_loss`; :func:`pyro_vae.estimators.fast.accelerate` asks the estimator, never
its type. A subclass inherits the direct form with the loss; a subclass that redefines
``differentiable_loss`` (a different loss) loses it unless it defines ``fast_loss`` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .._internals import detached_parameters
from .._typing import Tensor
from ..errors import SpecError

MAX_PLATE_NESTING = 1


@dataclass
class LogTerms:
    """Per-particle, per-data-point log densities, each of shape ``(K, B)``.

    ``obs``: sum of observed sites' log p(x|z). ``latent``: sum over latent sites of
    log p(z) - log q(z|x). ``log_weight = obs + latent``.
    """

    obs: Tensor
    latent: Tensor
    guide_trace: Any

    @property
    def log_weight(self) -> Tensor:
        return self.obs + self.latent


def _vectorized(fn: Callable[..., Any], num_particles: int, dim: int) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("num_particles_vectorized", num_particles, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def log_terms(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    scaled: bool = True,
    max_plate_nesting: int = MAX_PLATE_NESTING,
) -> LogTerms:
    """Run ``num_particles`` vectorized guide draws and replay the model on them.

    ``scaled=True`` uses the sites' scaled log-probs (beta applied: training); ``scaled=False`` the
    raw ones (evaluation: the true bound whatever beta was used in training).
    """
    dim = -max_plate_nesting - 1
    guide_tr = poutine.trace(_vectorized(guide, num_particles, dim)).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(_vectorized(model, num_particles, dim), trace=guide_tr)).get_trace(
        *args, **kwargs
    )
    key: Literal["log_prob", "unscaled_log_prob"] = "log_prob" if scaled else "unscaled_log_prob"
    obs: Tensor | float = 0.0
    latent: Tensor | float = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr.compute_log_prob()
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site[key]
            lp = lp.reshape(lp.shape[:1] + (-1,)).sum(-1, keepdim=True) if lp.dim() > 2 else lp  # defensive
            if sign > 0 and site["is_observed"]:
                obs = obs + lp
            else:
                latent = latent + sign * lp
    ref = torch.as_tensor(obs) if isinstance(obs, torch.Tensor) else torch.as_tensor(latent)
    shape = torch.broadcast_shapes(torch.as_tensor(obs).shape, torch.as_tensor(latent).shape)
    o = torch.as_tensor(obs, dtype=ref.dtype, device=ref.device).expand(shape)
    lt = torch.as_tensor(latent, dtype=ref.dtype, device=ref.device).expand(shape)
    return LogTerms(o, lt, guide_tr)


class DirectForm:
    """The capability of computing the loss without Pyro tracing (:mod:`pyro_vae.estimators.fast`).

    ``fast_loss(q, x, cond)`` gets the guide's posterior for the batch (:class:`~pyro_vae.estimators.fast.Posterior`,
    nothing drawn yet) and returns the same loss as ``differentiable_loss`` on the same random draws,
    summed over the batch, or None when it does not cover this case; it must then have drawn nothing
    (the Pyro path takes the step, on the untouched random stream). ``fast_loss = None`` (the
    default) declares no direct form.
    """

    fast_loss: ClassVar[Callable[..., Tensor | None] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "differentiable_loss" in cls.__dict__ and "fast_loss" not in cls.__dict__:
            cls.fast_loss = None  # a new loss: the inherited direct form would compute another one


def has_direct_form(elbo: Any) -> bool:
    """Whether ``elbo`` declares a direct form (:class:`DirectForm`)."""
    return callable(getattr(elbo, "fast_loss", None))


class DifferentiableLossMixin:
    """``loss`` and ``loss_and_grads`` for an ELBO whose work is all in ``differentiable_loss``."""

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


class LogWeightELBO(DirectForm, DifferentiableLossMixin, ELBO):
    """An estimator that is a function of the ``(K, B)`` log-weights; subclasses define :meth:`objective`.

    ``differentiable_loss`` returns ``-sum_b objective_b``; gradients flow through the
    reparameterized draws (the guide must be reparameterizable). The direct form computes the same
    objective from directly computed log-weights, so every subclass that only changes
    :meth:`objective` keeps it.
    """

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING, vectorize_particles=True)

    def objective(self, terms: LogTerms) -> Tensor:
        """Per-data-point objective of shape ``(B,)`` (higher is better)."""
        raise NotImplementedError

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        # ELBO's abstract per-particle hook; this family draws all particles at once in log_terms.
        raise NotImplementedError("LogWeightELBO draws its particles in log_terms")

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        terms = log_terms(model, guide, args, kwargs, self.num_particles)
        return -self.objective(terms).sum()

    def fast_loss(self, q: Any, x: Tensor, cond: Tensor | None) -> Tensor | None:
        d = q.draw(self.num_particles)
        return -self.objective(LogTerms(d.obs(), d.latent(), None)).sum()


def iwae_bound(log_weight: Tensor) -> Tensor:
    """log (1/K) sum_k w_k over dim 0: the importance-weighted bound L_K (Burda et al. 2015)."""
    return torch.logsumexp(log_weight, dim=0) - math.log(log_weight.shape[0])


# --------------------------------------------------------------------------- stopped (score-free) terms


class _ScoredDetached(TorchDistribution):
    """``base`` whose ``log_prob`` (and sampling) runs with ``module``'s parameters detached.

    A distribution may call its module's networks lazily: a ``TransformedDistribution`` with
    conditional autoregressive transforms (an IAF guide, a flow prior) evaluates them only when Pyro
    scores the trace, after the program has returned. Holding the module here keeps every such
    call detached, whenever it happens.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}

    def __init__(self, base: Any, module: torch.nn.Module) -> None:
        self.base = base
        self.module = module
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return bool(self.base.has_rsample)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return self.base.support

    def expand(self, batch_shape: Any, _instance: Any = None) -> _ScoredDetached:
        return _ScoredDetached(self.base.expand(batch_shape), self.module)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        with detached_parameters(self.module):
            return self.base.sample(torch.Size(sample_shape))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        with detached_parameters(self.module):
            return self.base.rsample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        with detached_parameters(self.module):
            return self.base.log_prob(value)


class _Detach(Messenger):
    """Every sample site of the enclosed program scores (and samples) with ``module``'s parameters detached."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def _process_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and not site_is_subsample(msg) and not isinstance(msg["fn"], _ScoredDetached):
            msg["fn"] = _ScoredDetached(msg["fn"], self.module)


def _frozen(module: Callable[..., Any]) -> Callable[..., Any]:
    """``module`` run with its parameters detached: same values, no gradient to them.

    The parameters are detached while the program runs and again whenever Pyro later scores or
    samples one of its sites (:class:`_ScoredDetached`), so a log-density computed lazily (a flow's
    ``TransformedDistribution``) is a function of the draws only, never of the live parameters.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{module!r} must be an nn.Module to freeze its parameters (pyro_vae models and guides are)")

    def run(*args: Any, **kwargs: Any) -> Any:
        with _Detach(module), detached_parameters(module):
            return module(*args, **kwargs)

    return run


def _latent_sites(tr: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        (n, s)
        for n, s in tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]


def _replay_trace(values: dict[str, Tensor], sites: list[tuple[str, dict[str, Any]]]) -> Any:
    tr = poutine.Trace()
    for name, site in sites:
        tr.add_node(name, type="sample", is_observed=False, value=values[name], infer=site["infer"])
    return tr


@dataclass
class StoppedTerms:
    """:class:`LogTerms` with log q(z|x) evaluated at the guide's parameters *detached*.

    ``roots[name] = (z, scale)``: the latent draw through which every pathwise gradient reaches the
    guide (a copy of the reparameterized sample, so a gradient hook on it affects nothing else) and
    the site's ``poutine.scale`` (beta). ``stopped`` is False when the KL weight was below 1 and
    log q was scored at the live parameters instead (see :func:`stopped_log_terms`).
    """

    terms: LogTerms
    roots: dict[str, tuple[Tensor, Any]]
    stopped: bool = True


def stopped_log_terms(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    below_one: Literal["live", "stopped"] = "stopped",
) -> StoppedTerms:
    """K reparameterized draws z ~ q(z|x) and log-weights with the score term stopped.

    log w_k = log p(x, z_k) - log q_{stop(phi)}(z_k|x): the value is the usual log-weight, but the
    guide parameters phi get gradient only through z_k (the "path derivative" of Roeder et al. 2017
    and Tucker et al. 2018). Needs a reparameterized guide whose ``log_prob`` can score a given z.

    ``below_one="live"``: when a latent site's KL weight (its ``poutine.scale``, beta times a KL
    schedule's factor) is below 1, log q is scored at the live parameters on the same draws
    instead, so the guide gets the plain reparameterized gradient of the same weighted bound
    (``stopped`` is then False). Without the score term, the pathwise gradient of -beta log q has
    variance of order beta / sigma; with beta near 0 nothing keeps q's scale sigma from collapsing,
    and once beta grows the guide gradient explodes. The full reparameterized gradient of
    log q(z(eps)) does not depend on eps for a Gaussian, so it stays finite.
    """
    dim = -MAX_PLATE_NESTING - 1
    live = poutine.trace(_vectorized(guide, num_particles, dim)).get_trace(*args, **kwargs)
    sites = _latent_sites(live)
    for name, site in sites:
        if not getattr(site["fn"], "has_rsample", False):
            raise ValueError(
                f"latent site {name!r} is not reparameterized ({type(site['fn']).__name__}); "
                "dreg, stl and piwae need a guide with rsample; use elbo.kind: score_function instead"
            )
    if below_one == "live" and any(float(site["scale"]) < 1.0 for _, site in sites):
        replay = _replay_trace({n: s["value"] for n, s in sites}, sites)
        terms = log_terms(model, poutine.replay(guide, trace=replay), args, kwargs, num_particles)
        return StoppedTerms(terms, {n: (s["value"], s["scale"]) for n, s in sites}, stopped=False)
    roots = {name: (site["value"].clone(), site["scale"]) for name, site in sites}
    replay = _replay_trace({n: z for n, (z, _) in roots.items()}, sites)
    terms = log_terms(model, poutine.replay(_frozen(guide), trace=replay), args, kwargs, num_particles)
    return StoppedTerms(terms, roots)


def scale_grad(z: Tensor, factor: Tensor) -> None:
    """Multiply the gradient reaching ``z`` (shape ``(K, B, *event)``) by ``factor`` ``(K, B)``."""
    if z.requires_grad:
        f = factor.reshape(factor.shape + (1,) * (z.dim() - factor.dim()))
        z.register_hook(lambda g: g * f)


_scale_grad = scale_grad

_F = TypeVar("_F", bound=Callable[..., Any])


def needs_density(factory: _F) -> _F:
    """Mark an estimator factory whose guide gradient needs log q(z|x): the spec refuses a point-mass guide."""
    factory.needs_density = True  # type: ignore[attr-defined]
    return factory


def refuse_point_mass(guide: Any, kind: str, why: str) -> None:
    """Refuse a point-mass guide (``is_point_mass``) for an estimator whose guide gradient needs log q."""
    if getattr(guide, "is_point_mass", False):
        raise SpecError(f"elbo.kind: {kind} needs a guide with a density, but guide.kind: delta is a point mass: {why}")


_needs_density = refuse_point_mass


def num_points(args: tuple[Any, ...]) -> int:
    """The batch size of ``(x, ...)`` (1 for a scalar or no data)."""
    return int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1


__all__ = [
    "MAX_PLATE_NESTING",
    "DifferentiableLossMixin",
    "DirectForm",
    "LogTerms",
    "LogWeightELBO",
    "StoppedTerms",
    "has_direct_form",
    "iwae_bound",
    "log_terms",
    "needs_density",
    "num_points",
    "refuse_point_mass",
    "scale_grad",
    "stopped_log_terms",
]
