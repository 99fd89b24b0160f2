"""ELBO estimators built from the spec: Pyro's own and ours.

Conventions (the same for every estimator, so that they compare on equal footing):

- ``estimator(model, guide)`` is an ``nn.Module``; calling it on a batch returns the loss summed over
  the batch (Pyro's convention). The training loop divides by the batch size, so every reported
  number is in nats per data point and does not depend on batch or dataset size. The data plate is
  never subsampled, so Pyro's subsample scaling never enters a log-sum-exp.
- ``beta`` (``elbo.beta``) is applied by the model and guide as ``poutine.scale`` on the ``z`` site
  only: it weights ``log p(z) - log q(z|x)`` inside each particle's log-weight and never scales the
  log-sum-exp as a whole (for ``trace`` that is exactly ``E[log p(x|z)] - beta KL``).
- Pyro's ``RenyiELBO`` has no ``differentiable_loss`` (it calls ``backward`` itself and only when the
  param store holds parameters), so ``iwae`` and ``renyi`` are our own :class:`LogWeightELBO`
  subclasses; tests check them against ``RenyiELBO.loss`` on the same random draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.ops.provenance import detach_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ._typing import Interval, PositiveInt, Tensor, UnitInterval
from .errors import SpecError
from .registry import register

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


class LogWeightELBO(DifferentiableLossMixin, ELBO):
    """An estimator that is a function of the ``(K, B)`` log-weights; subclasses define :meth:`objective`.

    ``differentiable_loss`` returns ``-sum_b objective_b``; gradients flow through the
    reparameterized draws (the guide must be reparameterizable).
    """

    #: Capability: the loss is exactly ``-sum_b objective(log-weights)`` with plain reparameterized
    #: gradients, so :mod:`pyro_vae.fastpath` may compute it from its own log-weights. False for
    #: estimators whose gradient comes from a surrogate (dreg, stl, piwae).
    loss_is_objective: ClassVar[bool] = True

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



def iwae_bound(log_weight: Tensor) -> Tensor:
    """log (1/K) sum_k w_k over dim 0: the importance-weighted bound L_K (Burda et al. 2015)."""
    return torch.logsumexp(log_weight, dim=0) - math.log(log_weight.shape[0])


class IWAE_ELBO(LogWeightELBO):
    """L_K = E[log 1/K sum_k p(x, z_k) / q(z_k|x)]; K=1 is the ELBO. Gradients: plain reparameterized."""

    def objective(self, terms: LogTerms) -> Tensor:
        return iwae_bound(terms.log_weight)


class Renyi_ELBO(LogWeightELBO):
    """Variational Renyi bound (Li & Turner 2016): 1/(1-a) log 1/K sum_k w_k^(1-a); a=0 is IWAE."""

    def __init__(self, alpha: float, num_particles: int) -> None:
        super().__init__(num_particles)
        self.alpha = alpha

    def objective(self, terms: LogTerms) -> Tensor:
        return iwae_bound((1.0 - self.alpha) * terms.log_weight) / (1.0 - self.alpha)


@register("elbo", "trace")
def trace(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's Trace_ELBO: Monte Carlo ELBO, reparameterized gradients, particles vectorized."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


@register("elbo", "meanfield")
def meanfield(*, num_particles: PositiveInt = 1) -> ELBO:
    """Pyro's TraceMeanField_ELBO: analytic KL(q||p) where it exists, Monte Carlo otherwise (warned once)."""
    from .divergences import MeanField_ELBO  # a TraceMeanField_ELBO that warns when it falls back

    return MeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING)


@register("elbo", "iwae")
def iwae(*, num_particles: PositiveInt = 5) -> ELBO:
    """Importance-weighted bound L_K (Burda et al. 2015) = Renyi alpha=0, K vectorized particles."""
    return IWAE_ELBO(num_particles)


def _alpha_not_one(p: Mapping[str, Any]) -> None:
    if p["alpha"] == 1.0:
        raise SpecError("alpha: 1 is the plain ELBO, not allowed here; use elbo.kind: trace (or alpha != 1)")


@register("elbo", "renyi", check=_alpha_not_one)
def renyi(*, alpha: float = 0.5, num_particles: PositiveInt = 5) -> ELBO:
    """Renyi divergence bound (Li & Turner 2016) for any alpha != 1 (alpha=0: IWAE; alpha->1: ELBO)."""
    _alpha_not_one({"alpha": alpha})
    return Renyi_ELBO(alpha, num_particles)


