"""The estimators beyond Pyro's own (dreg, stl, miwae, ciwae, piwae, score_function): identities, gradients, beta.

The reference model is the linear-Gaussian VAE with a guide made deliberately imperfect (wider than
the posterior, shifted mean), so every gradient is far from zero. "Same draws" comparisons reseed
before each estimator: all of them draw z with one vectorized call, so they see identical z.
"""

import pyro
import pytest
import torch

from pyro_vae.estimators import iwae_bound, log_terms, miwae_bound, stopped_log_terms
from pyro_vae.models.linear import linear_gaussian_vae, random_linear_gaussian
from pyro_vae.registry import REGISTRY
from pyro_vae.spec import resolve_component


@pytest.fixture
def lg():
    W, b, s = random_linear_gaussian(f=6, d=2, sigma=0.5)
    vae = linear_gaussian_vae(W, b, s, guide_scale=1.3)
    with torch.no_grad():
        vae.guide.loc.bias.add_(0.3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, generator=g) @ W.T + b + 0.5 * torch.randn(16, 6, generator=g)
    return vae, x


def _loss(vae, x, kind, seed=0, **params):
    cfg = resolve_component("elbo", {"kind": kind, **params}, "elbo")
    pyro.set_rng_seed(seed)
    return REGISTRY.build("elbo", cfg)(vae.model, vae.guide)(x, None)


def _grads(loss, module):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(module.parameters()), retain_graph=True)])


SAME_VALUE = [
    (("dreg", {"num_particles": 6}), ("iwae", {"num_particles": 6})),
    (("stl", {"num_particles": 3}), ("trace", {"num_particles": 3})),
    (("miwae", {"num_particles": 6, "num_groups": 1}), ("iwae", {"num_particles": 6})),
    (("miwae", {"num_particles": 1, "num_groups": 4}), ("trace", {"num_particles": 4})),
    (("ciwae", {"num_particles": 5, "mix": 1.0}), ("trace", {"num_particles": 5})),
    (("ciwae", {"num_particles": 5, "mix": 0.0}), ("iwae", {"num_particles": 5})),
    (("piwae", {"num_particles": 3, "num_groups": 2}), ("iwae", {"num_particles": 6})),
    (("score_function", {"num_particles": 2, "baseline": False}), ("trace", {"num_particles": 2})),
]


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize(("a", "b"), SAME_VALUE, ids=[f"{a[0]}-{b[0]}" for a, b in SAME_VALUE])
def test_estimators_share_values_on_the_same_draws(lg, a, b, beta):
    vae, x = lg
    vae.set_kl_weight(beta)
    va = _loss(vae, x, a[0], **a[1]).detach()
    vb = _loss(vae, x, b[0], **b[1]).detach()
    assert torch.allclose(va, vb, rtol=1e-5, atol=1e-4), (float(va), float(vb))


def _reference(kind, lw):
    """The documented objective as a function of the (K, B) log-weights."""
    return {
        "trace": lambda: lw.mean(0),
        "stl": lambda: lw.mean(0),
        "score_function": lambda: lw.mean(0),
        "iwae": lambda: iwae_bound(lw),
        "dreg": lambda: iwae_bound(lw),
        "piwae": lambda: iwae_bound(lw),
        "miwae": lambda: miwae_bound(lw, 2),
        "ciwae": lambda: 0.3 * lw.mean(0) + 0.7 * iwae_bound(lw),
    }[kind]()


KINDS = ["trace", "stl", "score_function", "iwae", "dreg", "piwae", "miwae", "ciwae"]


@pytest.mark.parametrize("kind", KINDS)
def test_beta_weights_only_log_p_z_minus_log_q_in_each_log_weight(lg, kind):
    """beta scales log p(z) - log q(z|x) inside each particle's log-weight, never the bound as a whole."""
    vae, x = lg
    beta = 0.25
    params = {"num_particles": 2, "num_groups": 2} if kind in ("miwae", "piwae") else {"num_particles": 4}
    if kind == "ciwae":
        params["mix"] = 0.3
    if kind == "score_function":
        params["baseline"] = False
    vae.set_kl_weight(beta)
    got = _loss(vae, x, kind, **params).detach()
    vae.set_kl_weight(1.0)
    pyro.set_rng_seed(0)
    t = log_terms(vae.model, vae.guide, (x, None), {}, 4, scaled=False)
    want = -_reference(kind, (t.obs + beta * t.latent).detach()).sum()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    # and beta = 1 is not the same number (the test would not notice a dropped beta otherwise)
    assert not torch.allclose(got, -_reference(kind, t.log_weight.detach()).sum(), rtol=1e-3)


