"""Registry-wide verification: every estimator, guide, prior and likelihood, parametrized from the registry.

Each combination of ``elbo`` x ``guide`` x ``prior`` x ``likelihood`` the spec validator and builders
accept is checked against references written here by hand in float64 on the same random draws:

(a) the estimator's value equals its documented objective, computed from the components' own
    log-densities (``likelihood(decoder(z)).log_prob(x)``, ``prior_dist().log_prob(z)``,
    ``guide.dist(x).log_prob(z)``), which (d) and (e) check are normalized;
(b) its gradient is unbiased for its target: the mean of independent replicates against the mean of the
    reference objective's reparameterized gradient, a two-sample z-test per coordinate (|z| < Z_MAX),
    and a deliberately wrong gradient (scaled, or with the guide's part dropped) fails the same test;
(c) on the linear-Gaussian model (``network: mlp, hidden: []``, Gaussian likelihood) trained with each
    estimator under each KL schedule, held-out L_K rises towards the exact log p(x) of the trained
    model (probabilistic PCA, closed form) and never exceeds it beyond Monte Carlo error;
(d) every likelihood's density (or mass) integrates (sums) to 1 in 1-D on the sample space it declares;
(e) every prior's density integrates to 1 in 2-D.

Conditional priors (``conditional = True``: p(z|y)) are checked in a conditional VAE with a float
condition y. A combination the validator or a builder refuses (a ``SpecError``: a VampPrior of a point
mass or in a conditional VAE, free bits on a guide that does not factorize) is
skipped with that message as the reason. A newly registered component is covered with no new test
code, except an estimator, whose documented objective must be added to ``OBJECTIVES`` (the test
says so). A fast subset runs by default, in which every component appears at least once; the whole
sweep runs with ``-m slow``.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch

from pyro_vae.errors import DataError, SpecError
from pyro_vae.models.linear import exact_log_marginal, linear_decoder_parameters
from pyro_vae.registry import REGISTRY
from pyro_vae.spec import resolve_component
from pyro_vae.training.schedules import KLSchedule, kl_factor
from tests.models.test_priors import _grid_mass

ELBOS = REGISTRY.names("elbo")
GUIDES = REGISTRY.names("guide")
PRIORS = REGISTRY.names("prior")
LIKELIHOODS = REGISTRY.names("likelihood")
SCHEDULES = list(typing.get_args(KLSchedule))
EVENT = (1, 2, 2)  # tiny images: every likelihood (8-bit ones included) scores them
LATENT = 2
DEFAULT = {"guide": "diagonal_normal", "prior": "standard_normal", "likelihood": "gaussian"}
#: Small settings for components whose defaults are large (mixture/vamp components, particles).
SMALL = {
    ("prior", "mixture"): {"num_components": 3},
    ("prior", "vamp"): {"num_components": 3},
    ("prior", "conditional"): {"hidden": [4]},
    ("guide", "flow"): {"hidden": [4]},
    ("prior", "flow"): {"hidden": [4], "num_flows": 1},
}
PARTICLES = {"num_particles": 3}
GROUPS = {"num_groups": 2}


# --------------------------------------------------------------------------- references


def _lme(lw: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(lw_k) over dim 0."""
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0])