# --------------------------------------------------------------------------- issue #4: more estimators
#
# Every estimator below follows the conventions at the top of this module: the loss is summed over
# the batch, beta is the z-site ``poutine.scale`` (it weights log p(z) - log q(z|x) inside each
# particle's log-weight; ``site["scale"]`` is read at run time, so KL schedules work), and the
# reported value is the bound itself even where the gradient comes from a surrogate.


@contextmanager
def _detached_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``module`` is its detached value (same numbers, no gradient)."""
    saved = [
        (owner, name, p) for owner in module.modules() for name, p in owner._parameters.items() if p is not None
    ]
    try:
        for owner, name, p in saved:
            owner._parameters[name] = p.detach()  # type: ignore[assignment]
        yield
    finally:
        for owner, name, p in saved:
            owner._parameters[name] = p


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
        with _detached_parameters(self.module):
            return self.base.sample(torch.Size(sample_shape))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        with _detached_parameters(self.module):
            return self.base.rsample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        with _detached_parameters(self.module):
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
        with _Detach(module), _detached_parameters(module):
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


_F = TypeVar("_F", bound=Callable[..., Any])


def needs_density(factory: _F) -> _F:
    """Mark an estimator factory whose guide gradient needs log q(z|x): the spec refuses a point-mass guide."""
    factory.needs_density = True  # type: ignore[attr-defined]
    return factory


def _needs_density(guide: Any, kind: str, why: str) -> None:
    """Refuse a point-mass guide (``is_point_mass``) for an estimator whose guide gradient needs log q."""
    if getattr(guide, "is_point_mass", False):
        raise SpecError(f"elbo.kind: {kind} needs a guide with a density, but guide.kind: delta is a point mass: {why}")


def _scale_grad(z: Tensor, factor: Tensor) -> None:
    """Multiply the gradient reaching ``z`` (shape ``(K, B, *event)``) by ``factor`` ``(K, B)``."""
    if z.requires_grad:
        f = factor.reshape(factor.shape + (1,) * (z.dim() - factor.dim()))
        z.register_hook(lambda g: g * f)


class DReG_ELBO(LogWeightELBO):
    """Doubly reparameterized gradients of the IWAE bound (Tucker, Lawson, Gu & Maddison 2018).

    Value: L_K, the same bound as :class:`IWAE_ELBO`. Gradients: the model (decoder, prior) gets the
    IWAE gradient sum_k w~_k grad log w_k. While the KL weight beta (``elbo.beta`` times the KL
    schedule's factor) is at least 1, the guide gets

        sum_k [(1 - beta) w~_k + beta w~_k^2] d log w_k / d z_k  d z_k / d phi

    with log q scored at detached parameters and w~ the normalized weights. For beta = 1 this is
    Tucker et al.'s w~^2 estimator; the (1 - beta) w~ part makes it unbiased for the beta-weighted
    bound too (the score term it removes is scaled by beta). Unbiased, and its guide-gradient SNR does
    not vanish as K grows (IWAE's falls like 1/sqrt(K), Rainforth et al. 2018).
    While beta < 1 (a KL warm-up, a cyclical schedule's ramp, beta-VAE with beta < 1) the guide gets
    the plain reparameterized IWAE gradient of the same weighted bound on the same draws: the
    score-free form has variance of order beta / sigma there and explodes once q's scale sigma has
    collapsed at small beta (:func:`stopped_log_terms`).
    One latent site only (a hierarchical guide needs the per-layer form of the estimator).
    """

    loss_is_objective = False  # a surrogate loss: the guide's gradient is not the bound's

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        _needs_density(guide, "dreg", "its identity replaces the score of a density; use elbo.kind: iwae")
        st = stopped_log_terms(model, guide, args, kwargs, self.num_particles, below_one="live")
        if len(st.roots) != 1:
            raise NotImplementedError(f"dreg supports guides with one latent site, got {sorted(st.roots)}")
        lw = st.terms.log_weight
        if st.stopped:
            w = torch.softmax(lw.detach(), dim=0)
            for z, scale in st.roots.values():  # d(-L_K)/dz_k carries w~_k already: times (1 - beta) + beta w~_k
                _scale_grad(z, (1.0 - scale) + scale * w)
        return -iwae_bound(lw).sum()


class STL_ELBO(LogWeightELBO):
    """Sticking the landing (Roeder, Wu & Duvenaud 2017): the ELBO with the score term dropped.

    Value: the K-sample average ELBO (the same as ``trace``). While the KL weight beta is at least 1
    the guide gets only the path derivative through z (log q scored at detached parameters):
    unbiased, since E_q[grad log q] = 0, and zero variance when q equals the posterior. While beta < 1
    (a KL warm-up or schedule, beta-VAE with beta < 1) it gets the plain reparameterized gradient of
    the weighted ELBO on the same draws, for the reason given in :func:`stopped_log_terms`.
    """

    loss_is_objective = False  # a surrogate loss: the guide's gradient is not the bound's

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        st = stopped_log_terms(model, guide, args, kwargs, self.num_particles, below_one="live")
        return -st.terms.log_weight.mean(0).sum()


def miwae_bound(log_weight: Tensor, num_groups: int) -> Tensor:
    """(1/M) sum_m L_K over M groups of K particles, from ``(M*K, B)`` log-weights."""
    lw = log_weight.reshape(num_groups, -1, *log_weight.shape[1:])
    return (torch.logsumexp(lw, dim=1) - math.log(lw.shape[1])).mean(0)


class MIWAE_ELBO(LogWeightELBO):
    """MIWAE(M, K) (Rainforth et al. 2018): the average of M independent IWAE bounds of K particles.

    M=1 is IWAE; K=1 is the M-sample ELBO. ``num_particles`` here is K per group (M*K draws in all).
    """

    def __init__(self, num_particles: int, num_groups: int) -> None:
        super().__init__(num_particles * num_groups)
        self.num_groups = num_groups

    def objective(self, terms: LogTerms) -> Tensor:
        return miwae_bound(terms.log_weight, self.num_groups)


class CIWAE_ELBO(LogWeightELBO):
    """CIWAE (Rainforth et al. 2018): mix * ELBO + (1 - mix) * L_K on the same K draws.

    mix = 1 is the K-sample ELBO (``trace``), mix = 0 is IWAE. (Called beta in the paper; here
    ``mix``, since ``elbo.beta`` is the KL weight.)
    """

    def __init__(self, num_particles: int, mix: float) -> None:
        super().__init__(num_particles)
        self.mix = mix

    def objective(self, terms: LogTerms) -> Tensor:
        lw = terms.log_weight
        return self.mix * lw.mean(0) + (1.0 - self.mix) * iwae_bound(lw)


class PIWAE_ELBO(LogWeightELBO):
    """PIWAE (Rainforth et al. 2018): the model trains on IWAE, the guide on MIWAE, same draws.

    With M groups of K particles: the model (decoder, prior) parameters get the gradient of L_{MK}
    (IWAE over all M*K draws) and the guide parameters the gradient of MIWAE(M, K) (K=1: the ELBO).
    One surrogate loss carries both, so the ordinary optimizer and training loop work:

        loss = -(L_MK[model live, draws and q frozen] + MIWAE[model frozen, guide live]
                 - stop(MIWAE))

    whose value is -L_MK. Parameters are grouped by the program they belong to (model vs guide); the
    guide's parameters get MIWAE's gradient only, also where the model uses them (a VampPrior).
    """

    loss_is_objective = False  # a surrogate loss: the guide's gradient is not the bound's

    def __init__(self, num_particles: int, num_groups: int) -> None:
        super().__init__(num_particles * num_groups)
        self.num_groups = num_groups

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        k = self.num_particles
        guide_side = log_terms(_frozen(model), guide, args, kwargs, k)
        sites = _latent_sites(guide_side.guide_trace)
        replay = _replay_trace({n: s["value"].detach() for n, s in sites}, sites)
        # The guide's parameters are detached on the model side wherever they appear: in q, and in a
        # prior built from the guide (a VampPrior mixes q at pseudo-inputs), so they train on MIWAE only.
        with _detached_parameters(guide) if isinstance(guide, torch.nn.Module) else nullcontext():
            model_side = log_terms(model, poutine.replay(_frozen(guide), trace=replay), args, kwargs, k)
        enc = miwae_bound(guide_side.log_weight, self.num_groups)
        dec = iwae_bound(model_side.log_weight)
        return -(dec + enc - enc.detach()).sum()


class _NoRsample(TorchDistribution):
    """``base`` drawn without a pathwise gradient (``has_rsample = False``), surviving ``expand``.

    ``base.has_rsample_(False)`` would not do: ``Independent``/``TransformedDistribution`` expose it
    as a read-only property and plates' ``expand`` drops the flag.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    has_rsample = False

    def __init__(self, base: Any) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return self.base.support

    def expand(self, batch_shape: Any, _instance: Any = None) -> _NoRsample:
        return _NoRsample(self.base.expand(batch_shape))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        return self.base.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)


class _DetachedSampling(Messenger):
    """Make every latent sample site of a program non-reparameterized (score-function gradients)."""

    def _pyro_sample(self, msg: Any) -> None:
        if not (msg["is_observed"] or site_is_subsample(msg) or isinstance(msg["fn"], _NoRsample)):
            msg["fn"] = _NoRsample(msg["fn"])


class ScoreFunction_ELBO(DifferentiableLossMixin, TraceGraph_ELBO):
    """Likelihood-ratio (REINFORCE) gradients of the ELBO via Pyro's ``TraceGraph_ELBO`` (seed 001).

    The guide is run with every latent site made non-reparameterized, so the guide gets
    grad log q(z|x) * (downstream cost - baseline), Rao-Blackwellized over the data plate; the model
    gets the usual pathwise gradient. ``baseline=True`` subtracts a decaying average (``baseline_beta``)
    of the per-point log-weight from every point's downstream cost; the average is kept in this
    object rather than Pyro's global param store (whose entry has a fixed shape, which breaks when
    the last batch is smaller). Adds the ``differentiable_loss`` that ``TraceGraph_ELBO`` lacks
    (value: the ELBO; gradient: the surrogate) so it works as an ``elbo(model, guide)`` module.
    beta (the z site's scale) weights log p(z) - log q(z|x) in the downstream cost; Pyro leaves the
    score function itself unscaled, so the gradient is unbiased for the beta-weighted ELBO (tested
    against the reparameterized gradient's mean).
    """

    def __init__(self, num_particles: int = 1, baseline: bool = True, baseline_beta: float = 0.9) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING, vectorize_particles=True)
        self.baseline = baseline
        self.baseline_beta = baseline_beta
        self.average: float | None = None  # decaying average of the per-point log-weight
        self._score: Tensor | float = 0.0  # sum of log q(z|x) over the last draws (the score function)

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        self._score = 0.0
        for _, site in _latent_sites(guide_trace):
            score = site["score_parts"].score_function  # log q(z|x), unscaled; 0 for reparameterized sites
            if isinstance(score, torch.Tensor):
                self._score = self._score + detach_provenance(score).sum()
        return model_trace, guide_trace

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        _needs_density(guide, "score_function", "its score is 0 and the guide would get no gradient; use elbo.kind: trace")
        elbo, surrogate = self._loss_and_surrogate_loss(model, _DetachedSampling()(guide), args, kwargs)
        if self.baseline:
            if self.average is not None:  # surrogate ELBO -= b * score: the cost minus b, per point
                surrogate = surrogate + self.average * self._score / self.num_particles
            mean = float(elbo.detach()) / max(_num_points(args), 1)
            b = self.baseline_beta
            self.average = mean if self.average is None else b * self.average + (1 - b) * mean
        self._score = 0.0
        loss = -elbo
        return surrogate + (loss - surrogate).detach()



def _num_points(args: tuple[Any, ...]) -> int:
    return int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1


@register("elbo", "dreg")
@needs_density
def dreg(*, num_particles: PositiveInt = 5) -> ELBO:
    """IWAE bound L_K with doubly reparameterized guide gradients (Tucker et al. 2018); IWAE's while the KL weight < 1."""
    return DReG_ELBO(num_particles)


@register("elbo", "stl")
def stl(*, num_particles: PositiveInt = 1) -> ELBO:
    """ELBO with sticking-the-landing guide gradients (Roeder et al. 2017); the plain ones while the KL weight < 1."""
    return STL_ELBO(num_particles)


@register("elbo", "miwae")
def miwae(*, num_particles: PositiveInt = 5, num_groups: PositiveInt = 2) -> ELBO:
    """MIWAE(M, K): mean of M=num_groups IWAE bounds of K=num_particles draws (Rainforth et al. 2018)."""
    return MIWAE_ELBO(num_particles, num_groups)


@register("elbo", "ciwae")
def ciwae(*, num_particles: PositiveInt = 5, mix: UnitInterval = 0.5) -> ELBO:
    """CIWAE: mix * ELBO + (1 - mix) * IWAE on the same K draws (Rainforth et al. 2018's beta)."""
    return CIWAE_ELBO(num_particles, mix)


@register("elbo", "piwae")
def piwae(*, num_particles: PositiveInt = 8, num_groups: PositiveInt = 8) -> ELBO:
    """PIWAE: model on IWAE over M*K draws, guide on MIWAE(M, K) (Rainforth et al. 2018)."""
    return PIWAE_ELBO(num_particles, num_groups)


@register("elbo", "score_function")
@needs_density
def score_function(
    *,
    num_particles: PositiveInt = 1,
    baseline: bool = True,
    baseline_beta: Annotated[float, Interval(0, 1, high_open=True)] = 0.9,
) -> ELBO:
    """Likelihood-ratio ELBO gradients (TraceGraph_ELBO), optional decaying-average baseline."""
    return ScoreFunction_ELBO(num_particles, baseline, baseline_beta)
