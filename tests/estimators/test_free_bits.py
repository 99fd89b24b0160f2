"""Free bits (pyro_vae/free_bits.py): lam = 0 is the analytic-KL ELBO, a large lam removes the KL
gradient, and per-dimension KL below lam counts as lam."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae import SpecError, resolve
from pyro_vae.data import load
from pyro_vae.estimators import log_terms
from pyro_vae.estimators.free_bits import kl_per_dimension
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.spec import DEFAULT_SPEC, apply_overrides


@pytest.fixture(scope="module")
def setup():
    cfg = resolve(apply_overrides(DEFAULT_SPEC, ["model.latent_dim=4", "model.network.hidden=[16]"]))
    ds = load(cfg["data"])
    torch.manual_seed(0)
    return build_model(cfg, ds.event_shape), ds.x_test[:30]


def _loss(vae, x, elbo, seed=5):
    pyro.set_rng_seed(seed)
    return REGISTRY.build("elbo", elbo)(vae.model, vae.guide)(x, None)


def _recon_and_kl(vae, x, seed=5):
    pyro.set_rng_seed(seed)
    t = log_terms(vae.model, vae.guide, (x, None), {}, 1, scaled=False)
    kl = kl_divergence(vae.guide.dist(x).base_dist, vae.model.prior().base_dist)  # (B, D)
    return t.obs.sum(), kl


def test_zero_floor_is_the_meanfield_elbo(setup) -> None:
    vae, x = setup
    recon, kl = _recon_and_kl(vae, x)
    fb = _loss(vae, x, {"kind": "free_bits", "lam": 0.0})
    torch.testing.assert_close(fb, -(recon - kl.sum()), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fb, _loss(vae, x, {"kind": "meanfield"}), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_each_dimension_pays_at_least_lam(setup, beta: float) -> None:
    vae, x = setup
    recon, kl = _recon_and_kl(vae, x)
    per_dim = kl.mean(0)
    lam = float(per_dim.detach().median())  # some dimensions above the floor, some below
    vae.set_kl_weight(beta)
    try:
        fb = _loss(vae, x, {"kind": "free_bits", "lam": lam})
    finally:
        vae.set_kl_weight(1.0)
    want = -(recon - beta * len(x) * per_dim.clamp_min(lam).sum())
    torch.testing.assert_close(fb, want, rtol=1e-5, atol=1e-4)


def test_a_floor_above_every_kl_leaves_no_kl_gradient(setup) -> None:
    vae, x = setup
    fb = _loss(vae, x, {"kind": "free_bits", "lam": 1e3})
    recon, _ = _recon_and_kl(vae, x)
    g_fb = torch.autograd.grad(fb, vae.guide.loc.weight)[0]
    g_rec = torch.autograd.grad(-recon, vae.guide.loc.weight)[0]
    torch.testing.assert_close(g_fb, g_rec)


def test_needs_factorized_distributions() -> None:
    q = dist.MultivariateNormal(torch.zeros(3), torch.eye(3))
    with pytest.raises(SpecError, match="factorize"):
        kl_per_dimension(q, dist.Normal(torch.zeros(3), 1.0).to_event(1), torch.zeros(3))