def _kl_or_mc(q: Any, p: Any, lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per point where a closed form is registered, else the per-draw Monte Carlo estimate
    averaged over draws (what TraceMeanField_ELBO does)."""
    try:
        return torch.distributions.kl_divergence(q, p.expand(q.batch_shape))
    except NotImplementedError:
        return (lq - lp).mean(0)


def _free_bits(c: dict, r: dict) -> torch.Tensor:
    """E_q[log p(x|z)] - beta * B * sum_j max(lam, KL_j), KL_j the batch mean of the per-dimension KL."""
    q, p, z = r["q"].base_dist, r["p"].base_dist, r["z"]
    if isinstance(q, torch.distributions.Normal) and isinstance(p, torch.distributions.Normal):
        kl = torch.distributions.kl_divergence(q, p).expand(z.shape)
    else:
        kl = q.log_prob(z) - p.log_prob(z)
    per_dim = kl.reshape(-1, kl.shape[-1]).mean(0)
    return r["obs"].mean(0).sum() - r["beta"] * r["obs"].shape[-1] * per_dim.clamp_min(c["lam"]).sum()


def _renyi(c: dict, lw: torch.Tensor) -> torch.Tensor:
    a = c["alpha"]
    return (_lme((1 - a) * lw) / (1 - a)).sum()


def _miwae(lw: torch.Tensor, m: int) -> torch.Tensor:
    return _lme(lw.reshape(m, -1, lw.shape[-1]).transpose(0, 1)).mean(0).sum()


#: Each estimator's documented objective (summed over the batch; higher is better) from the reference
#: quantities ``r``: ``lw`` (K, B) log-weights at the KL weight beta, ``obs``, ``lp``, ``lq``, ``q``,
#: ``p``, ``z``, ``beta``. ``(model objective, guide objective)`` where the parameter groups train on
#: different bounds (PIWAE). Targets of the gradient test are the same objectives.
OBJECTIVES: dict[str, Callable[[dict, dict], Any]] = {
    "trace": lambda c, r: r["lw"].mean(0).sum(),
    "stl": lambda c, r: r["lw"].mean(0).sum(),
    "score_function": lambda c, r: r["lw"].mean(0).sum(),
    "meanfield": lambda c, r: (r["obs"].mean(0) - r["beta"] * _kl_or_mc(r["q"], r["p"], r["lq"], r["lp"])).sum(),
    "iwae": lambda c, r: _lme(r["lw"]).sum(),
    "dreg": lambda c, r: _lme(r["lw"]).sum(),
    "renyi": lambda c, r: _renyi(c, r["lw"]),
    "miwae": lambda c, r: _miwae(r["lw"], c["num_groups"]),
    "ciwae": lambda c, r: (c["mix"] * r["lw"].mean(0) + (1 - c["mix"]) * _lme(r["lw"])).sum(),
    "piwae": lambda c, r: (_lme(r["lw"]).sum(), _miwae(r["lw"], c["num_groups"])),
    "free_bits": _free_bits,
}


def _draws(c: dict) -> int:
    return c.get("num_particles", 1) * c.get("num_groups", 1)


def _elbo_cfg(kind: str) -> dict:
    raw: dict[str, Any] = {"kind": kind}
    params = REGISTRY.get("elbo", kind).params
    raw.update({k: v for k, v in {**PARTICLES, **GROUPS}.items() if k in params})
    if kind == "score_function":
        raw["baseline"] = False  # the decaying baseline depends on earlier calls; tested in test_estimators_extra
    return resolve_component("elbo", raw, "elbo")


def _data(lik_kind: str, n: int, seed: int = 1) -> torch.Tensor:
    """Data on the likelihood's sample space (see :func:`_sample_space`)."""
    g = torch.Generator().manual_seed(seed)
    space = _sample_space(lik_kind)
    shape = (n, *EVENT)
    if space == "binary":
        return torch.randint(0, 2, shape, generator=g).double()
    if space == "levels":
        return torch.randint(0, 256, shape, generator=g).double() / 255
    if space == "unit":
        return 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _sample_space(lik_kind: str) -> str:
    """Where a likelihood is a normalized density or mass, probed with its own data checks: ``levels``
    (only the 256 values k/255), ``binary`` ({0, 1}: it scores other values in [0, 1], but not as a
    normalized likelihood), ``unit`` (a density on [0, 1]) or ``real``."""
    lik = REGISTRY.build("likelihood", resolve_component("likelihood", lik_kind, "likelihood"), event_shape=(3,))
    g = torch.Generator().manual_seed(0)
    grey = torch.tensor([0.1234, 0.5, 0.98765])

    def accepts(x: torch.Tensor) -> bool:
        try:
            lik.check_data(x)
        except DataError:
            return False
        return True

    if not accepts(grey):
        return "levels"
    normalized = getattr(lik, "normalized_on", lambda x: True)
    if not normalized(grey):
        return "binary"
    return "real" if accepts(3 * torch.randn(3, generator=g) - 2.0) else "unit"


COND = 2  # features of the condition y for conditional priors


def _conditional(prior: str) -> bool:
    return bool(getattr(REGISTRY.get("prior", prior).factory, "conditional", False))


def _build(guide: str, prior: str, likelihood: str, seed: int = 0):
    """A tiny float64 VAE of the combination (mlp [4], tanh), its parameters perturbed so that q is far
    from the posterior and every gradient is far from zero."""
    model = {
        "kind": "vae", "latent_dim": LATENT, "network": {"kind": "mlp", "hidden": [4], "activation": "tanh"},
        "prior": {"kind": prior, **SMALL.get(("prior", prior), {})}, "likelihood": {"kind": likelihood},
    }  # fmt: skip
    if _conditional(prior):  # p(z|y) lives in a conditional VAE; y a float tensor of COND features
        model.update(kind="cvae", condition="tensor", cond_dim=COND)
    torch.manual_seed(seed)
    cfg = resolve_component("model", model, "model")
    gcfg = resolve_component("guide", {"kind": guide, **SMALL.get(("guide", guide), {})}, "guide")
    vae = REGISTRY.build("model", cfg, event_shape=EVENT, guide=gcfg).double()
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vae


def _reference(vae: Any, x: torch.Tensor, y: torch.Tensor | None, c: dict, seed: int) -> Any:
    """The documented objective on the draws the estimator makes after ``pyro.set_rng_seed(seed)``:
    one vectorized draw of shape (draws, B, D) from q(z|x[, y]), scored by hand."""
    pyro.set_rng_seed(seed)
    q = vae.guide.dist(x, y)
    z = q.rsample((_draws(c),))
    p = vae.model.prior_dist(y)
    zy = z if y is None else torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1)  # the decoder sees (z, y)
    obs = vae.model.likelihood(vae.model.decoder(zy)).log_prob(x)
    lp, lq = p.log_prob(z), q.log_prob(z)
    beta = vae.model.kl_weight
    r = {"obs": obs, "lp": lp, "lq": lq, "q": q, "p": p, "z": z, "beta": beta, "lw": obs + beta * (lp - lq)}
    if c["kind"] not in OBJECTIVES:
        pytest.fail(f"elbo.kind {c['kind']!r} is registered but has no reference objective: add it to OBJECTIVES")
    return OBJECTIVES[c["kind"]](c, r)


