"""A user's own Pyro model/guide pair as a model: ``model: {kind: pyro, program: "mypkg.mymodel:build"}``.

The program gets training, ``evaluate``, ``compare``, ``gradients``, ``diagnose`` and ``sample``
unchanged: :class:`ProgramVAE` gives it the interface those use (``model``, ``guide``, ``guide.dist``,
``set_kl_weight``, ``posterior_mean``, ``decode_mean``, ...), each computed from Pyro traces of the
user's functions, so every bound goes through the traced path (:func:`pyro_vae.estimators.log_terms`).

Contract (checked when the model is built, by one traced call on a batch; a program that breaks it
is one :class:`~pyro_vae.errors.SpecError` line naming the missing site, plate or wrong shape):

- ``program`` is ``"module:attribute"``; the attribute is a function (or class) ``build``, called
  with the spec's ``options`` as keyword arguments, plus ``event_shape`` (the shape of one data point)
  when it has a parameter of that name. It returns ``(model, guide)`` or an object with ``.model``
  and ``.guide`` (an ``nn.Module`` holding both as methods, say).
- ``model(x)`` and ``guide(x)`` take a batch ``x`` of shape ``(B, *event_shape)``; inside
  ``pyro.plate("data", B)`` the model samples ``z`` (event dim 1: ``(latent_dim,)``) and observes
  ``pyro.sample("x", p(x|z), obs=x)`` with event shape ``event_shape``; the guide samples ``z`` from
  q(z|x) with the same shapes. Other latent sites must appear in both programs.
- Parameters live in ``nn.Module``\\ s or ``PyroModule``\\ s (the callables are modules, or methods of
  modules, or the returned object is one), never in Pyro's global parameter store, so the checkpoint
  is a ``state_dict``. The programs run with ``pyro.settings`` ``module_local_params=True``.
- Leading batch dimensions broadcast: the estimators draw K particles in a plate at dim -2, so ``z``
  may arrive as ``(K, B, latent_dim)`` (write ``z.shape[:-1]``, not ``B``).

Example (the linear-Gaussian model of Burda et al. 2016's verification, exact log p(x) known)::

    class LinearGaussian(nn.Module):
        def __init__(self, event_shape, latent_dim=2):
            super().__init__()
            d = event_shape[0]
            self.dec, self.enc_loc = nn.Linear(latent_dim, d), nn.Linear(d, latent_dim)
            self.enc_scale = nn.Parameter(torch.zeros(latent_dim))

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.enc_scale.shape), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(self.enc_loc(x), self.enc_scale.exp()).to_event(1))

    def build(event_shape, latent_dim=2):
        return LinearGaussian(event_shape, latent_dim)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from torch import nn

from .. import plugins
from .._typing import Shape, Tensor
from ..errors import DataError, SpecError
from ..registry import register
from .vae import ModelGuidePair, _mean

#: Points in the batch of the build-time check (a size no other dimension is likely to have).
CHECK_POINTS = 3
#: Particles of the build-time check of vectorization (the estimators' particle plate at dim -2).
CHECK_PARTICLES = 2


@contextmanager
def _local_params() -> Iterator[None]:
    """``PyroModule`` parameters stay in their modules (not Pyro's global store) while a program runs."""
    with pyro.settings.context(module_local_params=True):
        yield


class _ScaleLatent(Messenger):
    """Multiplies the scale of every unobserved sample site by ``beta`` (the KL weight of a beta-VAE)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: Message) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


def _owner(fn: Callable[..., Any]) -> nn.Module | None:
    """The module holding ``fn``'s parameters: ``fn`` itself, or the module ``fn`` is a method of."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ProgramModel(nn.Module):
    """The user's ``model(x)`` as a module: its parameters, ``kl_weight`` on every latent site.

    ``likelihood`` is what the training loop and ``evaluate`` ask of p(x|z) (:class:`ProgramLikelihood`).
    """

    _fn: Callable[..., Any]
    likelihood: ProgramLikelihood

    def __init__(self, fn: Callable[..., Any], likelihood: ProgramLikelihood) -> None:
        super().__init__()
        self.program = _owner(fn)  # registered as a submodule when it is one: parameters, state_dict
        object.__setattr__(self, "_fn", fn)  # the callable itself, not registered a second time
        object.__setattr__(self, "likelihood", likelihood)
        self.kl_weight = 1.0

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Any:
        if cond is not None:
            raise ValueError("a Pyro program (model.kind: pyro) takes no condition y")
        scale = _ScaleLatent(self.kl_weight) if self.kl_weight != 1.0 else nullcontext()
        with _local_params(), scale:
            return self._fn(x)

    def prior_dist(self, cond: Tensor | None = None) -> Any:
        """Not available: a program's prior is inside its model function (estimators that need p(z)
        as a distribution, e.g. ``free_bits``, do not apply)."""
        raise SpecError("this estimator needs the prior p(z) as a distribution; a Pyro program (model.kind: pyro) "
                        "keeps it inside its model: use elbo.kind trace, iwae, renyi, dreg, stl or score_function")  # fmt: skip


class ProgramGuide(nn.Module):
    """The user's ``guide(x)`` as a module; :meth:`dist` is q(z|x) read from a trace of it."""

    _fn: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any], latent_dim: int, point_mass: bool = False) -> None:
        super().__init__()
        self.program = _owner(fn)
        object.__setattr__(self, "_fn", fn)
        self.latent_dim = latent_dim
        self.is_point_mass = point_mass  # a Delta q(z|x): point scores, not bounds (evaluate's Measure)
        self.kl_weight = 1.0

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Any:
        if cond is not None:
            raise ValueError("a Pyro program (model.kind: pyro) takes no condition y")
        scale = poutine.scale(scale=self.kl_weight) if self.kl_weight != 1.0 else nullcontext()
        with _local_params(), scale:
            return self._fn(x)

    def dist(self, x: Tensor, cond: Tensor | None = None) -> dist.Distribution:
        """q(z|x) for a batch ``x``: the distribution of the guide's ``z`` site (batch ``(B,)``, event ``(latent_dim,)``)."""
        if cond is not None:
            raise ValueError("a Pyro program (model.kind: pyro) takes no condition y")
        with _local_params():
            tr = poutine.trace(self._fn).get_trace(x)
        fn: Any = tr.nodes["z"]["fn"]
        return fn  # type: ignore[no-any-return]


