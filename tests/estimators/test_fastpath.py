"""The fast path computes the same losses and gradients as Pyro's traces, on the same random draws."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae.estimators import IWAE_ELBO, Renyi_ELBO
from pyro_vae.estimators import fast as fastpath
from pyro_vae.estimators.fast import FastELBO, accelerate
from pyro_vae.guides.normal import DiagonalNormalGuide
from pyro_vae.models import likelihoods
from pyro_vae.models.nets import mlp
from pyro_vae.models.priors import StandardNormal
from pyro_vae.models.vae import VAE, Generative
from pyro_vae.registry import REGISTRY
from pyro_vae.training.step import nonfinite, optimizer_options, train_step

EVENT = (1, 4, 4)
LATENT = 3


def make_vae(likelihood="bernoulli", cond_dim=0, prior=None, seed=0):
    torch.manual_seed(seed)
    lik = {"bernoulli": likelihoods.Bernoulli, "gaussian": likelihoods.Gaussian}[likelihood](event_shape=EVENT)
    nets = mlp(event_shape=EVENT, latent_dim=LATENT, out_params=lik.num_params, cond_dim=cond_dim, hidden=[8])
    guide = DiagonalNormalGuide(encoder=nets.encoder, latent_dim=LATENT)
    return VAE(Generative(prior or StandardNormal(latent_dim=LATENT), nets.decoder, lik), guide)


def batch(n=6, cond_dim=0):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, *EVENT, generator=g)
    return x, (torch.randn(n, cond_dim, generator=g) if cond_dim else None)


ESTIMATORS = {
    "trace1": lambda: REGISTRY.build("elbo", {"kind": "trace"}),
    "trace3": lambda: REGISTRY.build("elbo", {"kind": "trace", "num_particles": 3}),
    "meanfield1": lambda: REGISTRY.build("elbo", {"kind": "meanfield"}),
    "meanfield4": lambda: REGISTRY.build("elbo", {"kind": "meanfield", "num_particles": 4}),
    "iwae5": lambda: REGISTRY.build("elbo", {"kind": "iwae", "num_particles": 5}),
    "renyi": lambda: REGISTRY.build("elbo", {"kind": "renyi", "alpha": 0.5, "num_particles": 4}),
}


def _both(elbo, vae, x, cond, seed=7):
    """(fast loss, Pyro-trace loss) on the same seed, and their gradients."""
    fast = FastELBO(elbo, vae.model, vae.guide)
    out = []
    for fn in (fast, fast.pyro_loss):
        vae.zero_grad(set_to_none=True)
        pyro.set_rng_seed(seed)
        loss = fn(x, cond)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in vae.parameters()]))
    assert fast.fallbacks == 0
    return out


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fast_loss_and_gradients_equal_the_pyro_path(name, beta, likelihood):
    vae = make_vae(likelihood)
    vae.set_kl_weight(beta)
    x, cond = batch()
    (lf, gf), (lp, gp) = _both(ESTIMATORS[name](), vae, x, cond)
    assert torch.allclose(lf, lp, rtol=1e-5, atol=1e-4), (float(lf), float(lp))
    for a, b in zip(gf, gp):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_beta_weights_only_the_latent_term():
    """trace with beta: loss(beta) = -(rec - beta KL_mc) on the same draws, so it is affine in beta."""
    vae = make_vae()
    x, _ = batch()
    losses = []
    for beta in (0.0, 1.0, 2.0):
        vae.set_kl_weight(beta)
        pyro.set_rng_seed(1)
        fast = FastELBO(Trace_ELBO(vectorize_particles=True, max_plate_nesting=1), vae.model, vae.guide)
        losses.append(float(fast(x).detach()))
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], abs=1e-4)
    pyro.set_rng_seed(1)
    rec = float(fastpath.particle_terms(vae.model, vae.guide, x, None, 1).obs.sum().detach())
    assert losses[0] == pytest.approx(-rec, rel=1e-6)


@pytest.mark.parametrize(
    "ours,pyros",
    [
        (lambda: Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1), None),
        (lambda: TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1), None),
        (
            lambda: IWAE_ELBO(6),
            lambda: RenyiELBO(alpha=0.0, num_particles=6, vectorize_particles=True, max_plate_nesting=1),
        ),
        (
            lambda: Renyi_ELBO(-1.0, 4),
            lambda: RenyiELBO(alpha=-1.0, num_particles=4, vectorize_particles=True, max_plate_nesting=1),
        ),
    ],
)
def test_fast_loss_equals_pyros_own_estimators(ours, pyros):
    vae = make_vae()
    x, _ = batch()
    elbo = ours()
    pyro.set_rng_seed(5)
    fast = float(FastELBO(elbo, vae.model, vae.guide)(x, None).detach())
    pyro.set_rng_seed(5)
    ref = (pyros() if pyros else elbo).loss(vae.model, vae.guide, x, None)
    assert fast == pytest.approx(ref, rel=1e-5)


def test_conditional_model_matches():
    vae = make_vae(cond_dim=2)
    x, cond = batch(cond_dim=2)
    (lf, gf), (lp, gp) = _both(ESTIMATORS["iwae5"](), vae, x, cond)
    assert torch.allclose(lf, lp, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(gf, gp))


class _MixturePrior(nn.Module):
    def __init__(self):
        super().__init__()
        self.locs = nn.Parameter(torch.randn(2, LATENT))

    def forward(self):
        comp = dist.Normal(self.locs, torch.ones(2, LATENT)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(2)), comp)


def test_generic_prior_goes_through_log_prob_and_meanfield_falls_back_without_closed_form_kl():
    vae = make_vae(prior=_MixturePrior())
    x, _ = batch()
    (lf, _), (lp, _) = _both(ESTIMATORS["trace3"](), vae, x, None)  # MC: fast path, generic log_prob
    assert torch.allclose(lf, lp, rtol=1e-5)
    fast = FastELBO(TraceMeanField_ELBO(vectorize_particles=True, max_plate_nesting=1), vae.model, vae.guide)
    pyro.set_rng_seed(2)
    a = fast(x)
    pyro.set_rng_seed(2)
    assert fast.fallbacks == 1 and torch.allclose(a, fast.pyro_loss(x), rtol=1e-6)


class _NoRsampleNormal(dist.Normal):
    has_rsample = False


class _ScoreFunctionGuide(DiagonalNormalGuide):
    def head(self, h):
        d = super().head(h).base_dist
        return _NoRsampleNormal(d.loc, d.scale).to_event(1)


def test_non_reparameterized_guide_falls_back_to_pyro():
    vae = make_vae()
    torch.manual_seed(0)
    guide = _ScoreFunctionGuide(encoder=vae.guide.encoder, latent_dim=LATENT)
    fast = FastELBO(Trace_ELBO(vectorize_particles=True, max_plate_nesting=1), vae.model, guide)
    x, _ = batch()
    pyro.set_rng_seed(0)
    a = fast(x)
    pyro.set_rng_seed(0)
    assert fast.fallbacks == 1 and torch.allclose(a, fast.pyro_loss(x))


class _OtherModel(Generative):
    def forward(self, x, cond=None):
        return super().forward(x, cond)


def test_accelerate_only_takes_what_it_implements():
    vae = make_vae()
    ok = accelerate(Trace_ELBO(vectorize_particles=True, max_plate_nesting=1)(vae.model, vae.guide))
    assert isinstance(ok, FastELBO) and accelerate(ok) is ok
    for elbo in (Trace_ELBO(max_plate_nesting=1), TraceGraph_ELBO(max_plate_nesting=1)):
        m = elbo(vae.model, vae.guide)
        assert accelerate(m) is m
    other = _OtherModel(vae.model.prior, vae.model.decoder, vae.model.likelihood)
    m = IWAE_ELBO(3)(other, vae.guide)
    assert accelerate(m) is m
    with pytest.raises(ValueError, match="does not implement"):
        FastELBO(TraceGraph_ELBO(), vae.model, vae.guide)


def _params_with_grads(values):
    ps = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    for p, v in zip(ps, values):
        p.grad = torch.full_like(p, v)
    return ps


@pytest.mark.parametrize(
    "loss,grads,bad",
    [
        (1.0, (0.5, -2.0), False),
        (1.0, (1e30, -1e30), False),  # huge but finite: not flagged (a norm would overflow here)
        (float("nan"), (0.5, 0.5), True),
        (float("inf"), (0.5, 0.5), True),
        (1.0, (0.5, float("nan")), True),
        (1.0, (float("-inf"), 0.5), True),
    ],
)
def test_nonfinite_flags_exactly_nan_and_inf(loss, grads, bad):
    assert bool(nonfinite(torch.tensor(loss), _params_with_grads(grads))) is bad


def test_train_step_skips_a_nonfinite_step_and_takes_a_finite_one():
    vae = make_vae()
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=0.1, **optimizer_options(torch.optim.Adam, params))
    x, _ = batch()
    loss_fn = accelerate(IWAE_ELBO(2)(vae.model, vae.guide))
    before = [p.detach().clone() for p in params]

    def poisoned(x, cond):
        return loss_fn(x, cond) * torch.tensor(float("nan"))

    loss, stepped = train_step(poisoned, opt, params, x, None, len(x))
    assert not stepped and not torch.isfinite(loss)
    assert all(torch.equal(a, p) for a, p in zip(before, params)) and not opt.state
    loss, stepped = train_step(loss_fn, opt, params, x, None, len(x))
    assert stepped and torch.isfinite(loss) and not any(torch.equal(a, p) for a, p in zip(before, params))


def test_fused_optimizer_where_available_and_same_update():
    ps = [nn.Parameter(torch.ones(4))]
    assert optimizer_options(torch.optim.Adam, ps) == {"fused": True}
    assert optimizer_options(torch.optim.NAdam, ps) == {}
    results = []
    for kw in ({}, optimizer_options(torch.optim.Adam, ps)):
        p = nn.Parameter(torch.linspace(-1, 1, 5))
        opt = torch.optim.Adam([p], lr=0.01, **kw)
        for _ in range(3):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        results.append(p.detach())
    assert torch.allclose(results[0], results[1], atol=1e-7)


def test_an_unknown_pyro_handler_sends_the_step_to_the_pyro_path():
    from pyro import poutine

    vae = make_vae()
    x, _ = batch()
    fast = FastELBO(IWAE_ELBO(3), vae.model, vae.guide)
    with poutine.scale(scale=2.0):  # scales every site: only Pyro's traces honour it
        pyro.set_rng_seed(4)
        a = fast(x)
        pyro.set_rng_seed(4)
        b = fast.pyro_loss(x)
    assert fast.fallbacks == 1 and torch.allclose(a, b)
    pyro.set_rng_seed(4)
    assert not torch.allclose(fast(x), a)  # outside the handler: the fast path, without the scale


@pytest.mark.parametrize("name", ["trace3", "meanfield1", "iwae5"])
def test_noise_handler_draws_reach_the_fast_path(name):
    distributed = pytest.importorskip("pyro_vae.distributed")
    vae = make_vae()
    x, _ = batch()
    fast = FastELBO(ESTIMATORS[name](), vae.model, vae.guide)
    losses = []
    for fn in (fast, fast.pyro_loss):
        with distributed.StepNoise(seed=11, n_global=len(x), start=0, stop=len(x)):
            losses.append(fn(x, None).detach())
    assert fast.fallbacks == 0 and torch.allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.parametrize(
    ("elbo", "beta"),
    [
        ("elbo.kind=trace", 0.5),
        ("elbo.kind=iwae", 0.5),
        ("elbo.kind=dreg", 1.0),  # the score-free gradient (KL weight 1)
        ("elbo.kind=dreg", 0.5),  # the plain IWAE gradient below 1
        ("elbo.kind=stl", 1.0),
    ],
)
def test_fit_with_and_without_the_fast_path_trains_the_same_model(tmp_path, tiny, elbo, beta):
    from pyro_vae.training import fit

    # kl_schedule constant: the KL weight is beta from the first step (the default warm-up keeps it below 1)
    common = [*tiny, elbo, f"elbo.beta={beta}", "train.kl_schedule=constant", "train.figures=false", "train.epochs=2"]
    common.append("data.limit=128")
    runs = [
        fit(None, overrides=[*common, f"train.fast_path={on}"], out=tmp_path / str(on)).history
        for on in ("true", "false")
    ]
    for a, b in zip(*runs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-4)


class _ShiftedNormalPrior(nn.Module):
    """A diagonal Normal prior other than N(0, I): takes the closed-form non-standard branch."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.linspace(-1, 1, LATENT))
        self.raw = nn.Parameter(torch.full((LATENT,), 0.3))

    def forward(self):
        return dist.Normal(self.loc, torch.nn.functional.softplus(self.raw)).to_event(1)