def _combo(elbo: str, guide: str, prior: str, likelihood: str, beta: float = 1.0):
    """Build the combination, or skip with the refusal's message."""
    try:
        c = _elbo_cfg(elbo)
        vae = _build(guide, prior, likelihood)
        vae.set_kl_weight(beta)
        x = _data(likelihood, 5)
        y = (
            torch.randn(5, COND, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
            if _conditional(prior)
            else None
        )
        vae.model.likelihood.check_data(x)
        loss_fn = REGISTRY.build("elbo", c)(vae.model, vae.guide)
        pyro.set_rng_seed(0)
        loss_fn(x, y)
    except SpecError as e:
        pytest.skip(f"refused: {e}")
    return c, vae, x, y, loss_fn


def _grid(*groups: list[str]) -> list[tuple[str, ...]]:
    return list(itertools.product(*groups))


def _fast(combos: list[tuple[str, ...]], fast: set[tuple[str, ...]]) -> list[Any]:
    return [pytest.param(*c, marks=[] if c in fast else [pytest.mark.slow]) for c in combos]


# Fast subset: each estimator with the default components, each guide, prior and likelihood with iwae.
FAST_VALUE = (
    {(e, DEFAULT["guide"], DEFAULT["prior"], DEFAULT["likelihood"]) for e in ELBOS}
    | {("iwae", g, DEFAULT["prior"], DEFAULT["likelihood"]) for g in GUIDES}
    | {("iwae", DEFAULT["guide"], p, DEFAULT["likelihood"]) for p in PRIORS}
    | {("iwae", DEFAULT["guide"], DEFAULT["prior"], lk) for lk in LIKELIHOODS}
)


# --------------------------------------------------------------------------- (a) values


#: The likelihood enters every estimator only through log p(x|z): the full elbo x guide x prior product
#: with the default likelihood, and every likelihood with every estimator.
VALUE_COMBOS = sorted(
    set(_grid(ELBOS, GUIDES, PRIORS, [DEFAULT["likelihood"]]))
    | set(_grid(ELBOS, [DEFAULT["guide"]], [DEFAULT["prior"]], LIKELIHOODS))
)


#: The sweep runs at beta = 0.4 (a KL weight that scales every log p(z) - log q(z|x) term); the fast
#: subset at beta = 1 too.
VALUE_PARAMS = [pytest.param(0.4, *c, marks=[] if c in FAST_VALUE else [pytest.mark.slow]) for c in VALUE_COMBOS] + [
    pytest.param(1.0, *c) for c in sorted(FAST_VALUE)
]


@pytest.mark.parametrize(("beta", "elbo", "guide", "prior", "likelihood"), VALUE_PARAMS)
def test_value_equals_the_hand_written_objective_on_the_same_draws(beta, elbo, guide, prior, likelihood):
    c, vae, x, y, loss_fn = _combo(elbo, guide, prior, likelihood, beta)
    pyro.set_rng_seed(3)
    got = -loss_fn(x, y).detach()
    with torch.no_grad():
        ref = _reference(vae, x, y, c, 3)
    ref = ref[0] if isinstance(ref, tuple) else ref  # PIWAE's value is the model's bound, L_MK
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- (b) gradients

#: Per-coordinate two-sample z-test of the replicate means: |z| >= Z_MAX fails. 5.0 is a two-sided
#: level of about 0.1% after a Bonferroni correction over ~200 coordinates, widened for the t
#: distribution of variances estimated from REPLICATES replicates.
Z_MAX = 5.0
REPLICATES = 30
COPIES = 20  # each replicate averages the gradient over this many copies of one data point


def _flat(grads: Any, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    return (a.mean(0) - b.mean(0)) / se.clamp_min(1e-12)


def _gradient_replicates(elbo, guide, prior, likelihood, beta=1.0):
    c, vae, x, y, loss_fn = _combo(elbo, guide, prior, likelihood, beta)
    model_p, guide_p = list(vae.model.parameters()), list(vae.guide.parameters())
    shared = {id(p) for p in model_p} & {id(p) for p in guide_p}
    model_p = [p for p in model_p if id(p) not in shared]  # a VampPrior holds the guide: count it once
    params = model_p + guide_p
    big = x[:1].expand(COPIES, *x.shape[1:])
    ybig = None if y is None else y[:1].expand(COPIES, -1)
    got, ref = [], []
    for i in range(REPLICATES):
        pyro.set_rng_seed(100 + i)
        got.append(_flat(torch.autograd.grad(loss_fn(big, ybig) / COPIES, params, allow_unused=True), params))
        obj = _reference(vae, big, ybig, c, 1000 + i)  # independent draws: a two-sample test
        if isinstance(obj, tuple):  # model parameters train on the first objective, the guide on the second
            gm = torch.autograd.grad(-obj[0] / COPIES, model_p, allow_unused=True, retain_graph=True)
            gg = torch.autograd.grad(-obj[1] / COPIES, guide_p, allow_unused=True)
            ref.append(torch.cat([_flat(gm, model_p), _flat(gg, guide_p)]))
        else:
            ref.append(_flat(torch.autograd.grad(-obj / COPIES, params, allow_unused=True), params))
    n_model = sum(p.numel() for p in model_p)
    return torch.stack(got), torch.stack(ref), n_model


FAST_GRAD = {
    ("dreg", "diagonal_normal", "standard_normal", "gaussian"),
    ("score_function", "diagonal_normal", "standard_normal", "gaussian"),
}
#: Every estimator with every guide; every prior with the estimators that treat the prior differently
#: (closed-form KL, IWAE-type weights, PIWAE's parameter groups); every likelihood with a pathwise and a
#: score-function estimator. (The value test (a) covers the full product.)
GRAD_COMBOS = sorted(
    set(_grid(ELBOS, GUIDES, [DEFAULT["prior"]], [DEFAULT["likelihood"]]))
    | set(_grid(["meanfield", "iwae", "dreg", "piwae"], [DEFAULT["guide"]], PRIORS, [DEFAULT["likelihood"]]))
    | set(_grid(["trace", "score_function"], [DEFAULT["guide"]], [DEFAULT["prior"]], LIKELIHOODS))
    | FAST_GRAD
)


@pytest.mark.parametrize(("elbo", "guide", "prior", "likelihood"), _fast(GRAD_COMBOS, FAST_GRAD))
def test_gradient_is_unbiased_for_the_target_and_a_wrong_gradient_fails(elbo, guide, prior, likelihood):
    got, ref, n_model = _gradient_replicates(elbo, guide, prior, likelihood)
    z = _z(got, ref)
    assert z.abs().max() < Z_MAX, f"max |z| {float(z.abs().max()):.1f} at coordinate {int(z.abs().argmax())}"
    # The test has power: the target gradient is clearly non-zero, and wrong gradients fail it.
    assert (ref.mean(0).abs() / (ref.std(0) / math.sqrt(len(ref))).clamp_min(1e-12)).max() > 2 * Z_MAX
    assert _z(1.5 * got, ref).abs().max() > Z_MAX  # scaled
    guide_part = ref[:, n_model:]
    if (guide_part.mean(0).abs() / (guide_part.std(0) / math.sqrt(len(ref))).clamp_min(1e-12)).max() > 2 * Z_MAX:
        dropped = got.clone()
        dropped[:, n_model:] = 0.0  # the guide's part dropped (a score term without its pathwise part)
        assert _z(dropped, ref).abs().max() > Z_MAX


# --------------------------------------------------------------------------- (c) L_K on the linear-Gaussian model


def _train_linear(elbo: str, schedule: str, steps: int = 100, seed: int = 0):
    """A linear VAE (PPCA) fitted to linear-Gaussian data in float64 by ``elbo`` under ``schedule``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(4, 2, generator=g, dtype=torch.float64)
    x = torch.randn(600, 2, generator=g, dtype=torch.float64) @ W.T + 0.5 * torch.randn(
        600, 4, generator=g, dtype=torch.float64
    )
    model = {"kind": "vae", "latent_dim": 2, "network": {"kind": "mlp", "hidden": []},
             "likelihood": {"kind": "gaussian", "scale": "learned"}}  # fmt: skip
    torch.manual_seed(seed)
    vae = REGISTRY.build(
        "model", resolve_component("model", model, "model"), event_shape=(4,),
        guide=resolve_component("guide", "diagonal_normal", "guide"),
    ).double()  # fmt: skip
    c = _elbo_cfg(elbo)
    loss_fn = REGISTRY.build("elbo", c)(vae.model, vae.guide)
    opt = torch.optim.Adam(vae.parameters(), lr=0.05)
    pyro.set_rng_seed(seed)
    train, test = x[:500], x[500:]  # 100 held-out points
    for step in range(steps):
        vae.set_kl_weight(kl_factor(schedule, step, steps // 3))
        batch = train[torch.randint(len(train), (50,), generator=g)]
        opt.zero_grad()
        (loss_fn(batch, None) / len(batch)).backward()
        opt.step()
    vae.set_kl_weight(1.0)
    return vae, test


def _gaps(vae: Any, x: torch.Tensor, ks: tuple[int, ...]) -> list[tuple[float, float]]:
    """(mean, standard error) over points of exact log p(x) - L_K for each K: >= 0 in expectation."""
    exact = exact_log_marginal(*linear_decoder_parameters(vae), x.reshape(len(x), -1))
    out = []
    for k in ks:
        pyro.set_rng_seed(k)
        q = vae.guide.dist(x)
        with torch.no_grad():
            z = q.sample((k,))
            lw = (
                vae.model.likelihood(vae.model.decoder(z)).log_prob(x)
                + vae.model.prior_dist().log_prob(z)
                - q.log_prob(z)
            )
            gap = exact - _lme(lw)
        out.append((float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))))
    return out


FAST_LK = {("dreg", "linear")}
KS = (1, 10, 300)


@pytest.mark.parametrize(("elbo", "schedule"), _fast(_grid(ELBOS, SCHEDULES), FAST_LK))
def test_held_out_bound_approaches_the_exact_log_px_from_below(elbo, schedule):
    vae, test = _train_linear(elbo, schedule, steps=60 if (elbo, schedule) in FAST_LK else 100)
    gaps = _gaps(vae, test, KS)
    for (gap, se), k in zip(gaps, KS):
        assert gap > -3 * se, f"L_{k} exceeds the exact log p(x) by {-gap:.4f} (standard error {se:.4f})"
    for (g1, s1), (g2, s2) in itertools.pairwise(gaps):  # L_K rises with K, up to Monte Carlo error
        assert g1 > g2 - 3 * math.hypot(s1, s2), gaps
    assert gaps[-1][0] < 0.05 + 3 * gaps[-1][1], gaps  # L_300 within 0.05 nats of the exact log p(x)


# --------------------------------------------------------------------------- (d), (e) normalization


@pytest.mark.parametrize("kind", LIKELIHOODS)
def test_likelihood_is_normalized_on_its_sample_space(kind):
    """1-D: sum over {0, 1} or the 256 levels, or trapezoidal quadrature on [0, 1] or the real line, for
    decoder outputs drawn at random (several parameter values at once)."""
    lik = REGISTRY.build("likelihood", resolve_component("likelihood", kind, "likelihood"), event_shape=(1,)).double()
    g = torch.Generator().manual_seed(0)
    params = 1.5 * torch.randn(6, lik.num_params, 1, generator=g, dtype=torch.float64)  # (N, P, 1)
    d = lik(params)
    space = _sample_space(kind)
    if space in ("binary", "levels"):
        values = torch.tensor([0.0, 1.0]) if space == "binary" else torch.arange(256) / 255
        lp = torch.stack([d.log_prob(torch.full((6, 1), float(v), dtype=torch.float64)) for v in values])
        mass = lp.exp().sum(0)
    else:
        lo, hi, n = (0.0, 1.0, 20001) if space == "unit" else (-40.0, 40.0, 80001)
        grid = torch.linspace(lo, hi, n, dtype=torch.float64)
        dens = d.log_prob(grid.reshape(-1, 1, 1).expand(n, 6, 1)).exp()
        mass = torch.trapezoid(dens, grid, dim=0)
    torch.testing.assert_close(mass, torch.ones(6, dtype=torch.float64), atol=2e-3, rtol=0)


@pytest.mark.parametrize("kind", PRIORS)
def test_prior_is_normalized(kind):
    """2-D quadrature of exp log p(z) over [-7, 7]^2 (the shared helper of test_priors.py); conditional
    priors for each of three classes."""
    guide = REGISTRY.build(
        "guide", resolve_component("guide", "diagonal_normal", "guide"),
        encoder=_build("diagonal_normal", "standard_normal", "gaussian").guide.encoder.float(), latent_dim=2,
    )  # fmt: skip
    try:
        prior = REGISTRY.build(
            "prior", resolve_component("prior", {"kind": kind, **SMALL.get(("prior", kind), {})}, "prior"),
            latent_dim=2, event_shape=EVENT, guide=guide, cond_dim=3,
        )  # fmt: skip
    except SpecError as e:
        pytest.skip(f"refused: {e}")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    if getattr(prior, "conditional", False):
        dists = [prior(torch.eye(3)[i : i + 1]) for i in range(3)]
    else:
        dists = [prior()]
    for d in dists:
        mass = _grid_mass(lambda z, d=d: d.log_prob(z).reshape(-1), lo=-9.0, hi=9.0, n=400)
        assert mass == pytest.approx(1.0, abs=5e-3), (kind, mass)


# --------------------------------------------------------------------------- (f) the fast path


@pytest.mark.parametrize("beta", [1.0, 0.4])
@pytest.mark.parametrize("elbo", ELBOS)
def test_fast_path_equals_the_pyro_path_wherever_it_is_taken(elbo, beta):
    """Every estimator declares its direct form (``fast_loss``) or takes the Pyro path; where the fast
    path is taken it gives the Pyro path's value and gradients on the same draws (float64)."""
    from pyro_vae.estimators.fast import FastELBO, accelerate, direct_form

    _, vae, x, y, loss_fn = _combo(elbo, "diagonal_normal", "learned_normal", "gaussian", beta)
    fast = accelerate(loss_fn)
    est = loss_fn.elbo
    assert isinstance(fast, FastELBO) == (direct_form(est) is not None), type(est).__name__
    if not isinstance(fast, FastELBO):
        assert elbo.startswith("score_function"), elbo  # the one estimator without a direct form
        return
    params = list(vae.parameters())
    pyro.set_rng_seed(5)
    a = fast(x, y)
    ga = _flat(torch.autograd.grad(a, params, allow_unused=True), params)
    pyro.set_rng_seed(5)
    b = loss_fn(x, y)
    gb = _flat(torch.autograd.grad(b, params, allow_unused=True), params)
    assert fast.fallbacks == 0
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)
