"""Core estimator identities: IWAE vs ELBO vs Pyro, bounds in K, beta on the KL term only."""

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from pyro_vae import estimators
from pyro_vae.estimators import log_terms
from pyro_vae.models.linear import exact_log_marginal, linear_gaussian_vae, random_linear_gaussian
from pyro_vae.registry import REGISTRY


@pytest.fixture
def lg():
    W, b, s = random_linear_gaussian(f=6, d=2, sigma=0.5)
    vae = linear_gaussian_vae(W, b, s)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, generator=g) @ W.T + b + 0.5 * torch.randn(32, 6, generator=g)
    return vae, x, (W, b, s)


def _loss(kind, vae, x, seed=0, **params):
    cfg = {"kind": kind, **params}
    pyro.set_rng_seed(seed)
    return REGISTRY.build("elbo", cfg)(vae.model, vae.guide)(x, None)


def test_iwae_with_one_particle_is_the_elbo_on_the_same_draws(lg):
    vae, x, _ = lg
    a = _loss("iwae", vae, x, num_particles=1)
    b = _loss("trace", vae, x, num_particles=1)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_renyi_matches_pyro_renyi_elbo_on_the_same_draws(lg, alpha):
    vae, x, _ = lg
    ours = _loss("renyi", vae, x, alpha=alpha, num_particles=8).detach()
    pyro.set_rng_seed(0)
    ref = RenyiELBO(alpha=alpha, num_particles=8, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x, None
    )
    assert float(ours) == pytest.approx(ref, rel=1e-5)


def test_iwae_equals_renyi_alpha_zero(lg):
    vae, x, _ = lg
    assert torch.allclose(_loss("iwae", vae, x, num_particles=6), _loss("renyi", vae, x, alpha=0.0, num_particles=6))


def test_trace_matches_pyro_trace_elbo_and_meanfield_matches_in_expectation(lg):
    vae, x, _ = lg
    pyro.set_rng_seed(0)
    ref = Trace_ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, vae.guide, x, None)
    assert float(_loss("trace", vae, x).detach()) == pytest.approx(ref, rel=1e-6)
    # analytic KL (meanfield) vs Monte Carlo KL (trace): the same expectation. (Near the exact
    # posterior the full log-weight has the smaller variance: the zero-variance property.)
    with torch.no_grad():
        mc = torch.stack([_loss("trace", vae, x, seed=i) for i in range(400)])
        mf = torch.stack([_loss("meanfield", vae, x, seed=i) for i in range(400)])
    se = math.hypot(float(mc.std()), float(mf.std())) / math.sqrt(400)
    assert abs(float(mc.mean() - mf.mean())) < 4 * se


def test_analytic_kl_equals_monte_carlo_within_standard_error(lg):
    vae, x, _ = lg
    q = vae.guide.dist(x)
    p = vae.model.prior()
    analytic = torch.distributions.kl_divergence(q, p)  # (B,)
    z = q.sample((20000,))
    mc = q.log_prob(z) - p.log_prob(z)  # (S, B)
    se = mc.std(0) / math.sqrt(mc.shape[0])
    assert ((mc.mean(0) - analytic).abs() < 4 * se + 1e-6).all()


def test_iwae_increases_with_k_and_stays_below_log_p(lg):
    vae, x, (W, b, s) = lg
    exact = exact_log_marginal(W, b, s, x)
    means = {}
    for k in (1, 5, 50):
        reps = torch.stack([-_loss("iwae", vae, x, seed=r, num_particles=k) / len(x) for r in range(60)]).detach()
        means[k] = (float(reps.mean()), float(reps.std()) / math.sqrt(len(reps)))
    (l1, _s1), (l5, s5), (l50, s50) = means[1], means[5], means[50]
    assert l1 < l5 + 3 * s5 and l5 < l50 + 3 * s50
    assert l1 < l50  # strictly looser at K=1 for a diagonal guide on a correlated posterior
    assert l50 <= float(exact.mean()) + 3 * s50


def test_beta_scales_only_the_latent_terms(lg):
    vae, x, _ = lg
    pyro.set_rng_seed(0)
    plain = log_terms(vae.model, vae.guide, (x, None), {}, 4)
    vae.set_kl_weight(3.0)
    pyro.set_rng_seed(0)
    scaled = log_terms(vae.model, vae.guide, (x, None), {}, 4)
    pyro.set_rng_seed(0)
    raw = log_terms(vae.model, vae.guide, (x, None), {}, 4, scaled=False)
    assert torch.allclose(scaled.obs, plain.obs)
    assert torch.allclose(scaled.latent, 3.0 * plain.latent, atol=1e-5)
    assert torch.allclose(raw.latent, plain.latent)  # evaluation ignores beta
    # trace with beta: recon - beta * KL on the same draws
    vae.set_kl_weight(1.0)
    pyro.set_rng_seed(0)
    one = log_terms(vae.model, vae.guide, (x, None), {}, 1)
    vae.set_kl_weight(3.0)
    pyro.set_rng_seed(0)
    loss = REGISTRY.build("elbo", {"kind": "trace"})(vae.model, vae.guide)(x, None).detach()
    assert float(loss) == pytest.approx(-float((one.obs + 3.0 * one.latent).sum().detach()), rel=1e-5)
    # IWAE with beta: beta inside each particle's log-weight, never outside the log-sum-exp
    pyro.set_rng_seed(0)
    iw = REGISTRY.build("elbo", {"kind": "iwae", "num_particles": 4})(vae.model, vae.guide)(x, None).detach()
    expect = -estimators.iwae_bound(plain.obs + 3.0 * plain.latent).sum()
    assert float(iw) == pytest.approx(float(expect.detach()), rel=1e-5)
    vae.set_kl_weight(1.0)


def test_loss_per_point_does_not_depend_on_batch_or_dataset_size(lg):
    """The pitfall of Pyro's subsample scaling inside RenyiELBO's log-sum-exp would show up here."""
    vae, x, _ = lg
    est = REGISTRY.build("elbo", {"kind": "iwae", "num_particles": 10})(vae.model, vae.guide)

    def per_point(batch, reps=40):
        vals = []
        for r in range(reps):
            pyro.set_rng_seed(r)
            vals.append(sum(float(est(x[i : i + batch], None).detach()) for i in range(0, len(x), batch)) / len(x))
        t = torch.tensor(vals)
        return float(t.mean()), float(t.std()) / math.sqrt(reps)

    (a, sa), (b, sb) = per_point(len(x)), per_point(4)
    assert abs(a - b) < 4 * math.hypot(sa, sb) + 1e-3
    (c, sc) = per_point(len(x) // 2)
    assert abs(a - c) < 4 * math.hypot(sa, sc) + 1e-3
