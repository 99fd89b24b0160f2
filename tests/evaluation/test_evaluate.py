"""Evaluation: L_K converges to the exact log p(x) from below; chunking; active units; KL."""

import math

import pytest
import torch

from pyro_vae.evaluation.evaluate import active_units, point_terms, summarize
from pyro_vae.models.linear import exact_log_marginal, linear_gaussian_vae, random_linear_gaussian


@pytest.fixture
def lg():
    W, b, s = random_linear_gaussian(f=5, d=2, sigma=0.4, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(24, 2, generator=g) @ W.T + b + 0.4 * torch.randn(24, 5, generator=g)
    return W, b, s, x


def test_importance_sampled_log_likelihood_converges_to_exact_from_below(lg):
    W, b, s, x = lg
    vae = linear_gaussian_vae(W, b, s, guide_scale=0.8)  # a deliberately imperfect proposal
    exact = exact_log_marginal(W, b, s, x)
    gaps = {}
    for k in (1, 10, 1000):
        t = point_terms(vae, x, None, k)
        gaps[k] = float((exact - t.log_likelihood).mean())
    assert gaps[1] > gaps[10] > gaps[1000] > -0.01  # never above log p(x) beyond noise
    assert gaps[1000] < 0.02
    t = point_terms(vae, x, None, 1000)
    assert float((t.elbo - exact).max()) < 0  # ELBO <= log p(x) for every point


def test_elbo_is_reconstruction_minus_kl_and_kl_is_analytic_in_expectation(lg):
    W, b, s, x = lg
    vae = linear_gaussian_vae(W, b, s)
    t = point_terms(vae, x, None, 4000)
    assert torch.allclose(t.elbo, t.reconstruction - t.kl, atol=1e-4)
    with torch.no_grad():
        analytic = torch.distributions.kl_divergence(vae.guide.dist(x), vae.model.prior())
    assert float((t.kl - analytic).abs().max()) < 0.05


def test_chunking_gives_the_same_numbers(lg):
    W, b, s, x = lg
    vae = linear_gaussian_vae(W, b, s)
    torch.manual_seed(0)
    a = point_terms(vae, x, None, 64, row_budget=1 << 14)
    torch.manual_seed(0)
    b_ = point_terms(vae, x, None, 64, row_budget=7)  # many particle chunks and point chunks
    # different chunkings draw different noise: compare the estimates statistically
    assert abs(float(a.log_likelihood.mean() - b_.log_likelihood.mean())) < 0.05
    assert torch.allclose(a.posterior_mean, b_.posterior_mean)


def test_summary_standard_error_and_active_units(lg):
    W, b, s, x = lg
    vae = linear_gaussian_vae(W, b, s)
    t = point_terms(vae, x, None, 10)
    r = summarize(t, "test", 10)
    assert r.n == len(x) and r.num_particles == 10
    assert r.log_likelihood_stderr == pytest.approx(float(t.log_likelihood.double().std()) / math.sqrt(len(x)))
    assert r.active_units == active_units(t.posterior_mean)
    means = torch.cat([torch.randn(100, 1), torch.full((100, 1), 0.3), 0.05 * torch.randn(100, 1)], 1)
    assert active_units(means) == 1  # var 1 > 0.01; constant; var 0.0025 < 0.01
