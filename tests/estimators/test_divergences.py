"""Closed-form Gaussian KLs (full/low rank vs diagonal) and the mean-field ELBO's Monte Carlo fallback."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal, kl_divergence

from pyro_vae.estimators.divergences import MeanField_ELBO, gaussian_kl_diagonal, has_closed_form_kl
from pyro_vae.models.vae import build_model
from pyro_vae.spec import DEFAULT_SPEC, resolve


def _random_tril(g: torch.Generator, *batch: int, k: int) -> torch.Tensor:
    a = torch.randn(*batch, k, k, generator=g, dtype=torch.float64)
    return torch.tril(a, -1) * 0.5 + torch.diag_embed(torch.rand(*batch, k, generator=g, dtype=torch.float64) + 0.3)


@pytest.mark.parametrize("learned", [False, True], ids=["standard", "diagonal"])
def test_full_rank_kl_matches_torch_mvn_reference_and_seed_formula(learned: bool) -> None:
    g = torch.Generator().manual_seed(1)
    k = 4
    q = MultivariateNormal(torch.randn(3, k, generator=g, dtype=torch.float64), scale_tril=_random_tril(g, 3, k=k))
    mu = torch.randn(k, generator=g, dtype=torch.float64) if learned else torch.zeros(k, dtype=torch.float64)
    s = torch.rand(k, generator=g, dtype=torch.float64) + 0.5 if learned else torch.ones(k, dtype=torch.float64)
    p = Independent(Normal(mu, s), 1)
    ours = kl_divergence(q, p)  # dispatches to the registered closed form
    ref = kl_divergence(q, MultivariateNormal(mu, scale_tril=torch.diag(s)))  # torch's MVN-MVN KL
    torch.testing.assert_close(ours, ref)
    if not learned:  # KL(N(mu, S) || N(0, I)) = 1/2 [tr(S) + mu^T mu - k - log det S]
        S = q.covariance_matrix
        seed = 0.5 * (S.diagonal(dim1=-2, dim2=-1).sum(-1) + (q.mean**2).sum(-1) - k - torch.logdet(S))
        torch.testing.assert_close(ours, seed)


def test_low_rank_kl_matches_full_covariance_reference() -> None:
    g = torch.Generator().manual_seed(2)
    k, r = 5, 2
    q = LowRankMultivariateNormal(
        torch.randn(k, generator=g, dtype=torch.float64),
        cov_factor=torch.randn(k, r, generator=g, dtype=torch.float64),
        cov_diag=torch.rand(k, generator=g, dtype=torch.float64) + 0.1,
    )
    p = Independent(Normal(torch.full((k,), 0.3, dtype=torch.float64), torch.full((k,), 1.7, dtype=torch.float64)), 1)
    ref = kl_divergence(MultivariateNormal(q.mean, covariance_matrix=q.covariance_matrix), p)
    torch.testing.assert_close(kl_divergence(q, p), ref)


def test_full_rank_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(3)
    k = 3
    torch.manual_seed(0)
    q = MultivariateNormal(torch.randn(k, generator=g), scale_tril=_random_tril(g, k=k).float())
    p = Independent(Normal(torch.zeros(k), torch.ones(k)), 1)
    z = q.sample((200_000,))
    lr = q.log_prob(z) - p.log_prob(z)
    mc, se = float(lr.mean()), float(lr.std() / math.sqrt(len(z)))
    assert abs(float(gaussian_kl_diagonal(q, p)) - mc) < 5 * se + 1e-3


def test_no_closed_form_for_mixtures() -> None:
    q = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(3)),
        Independent(Normal(torch.randn(3, 2), torch.ones(3, 2)), 1),
    )
    assert has_closed_form_kl(q, Independent(Normal(torch.zeros(2), torch.ones(2)), 1))
    assert not has_closed_form_kl(q, mix)


def _vae(prior: str, guide: str = "diagonal_normal"):
    spec = dict(DEFAULT_SPEC)
    spec["model"] = dict(spec["model"], latent_dim=2, prior={"kind": prior}, network={"kind": "mlp", "hidden": [8]})
    spec["guide"] = {"kind": guide}
    return build_model(resolve(spec), (1, 8, 8))


@pytest.mark.parametrize("prior, guide, expect_warning", [
    ("mixture", "diagonal_normal", True),
    ("vamp", "full_rank", True),
    ("flow", "diagonal_normal", True),
    ("standard_normal", "flow", True),
    ("standard_normal", "diagonal_normal", False),
    ("learned_normal", "full_rank", False),
    ("standard_normal", "low_rank", False),
])  # fmt: skip
def test_meanfield_warns_once_exactly_when_it_falls_back(prior: str, guide: str, expect_warning: bool) -> None:
    vae = _vae(prior, guide)
    x = torch.rand(6, 1, 8, 8).round()
    loss = MeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)(vae.model, vae.guide)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert torch.isfinite(loss(x))
    ours = [w for w in caught if "meanfield" in str(w.message)]
    assert len(ours) == (1 if expect_warning else 0)
    if expect_warning:
        assert "Monte Carlo" in str(ours[0].message)


def test_meanfield_fallback_equals_trace_elbo_on_the_same_draws() -> None:
    """Where no KL exists the term is log p(z) - log q(z|x) at the drawn z: exactly Trace_ELBO's."""
    vae = _vae("mixture")
    x = torch.rand(5, 1, 8, 8).round()
    kw = {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyro.set_rng_seed(7)
        mf = MeanField_ELBO(**kw).differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(7)
        tr = pyro.infer.Trace_ELBO(**kw).differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(mf, tr)


def test_meanfield_uses_the_closed_form_for_full_rank() -> None:
    """With the registered KL, meanfield's estimate differs from Trace_ELBO's on the same draws by the KL noise only."""
    vae = _vae("standard_normal", "full_rank")
    x = torch.rand(4, 1, 8, 8).round()
    with torch.no_grad():
        q = vae.guide.dist(x)
        kl = kl_divergence(q, vae.model.prior().expand([4]))
        pyro.set_rng_seed(3)
        mf = MeanField_ELBO(num_particles=1, max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        tr = pyro.infer.Trace_ELBO(num_particles=1, max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        z = vae.guide.dist(x).rsample()
        mc_kl = q.log_prob(z) - vae.model.prior().log_prob(z)
    torch.testing.assert_close(mf - tr, (kl - mc_kl).sum(), rtol=1e-4, atol=1e-3)