def test_dreg_gradients_match_their_definition(lg):
    """Guide: sum_k w~_k^2 d log w_k (score term stopped); model: the IWAE gradient sum_k w~_k d log w_k."""
    vae, x = lg
    loss = _loss(vae, x, "dreg", num_particles=5)
    enc, dec = _grads(loss, vae.guide), _grads(loss, vae.model)
    pyro.set_rng_seed(0)
    lw = stopped_log_terms(vae.model, vae.guide, (x, None), {}, 5).terms.log_weight
    w = torch.softmax(lw.detach(), 0)
    enc_ref = _grads(-(w * w * lw).sum(), vae.guide)
    dec_ref = _grads(-iwae_bound(lw).sum(), vae.model)
    assert torch.allclose(enc, enc_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(dec, dec_ref, rtol=1e-4, atol=1e-5)
    pyro.set_rng_seed(0)
    iw = _loss(vae, x, "iwae", num_particles=5)
    assert torch.allclose(_grads(iw, vae.model), dec, rtol=1e-4, atol=1e-5)  # decoder: plain IWAE
    assert not torch.allclose(_grads(iw, vae.guide), enc, rtol=1e-2)  # encoder: a different estimator


def _mean_grad(vae, x, kind, beta, **params):
    """Gradient of the per-point mean loss over many copies of one point: an average over draws."""
    vae.set_kl_weight(beta)
    big = x[:1].expand(20000, -1)
    loss = _loss(vae, big, kind, seed=3, **params) / len(big)
    return _grads(loss, vae.guide)


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_dreg_and_stl_are_unbiased_for_any_beta(lg, beta):
    vae, x = lg
    iw = _mean_grad(vae, x, "iwae", beta, num_particles=8)
    dr = _mean_grad(vae, x, "dreg", beta, num_particles=8)
    assert (dr - iw).norm() < 0.05 * iw.norm()
    tr = _mean_grad(vae, x, "trace", beta, num_particles=1)
    st = _mean_grad(vae, x, "stl", beta, num_particles=1)
    assert (st - tr).norm() < 0.05 * tr.norm()


def test_stl_guide_gradient_is_the_path_derivative(lg):
    vae, x = lg
    loss = _loss(vae, x, "stl", num_particles=3)
    pyro.set_rng_seed(0)
    lw = stopped_log_terms(vae.model, vae.guide, (x, None), {}, 3).terms.log_weight
    assert torch.allclose(_grads(loss, vae.guide), _grads(-lw.mean(0).sum(), vae.guide), rtol=1e-4, atol=1e-5)


def test_piwae_gives_each_parameter_group_its_own_bound(lg):
    """Model parameters: grad of IWAE over M*K draws; guide parameters: grad of MIWAE(M, K); same draws."""
    vae, x = lg
    loss = _loss(vae, x, "piwae", num_particles=3, num_groups=2)
    pyro.set_rng_seed(0)
    lw = log_terms(vae.model, vae.guide, (x, None), {}, 6).log_weight
    dec_ref = torch.autograd.grad(-iwae_bound(lw).sum(), list(vae.model.parameters()), retain_graph=True)
    enc_ref = torch.autograd.grad(-miwae_bound(lw, 2).sum(), list(vae.guide.parameters()))
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])
    assert torch.allclose(_grads(loss, vae.model), flat(dec_ref), rtol=1e-4, atol=1e-5)
    assert torch.allclose(_grads(loss, vae.guide), flat(enc_ref), rtol=1e-4, atol=1e-5)


def test_score_function_model_gradient_is_pathwise_and_guide_gradient_unbiased_with_beta(lg):
    vae, x = lg
    vae.set_kl_weight(0.5)
    sf, tr = _loss(vae, x, "score_function", baseline=False), _loss(vae, x, "trace")
    assert torch.allclose(_grads(sf, vae.model), _grads(tr, vae.model), rtol=1e-4, atol=1e-5)
    # REINFORCE on the beta-weighted ELBO: its mean must match the reparameterized gradient.
    g_tr = _mean_grad(vae, x, "trace", 0.5)
    g_sf = _mean_grad(vae, x, "score_function", 0.5, baseline=False)
    assert (g_sf - g_tr).norm() < 0.1 * g_tr.norm()


def test_score_function_baseline_lives_in_the_estimator_and_handles_ragged_batches(lg):
    vae, x = lg
    elbo = REGISTRY.build("elbo", resolve_component("elbo", {"kind": "score_function"}, "elbo"))
    loss = elbo(vae.model, vae.guide)
    for n in (16, 16, 5):  # a smaller last batch
        out = loss(x[:n], None)
        out.backward()
    assert elbo.average is not None and len(pyro.get_param_store()) == 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


@pytest.mark.parametrize("kind", ["dreg", "stl", "miwae", "ciwae", "piwae", "score_function"])
def test_every_new_estimator_trains_every_parameter(lg, kind):
    vae, x = lg
    loss = _loss(vae, x, kind)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_path_estimators_reject_a_guide_without_rsample(lg):
    from pyro_vae.estimators import _DetachedSampling

    vae, x = lg
    with pytest.raises(ValueError, match="not reparameterized"):
        stopped_log_terms(vae.model, _DetachedSampling()(vae.guide), (x, None), {}, 2)
