"""Gradient statistics: the known facts about estimator SNR (Rainforth et al. 2018; Tucker et al. 2018).

Toy: the linear-Gaussian VAE at one data point, with a guide wider than the posterior and a
shifted mean (so that the guide gradient is not zero).
"""

import pytest
import torch

from pyro_vae.errors import SpecError
from pyro_vae.evaluation.evaluate import gradient_stats
from pyro_vae.evaluation.gradients import estimator_spec, parse_estimator, stats_table
from pyro_vae.models.linear import linear_gaussian_vae


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g)
    b = torch.randn(5, generator=g) * 0.5
    vae = linear_gaussian_vae(W, b, 1.0, guide_scale=1.3)
    with torch.no_grad():
        vae.guide.loc.bias.add_(0.3)
    x = b + torch.randn(1, 2, generator=g) @ W.T + torch.randn(1, 5, generator=g)
    return vae, x


def _by(stats):
    return {(s.estimator, s.num_particles, s.group): s for s in stats}


def test_iwae_encoder_snr_collapses_with_k_while_dregs_grows(toy):
    vae, x = toy
    s = _by(gradient_stats(vae, x, ["iwae", "dreg"], particles=(1, 100), draws=60))
    iw1, iw100 = s["iwae", 1, "encoder"].snr_norm, s["iwae", 100, "encoder"].snr_norm
    dr1, dr100 = s["dreg", 1, "encoder"].snr_norm, s["dreg", 100, "encoder"].snr_norm
    assert iw100 < 0.5 * iw1  # O(1/sqrt(K)): a factor 10 from K=1 to K=100 asymptotically
    assert dr100 > 2 * dr1  # O(sqrt(K))
    assert s["dreg", 100, "encoder"].snr > 5 * s["iwae", 100, "encoder"].snr
    # the decoder gradient is the same estimator in both: identical statistics on the same draws
    for k in (1, 100):
        assert s["dreg", k, "decoder"].snr == pytest.approx(s["iwae", k, "decoder"].snr, rel=1e-6)
    # decoder SNR of IWAE grows with K (its mean does not vanish)
    assert s["iwae", 100, "decoder"].snr > 3 * s["iwae", 1, "decoder"].snr


def test_score_function_gradients_have_far_higher_variance_than_reparameterized(toy):
    vae, x = toy
    s = _by(gradient_stats(vae, x, ["trace", "score_function:baseline=false", "score_function"], (1,), draws=60))
    rep = s["trace", 1, "encoder"].variance
    assert s["score_function:baseline=false", 1, "encoder"].variance > 10 * rep
    # a baseline helps but does not close the gap
    assert rep < s["score_function", 1, "encoder"].variance < s["score_function:baseline=false", 1, "encoder"].variance
    # the decoder gets the pathwise gradient either way
    assert s["score_function", 1, "decoder"].variance == pytest.approx(s["trace", 1, "decoder"].variance, rel=1e-6)


def test_stats_are_computed_from_the_draws_and_leave_the_rng_alone(toy):
    vae, x = toy
    torch.manual_seed(123)
    before = torch.get_rng_state()
    stats = gradient_stats(vae, x, [{"kind": "trace"}], (1, 3), draws=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert [(s.num_particles, s.group) for s in stats] == [
        (1, "encoder"),
        (1, "decoder"),
        (3, "encoder"),
        (3, "decoder"),
    ]
    enc = stats[0]
    assert enc.size == sum(p.numel() for p in vae.guide.parameters()) and enc.draws == 5
    assert enc.variance > 0 and enc.mean_abs > 0 and enc.snr > 0
    table = stats_table(stats)
    assert table.count("\n| trace | ") == 2


def test_estimator_strings_parse_and_bad_ones_name_the_problem():
    assert parse_estimator("ciwae:mix=0.25:num_particles=7") == {"kind": "ciwae", "mix": 0.25, "num_particles": 7}
    assert estimator_spec("dreg")["num_particles"] == 5
    with pytest.raises(SpecError, match="mixx: unknown key"):
        estimator_spec("ciwae:mixx=1")
    with pytest.raises(SpecError, match="not KEY=VALUE"):
        estimator_spec("iwae:5")
    with pytest.raises(SpecError, match="unknown elbo 'nope'"):
        estimator_spec("nope")


def test_bad_arguments_raise(toy):
    vae, x = toy
    with pytest.raises(ValueError, match="draws"):
        gradient_stats(vae, x, ["iwae"], (1,), draws=1)
    with pytest.raises(ValueError, match="particles"):
        gradient_stats(vae, x, ["iwae"], (0,), draws=3)