@pytest.mark.parametrize("name", ["trace3", "meanfield1", "iwae5"])
def test_diagonal_normal_prior_with_parameters_matches(name):
    vae = make_vae(prior=_ShiftedNormalPrior())
    vae.set_kl_weight(0.5)
    x, _ = batch()
    (lf, gf), (lp, gp) = _both(ESTIMATORS[name](), vae, x, None)
    assert torch.allclose(lf, lp, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(gf, gp))


class _FullRankGuide(DiagonalNormalGuide):
    """A non-diagonal reparameterized family: the generic (Distribution.log_prob) branch."""

    def head(self, h):
        d = super().head(h).base_dist
        return dist.MultivariateNormal(d.loc, scale_tril=torch.diag_embed(d.scale))


@pytest.mark.parametrize("noise", [False, True])
def test_generic_guide_family_matches_with_and_without_a_noise_handler(noise):
    vae = make_vae()
    torch.manual_seed(0)
    guide = _FullRankGuide(encoder=vae.guide.encoder, latent_dim=LATENT)
    vae = VAE(vae.model, guide)
    x, _ = batch()
    fast = FastELBO(ESTIMATORS["trace3"](), vae.model, vae.guide)
    losses = []
    for fn in (fast, fast.pyro_loss):
        pyro.set_rng_seed(9)
        if noise:
            distributed = pytest.importorskip("pyro_vae.distributed")
            with distributed.StepNoise(seed=5, n_global=len(x), start=0, stop=len(x)):
                losses.append(fn(x, None).detach())
        else:
            losses.append(fn(x, None).detach())
    assert fast.fallbacks == 0 and torch.allclose(losses[0], losses[1], rtol=1e-5)