class ProgramLikelihood:
    """What the training loop and ``evaluate`` ask of p(x|z), answered by tracing the model."""

    def __init__(self, event_shape: Shape) -> None:
        self.event_shape = tuple(event_shape)
        self.model: ProgramModel | None = None  # set once the model exists

    def check_data(self, x: Tensor, where: str = "data") -> None:
        """Refuse data of another shape, or outside the support of the program's ``x`` site."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"{where}: points of shape {tuple(x.shape[1:])}, but the Pyro program was built for "
                f"event_shape {self.event_shape}"
            )
        assert self.model is not None
        xb = x[:256]
        with torch.no_grad():
            tr = poutine.trace(self.model).get_trace(xb)
        fn: Any = tr.nodes["x"]["fn"]
        inside = fn.support.check(xb)
        if not bool(inside.all()):
            raise DataError(
                f"{where}: values outside the support of the program's 'x' site ({type(fn).__name__}, support "
                f"{fn.support}); transform the data (e.g. data.binarize) or change p(x|z)"
            )

    def normalized_on(self, x: Tensor) -> bool:
        """A program's p(x|z) is taken as a normalized density or mass on data inside its support."""
        return True


class ProgramVAE(ModelGuidePair):
    """A user's Pyro program with the interface of :class:`~pyro_vae.models.vae.VAE`.

    ``model(x)`` and ``guide(x)`` are the user's functions (wrapped: parameters, KL weight); every
    convenience is computed from traces: ``posterior_mean`` from the guide's ``z`` site,
    ``decode_mean(z)`` from the mean of the model's ``x`` site with ``z`` fixed, ``sample(n)`` with z
    drawn by the model itself.
    """

    def __init__(self, model: ProgramModel, guide: ProgramGuide, event_shape: Shape) -> None:
        super().__init__()
        self.model = model
        self.guide = guide
        self.event_shape = tuple(event_shape)

    def cond(self, y: Tensor | None) -> Tensor | None:
        """A program is unconditional: labels are not passed to it."""
        return None

    def _template(self, n: int) -> Tensor:
        """A batch of ``n`` zero points: the model's ``x`` argument where only its shape matters."""
        p = next(self.parameters(), None)
        return torch.zeros((n, *self.event_shape), dtype=p.dtype if p is not None else None,
                           device=p.device if p is not None else None)  # fmt: skip

    @torch.no_grad()
    def decode_mean(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """E[x|z]: the mean of the model's ``x`` site with ``z`` fixed, ``z`` of shape ``(N, latent_dim)``."""
        with _local_params():
            tr = poutine.trace(poutine.condition(self.model, data={"z": z})).get_trace(self._template(len(z)))
        return _site_mean(tr.nodes["x"]["fn"])

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] at the posterior mean of q(z|x)."""
        return self.decode_mean(self.posterior_mean(x))

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """E[x|z] for ``n`` draws z ~ p(z) (the model run on ``n`` placeholder points)."""
        with _local_params():
            tr = poutine.trace(self.model).get_trace(self._template(n))
        return _site_mean(tr.nodes["x"]["fn"])

    @torch.no_grad()
    def posterior_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return _mean(self.guide.dist(x))


def _site_mean(fn: Any) -> Tensor:
    try:
        return fn.mean  # type: ignore[no-any-return]
    except NotImplementedError:
        return fn.sample()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- building and checking


def load_program(ref: str) -> Callable[..., Any]:
    """The ``build`` callable named by ``"module:attribute"`` (the attribute may be dotted)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"model.program: {ref!r} is not 'module:function' (e.g. mypkg.mymodel:build)")
    module = plugins.import_module(module_name, "model.program")  # as a plugin: the working directory is searched too
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"model.program: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"model.program: {ref} is a {type(obj).__name__}, not a callable build function")
    return obj  # type: ignore[no-any-return]


