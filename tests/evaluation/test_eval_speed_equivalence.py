"""The direct L_K evaluation (pyro_vae.evaluation.log_weights) computes exactly what the traced path does.

For the standard pair (an MLP Bernoulli VAE with a diagonal-Normal guide, Burda et al. 2015's L_K),
the per-point L_K must equal a float64 log-mean-exp written out by hand over the same draws; particle
chunking must not change the numbers; and the traced Pyro path, which stays for pairs the direct form
does not cover, must give the same values on the same seed.
"""

import math
import sys

import pyro
import pytest
import torch

from pyro_vae.evaluation import log_weights
from pyro_vae.evaluation.evaluate import direct_supported, point_terms
from pyro_vae.guides.normal import DiagonalNormalGuide
from pyro_vae.models import likelihoods
from pyro_vae.models.nets import mlp
from pyro_vae.models.priors import StandardNormal
from pyro_vae.models.vae import VAE, Generative

EVENT = (1, 4, 4)
LATENT = 3


def make_vae(seed=0, likelihood=likelihoods.Bernoulli):
    torch.manual_seed(seed)
    lik = likelihood(event_shape=EVENT)
    nets = mlp(event_shape=EVENT, latent_dim=LATENT, out_params=lik.num_params, hidden=[8])
    return VAE(
        Generative(StandardNormal(latent_dim=LATENT), nets.decoder, lik),
        DiagonalNormalGuide(encoder=nets.encoder, latent_dim=LATENT),
    )


def data(n=5):
    return torch.bernoulli(torch.rand(n, *EVENT, generator=torch.Generator().manual_seed(3)))


def by_hand(vae, x, k, seed):
    """log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) in float64, z_k = loc + eps_k * scale with eps_k the
    same (K, N, D) standard-normal draws a seeded Normal.rsample makes."""
    with torch.no_grad():
        q = vae.guide.dist(x)
        loc, scale = q.base_dist.loc.double(), q.base_dist.scale.double()
        pyro.set_rng_seed(seed)
        eps = torch.randn(k, *loc.shape).double()
        z = loc + eps * scale
        log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        dec = vae.model.decoder.double()
        logits = dec(z).reshape(k, len(x), -1)
        vae.model.decoder.float()
        xx = x.reshape(len(x), -1).double()
        log_lik = (xx * logits - torch.nn.functional.softplus(logits)).sum(-1)  # Bernoulli(logits) mass
        lw = log_lik + log_p - log_q
        return lw.logsumexp(0) - math.log(k), lw.mean(0)


def test_standard_pair_is_computed_directly():
    assert direct_supported(make_vae())


@pytest.mark.parametrize("k", [1, 7, 300])
def test_lk_is_a_float64_log_mean_exp_over_the_same_draws(k):
    vae, x = make_vae(), data()
    pyro.set_rng_seed(11)
    t = point_terms(vae, x, None, k, row_budget=k * len(x), means=False)  # one chunk: the draws of one rsample
    ll, elbo = by_hand(vae, x, k, 11)
    assert torch.allclose(t.log_likelihood.double(), ll, rtol=0, atol=1e-4)
    assert torch.allclose(t.elbo.double(), elbo, rtol=0, atol=1e-4)
    # a wrong estimator (the mean of log w, or log-mean-exp without the 1/K) would be far off for K > 1
    if k > 1:
        assert float((ll - elbo).min()) > 1e-3
        assert float((t.log_likelihood - t.elbo).min()) > 1e-3


def test_particle_chunks_do_not_change_the_result():
    vae, x = make_vae(), data(1)
    pyro.set_rng_seed(5)
    whole = point_terms(vae, x, None, 600, row_budget=600, means=False)
    # the same 600 draws in chunks of 64 (one point, so the chunks are consecutive slices of one stream)
    pyro.set_rng_seed(5)
    chunked = point_terms(vae, x, None, 600, row_budget=64, means=False)
    ll, _ = by_hand(vae, x, 600, 5)
    for t in (whole, chunked):
        assert torch.allclose(t.log_likelihood.double(), ll, atol=1e-4)
    assert torch.allclose(whole.kl, chunked.kl, atol=1e-4)
    assert torch.allclose(whole.reconstruction, chunked.reconstruction, atol=1e-3)


def test_encoder_runs_once_per_point_batch(monkeypatch):
    vae, x = make_vae(), data(4)
    calls = []
    enc = vae.guide.encoder
    orig = enc.forward
    monkeypatch.setattr(enc, "forward", lambda *a, **kw: calls.append(len(a[0])) or orig(*a, **kw))
    point_terms(vae, x, None, 100, row_budget=30)  # 4 particle chunks per point, one point per batch
    # one encoder pass per point batch (plus none for the closed-form posterior mean)
    assert calls == [1, 1, 1, 1]


@pytest.mark.parametrize("likelihood", [likelihoods.Bernoulli, likelihoods.Gaussian])
def test_same_seed_same_values_as_the_traced_path(monkeypatch, likelihood):
    vae, x = make_vae(likelihood=likelihood), data(6)
    pyro.set_rng_seed(2)
    direct = point_terms(vae, x, None, 50)
    monkeypatch.setattr(
        sys.modules["pyro_vae.evaluation.evaluate"], "direct_supported", lambda vae: False
    )  # the general Pyro-traced path
    pyro.set_rng_seed(2)
    traced = point_terms(vae, x, None, 50)
    for a, b in [
        (direct.log_likelihood, traced.log_likelihood),
        (direct.elbo, traced.elbo),
        (direct.kl, traced.kl),
        (direct.reconstruction, traced.reconstruction),
        (direct.posterior_mean, traced.posterior_mean),
    ]:
        assert torch.allclose(a, b, atol=1e-4), (a, b)


def test_a_modified_program_keeps_the_traced_path():
    class Scaled(Generative):  # its own forward: only Pyro's traces know what it samples
        def forward(self, x, cond=None):
            return super().forward(x, cond)

    vae = make_vae()
    vae.model.__class__ = Scaled
    assert not direct_supported(vae)
    with pyro.poutine.trace():
        assert not direct_supported(make_vae())  # an active handler also keeps the traced path


@pytest.mark.parametrize("p", [784, 97, 130])
def test_grouped_softplus_sum_matches_float64(p):
    """The Bernoulli normalizer sum_i softplus(l_i), computed with one log per group, for logits from
    -100 to 100 (saturated pixels of a trained decoder) and sizes with and without small divisors."""
    g = torch.Generator().manual_seed(p)
    logits = torch.cat([torch.randn(200, p, generator=g) * 30, torch.full((1, p), 100.0), torch.full((1, p), -100.0)])
    got = log_weights.softplus_sum_(logits.clone())
    ref = torch.nn.functional.softplus(logits.double()).sum(-1)
    assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-3)
    assert torch.isfinite(got).all()


def evaluate_mod():
    return sys.modules["pyro_vae.evaluation.evaluate"]