def _call_build(build: Callable[..., Any], ref: str, event_shape: Shape, options: Mapping[str, Any]) -> Any:
    kwargs = dict(options)
    try:
        sig = inspect.signature(build)
    except (TypeError, ValueError):  # a builtin without a signature: options only
        sig = None
    if sig is not None:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if "event_shape" in sig.parameters or takes_any:
            kwargs.setdefault("event_shape", tuple(event_shape))
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            raise SpecError(f"model.options: {ref} cannot take {sorted(kwargs)}: {e}") from None
    try:
        with _local_params():
            return build(**kwargs)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001  # the user's code may raise anything: one line naming the rule
        raise SpecError(f"model.program: {ref}(...) raised {type(e).__name__}: {' '.join(str(e).split())}") from None


def _split(result: Any, ref: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    if isinstance(result, tuple) and len(result) == 2:
        model, guide = result
    elif hasattr(result, "model") and hasattr(result, "guide"):
        model, guide = result.model, result.guide
    else:
        raise SpecError(
            f"model.program: {ref} returned {type(result).__name__}; expected (model, guide) or an object with "
            ".model and .guide"
        )
    for name, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise SpecError(f"model.program: {ref} returned a {name} that is a {type(fn).__name__}, not callable")
    return model, guide


def _in_data_plate(site: Mapping[str, Any], size: int) -> bool:
    return any(f.name == "data" and f.size == size for f in site["cond_indep_stack"])


def _shapes(fn: Any) -> str:
    return f"batch shape {tuple(fn.batch_shape)}, event shape {tuple(fn.event_shape)}"


def check_program(
    model: Callable[..., Any], guide: Callable[..., Any], event_shape: Shape, ref: str
) -> tuple[int, bool]:
    """One traced call of the guide and the model replayed on it, on a batch of :data:`CHECK_POINTS`
    zero points, then one with :data:`CHECK_PARTICLES` particles in a plate at dim -2 (as the estimators
    run them). Returns ``(latent_dim, the guide is a point mass)``; raises :class:`SpecError` naming the
    first broken rule of the contract (:mod:`pyro_vae.models.program`)."""
    b, where = CHECK_POINTS, f"model.program {ref}"
    x = torch.zeros((b, *event_shape))
    store = set(pyro.get_param_store().keys())
    try:
        with _local_params(), torch.no_grad():
            g_tr = poutine.trace(guide).get_trace(x)
            m_tr = poutine.trace(poutine.replay(model, trace=g_tr)).get_trace(x)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001  # the user's code may raise anything: one line naming the rule
        raise SpecError(
            f"{where}: running guide(x) and model(x) on a batch x of shape {tuple(x.shape)} failed: "
            f"{type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    added = sorted(set(pyro.get_param_store().keys()) - store)
    if added:
        raise SpecError(
            f"{where}: parameter {added[0]!r} is in Pyro's global parameter store (pyro.param outside a module); "
            "keep parameters in an nn.Module or PyroModule"
        )
    g_sites = {n: s for n, s in g_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    m_sites = {n: s for n, s in m_tr.nodes.items() if s["type"] == "sample"}
    if "z" not in g_sites:
        raise SpecError(
            f"{where}: the guide has no sample site 'z' (pyro.sample('z', q(z|x)) inside pyro.plate('data'))"
        )
    if "z" not in m_sites or m_sites["z"]["is_observed"]:
        raise SpecError(
            f"{where}: the model has no latent sample site 'z' (pyro.sample('z', p(z)) inside pyro.plate('data'))"
        )
    if "x" not in m_sites:
        raise SpecError(
            f"{where}: the model has no sample site 'x' (pyro.sample('x', p(x|z), obs=x) inside pyro.plate('data'))"
        )
    if not m_sites["x"]["is_observed"]:
        raise SpecError(f"{where}: the model's site 'x' is not observed (pass obs=x)")
    for prog, sites in (("guide", g_sites), ("model", m_sites)):
        for name in ("z", "x") if prog == "model" else ("z",):
            if not _in_data_plate(sites[name], b):
                raise SpecError(
                    f"{where}: the {prog}'s site {name!r} is not inside pyro.plate('data', len(x)) (a plate named 'data' "
                    f"of size {b} for a batch of {b} points)"
                )
    qz: Any = g_sites["z"]["fn"]
    pz: Any = m_sites["z"]["fn"]
    px: Any = m_sites["x"]["fn"]
    for prog, fn in (("guide", qz), ("model", pz)):
        if tuple(fn.batch_shape) != (b,) or len(fn.event_shape) != 1:
            raise SpecError(
                f"{where}: the {prog}'s site 'z' has {_shapes(fn)}; expected batch shape ({b},) (one per point) and "
                "event shape (latent_dim,) (use .to_event(1))"
            )
    if tuple(qz.event_shape) != tuple(pz.event_shape):
        raise SpecError(
            f"{where}: site 'z' has event shape {tuple(pz.event_shape)} in the model but {tuple(qz.event_shape)} in the guide"
        )
    if tuple(px.batch_shape) != (b,) or tuple(px.event_shape) != tuple(event_shape):
        raise SpecError(
            f"{where}: the model's site 'x' has {_shapes(px)}; expected batch shape ({b},) and event shape "
            f"{tuple(event_shape)} (one data point: .to_event({len(event_shape)}))"
        )
    extra = sorted(n for n, s in m_sites.items() if not s["is_observed"] and n not in g_sites)
    if extra:
        raise SpecError(
            f"{where}: the model's latent site {extra[0]!r} has no counterpart in the guide; sample it there too"
        )
    try:
        with _local_params(), torch.no_grad(), pyro.plate("_particles", CHECK_PARTICLES, dim=-2):
            gv = poutine.trace(guide).get_trace(x)
            mv = poutine.trace(poutine.replay(model, trace=gv)).get_trace(x)
        fx: Any = mv.nodes["x"]["fn"]
        got = tuple(fx.batch_shape)
    except Exception as e:  # noqa: BLE001  # the user's code may raise anything: one line naming the rule
        raise SpecError(
            f"{where}: the program does not run with {CHECK_PARTICLES} particles in a plate at dim -2, as the estimators "
            f"run it (z of shape {(CHECK_PARTICLES, b, qz.event_shape[0])}): {type(e).__name__}: "
            f"{' '.join(str(e).split())}; let leading batch dimensions broadcast (z.shape[:-1], not len(x))"
        ) from None
    if got != (CHECK_PARTICLES, b):
        raise SpecError(
            f"{where}: with particles at dim -2 the model's site 'x' has batch shape {got}; expected {(CHECK_PARTICLES, b)}"
        )
    point_mass = isinstance(getattr(qz, "base_dist", qz), dist.Delta)
    return int(qz.event_shape[0]), point_mass


def program_vae(
    model: Callable[..., Any], guide: Callable[..., Any], event_shape: Shape, ref: str = "program"
) -> ProgramVAE:
    """A :class:`ProgramVAE` from a model/guide pair (checked against the contract first); for use in Python."""
    latent_dim, point_mass = check_program(model, guide, tuple(event_shape), ref)
    owners = [m for m in (_owner(model), _owner(guide)) if m is not None]
    if not any(True for m in owners for _ in m.parameters()):
        raise SpecError(
            f"model.program {ref}: no parameters in modules: the model and guide must be nn.Modules (or PyroModules) "
            "or methods of one, so that their parameters are trained and saved"
        )
    lik = ProgramLikelihood(event_shape)
    m = ProgramModel(model, lik)
    lik.model = m
    return ProgramVAE(m, ProgramGuide(guide, latent_dim, point_mass), event_shape)


@register("model", "pyro", context=("event_shape",))
def pyro_program(
    *,
    event_shape: Shape,
    program: str,  # "module:function": build(**options[, event_shape]) -> (model, guide) or an object with both
    options: dict[str, Any] = {},  # noqa: B006  # keyword arguments of build (latent_dim, widths, ...)
) -> ProgramVAE:
    """A hand-written Pyro model/guide pair (sites z, x; plate data): see pyro_vae/models/program.py."""
    build = load_program(program)
    model, guide = _split(_call_build(build, program, event_shape, options), program)
    return program_vae(model, guide, event_shape, program)


pyro_program.brings_guide = True  # type: ignore[attr-defined]  # the spec's guide is {kind: program}


@register("guide", "program")
def program_guide() -> Any:
    """The guide written in a Pyro program (model.kind: pyro); no other model takes it."""
    raise SpecError("guide.kind: program is the guide of a Pyro program (model.kind: pyro) only")


__all__ = ["ProgramGuide", "ProgramModel", "ProgramVAE", "check_program", "load_program", "program_vae", "pyro_program"]
