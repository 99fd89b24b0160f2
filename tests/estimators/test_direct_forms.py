"""Direct (trace-free) forms of dreg, stl, miwae, ciwae, piwae and free_bits: the same values and
gradients as the Pyro path on the same draws, and the check notices a wrong direct form.

The standard pair of the convergence runs (MLP VAE, diagonal Normal guide, N(0, I) prior, Bernoulli
likelihood) is the reference here; tests/estimators/test_verification.py repeats the equality for
every estimator on a learned-Normal prior and a Gaussian likelihood in float64.
"""

from __future__ import annotations

from typing import Any

import pyro
import pytest
import torch

from pyro_vae.errors import SpecError
from pyro_vae.estimators import (
    IWAE_ELBO,
    PIWAE_ELBO,
    STL_ELBO,
    DReG_ELBO,
    FreeBitsELBO,
    iwae_bound,
    miwae_bound,
    scale_grad,
)
from pyro_vae.estimators.fast import FastELBO, accelerate, direct_form
from pyro_vae.guides.delta import DeltaGuide
from pyro_vae.guides.normal import DiagonalNormalGuide
from pyro_vae.models import likelihoods
from pyro_vae.models.nets import mlp
from pyro_vae.models.priors import StandardNormal
from pyro_vae.models.vae import VAE, Generative
from pyro_vae.registry import REGISTRY
from pyro_vae.spec import resolve_component

EVENT = (1, 4, 4)
LATENT = 3

#: (name, elbo spec): the estimators whose direct forms are new, at the settings the benchmark uses too.
CASES = [
    ("dreg5", {"kind": "dreg", "num_particles": 5}),
    ("stl1", {"kind": "stl", "num_particles": 1}),
    ("stl3", {"kind": "stl", "num_particles": 3}),
    ("miwae", {"kind": "miwae", "num_particles": 3, "num_groups": 2}),
    ("ciwae", {"kind": "ciwae", "num_particles": 4, "mix": 0.3}),
    ("piwae", {"kind": "piwae", "num_particles": 3, "num_groups": 2}),
    ("free_bits", {"kind": "free_bits", "lam": 0.45, "num_particles": 2}),  # floors 2 of 3 dims
]


def make_vae(seed: int = 0, dtype: torch.dtype = torch.float64) -> VAE:
    torch.manual_seed(seed)
    lik = likelihoods.Bernoulli(event_shape=EVENT)
    nets = mlp(event_shape=EVENT, latent_dim=LATENT, out_params=1, hidden=[8])
    vae = VAE(
        Generative(StandardNormal(latent_dim=LATENT), nets.decoder, lik),
        DiagonalNormalGuide(encoder=nets.encoder, latent_dim=LATENT),
    )
    with torch.no_grad():  # q far from the prior, so every gradient term is large
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae.to(dtype)


def batch(n: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (torch.rand(n, *EVENT, generator=g) < 0.5).to(dtype)


def build(spec: dict[str, Any]) -> Any:
    return REGISTRY.build("elbo", resolve_component("elbo", spec, "elbo"))


def both(elbo: Any, vae: VAE, x: torch.Tensor, seed: int = 7) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(value, flat gradient) of the direct form and of the Pyro path on the same seed."""
    fast = FastELBO(elbo, vae.model, vae.guide)
    params = list(vae.parameters())
    out = []
    for fn in (fast, fast.pyro_loss):
        pyro.set_rng_seed(seed)
        loss = fn(x, None)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(
            (
                loss.detach(),
                torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]),
            )
        )
    assert fast.fallbacks == 0
    return tuple(out)


def mismatch(elbo: Any, vae: VAE, x: torch.Tensor) -> tuple[float, float]:
    """Relative difference of value and of gradient between the direct form and the Pyro path."""
    (lf, gf), (lp, gp) = both(elbo, vae, x)
    return float((lf - lp).abs() / lp.abs()), float((gf - gp).norm() / gp.norm())


@pytest.mark.parametrize("beta", [1.0, 0.4, 1.5])
@pytest.mark.parametrize(("name", "spec"), CASES, ids=[c[0] for c in CASES])
def test_direct_form_equals_the_pyro_path_on_the_standard_pair(name, spec, beta):
    vae = make_vae()
    vae.set_kl_weight(beta)
    elbo = build(spec)
    assert direct_form(elbo) is not None
    value, grad = mismatch(elbo, vae, batch())
    assert value < 1e-12 and grad < 1e-10, (value, grad)


def _dreg_without_the_squared_weight(self, q, x, cond):
    d = q.draw(self.num_particles)
    return -iwae_bound(d.log_weight(stopped=True)).sum()  # guide gets w~, not w~^2


def _dreg_with_the_weight_twice(self, q, x, cond):
    d = q.draw(self.num_particles)
    lw = d.log_weight(stopped=True)
    w = torch.softmax(lw.detach(), 0)
    scale_grad(d.z, w * w)
    return -iwae_bound(lw).sum()


def _dreg_always_stopped(self, q, x, cond):  # ignores the KL-weight < 1 rule
    d = q.draw(self.num_particles)
    lw = d.log_weight(stopped=True)
    scale_grad(d.z, (1.0 - q.beta_q) + q.beta_q * torch.softmax(lw.detach(), 0))
    return -iwae_bound(lw).sum()


def _stl_without_the_stop_gradient(self, q, x, cond):
    return -q.draw(self.num_particles).log_weight(stopped=False).mean(0).sum()


def _piwae_guide_on_iwae(self, q, x, cond):
    return -iwae_bound(q.draw(self.num_particles).log_weight()).sum()


def _piwae_model_on_miwae(self, q, x, cond):
    return -miwae_bound(q.draw(self.num_particles).log_weight(), self.num_groups).sum()


def _free_bits_without_the_floor(self, q, x, cond):
    kl = q.kl_per_dimension()
    obs = q.draw(self.num_particles).obs()
    return -(obs.mean(0).sum() - q.beta_p * obs.shape[-1] * kl.mean(0).sum())


WRONG = [
    (DReG_ELBO, _dreg_without_the_squared_weight, "dreg5", 1.0),
    (DReG_ELBO, _dreg_with_the_weight_twice, "dreg5", 1.0),
    (DReG_ELBO, _dreg_always_stopped, "dreg5", 0.4),
    (STL_ELBO, _stl_without_the_stop_gradient, "stl1", 1.0),
    (PIWAE_ELBO, _piwae_guide_on_iwae, "piwae", 1.0),
    (PIWAE_ELBO, _piwae_model_on_miwae, "piwae", 1.0),
    (FreeBitsELBO, _free_bits_without_the_floor, "free_bits", 1.0),
]


@pytest.mark.parametrize(("cls", "wrong", "name", "beta"), WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_wrong_direct_form_fails_the_equality(monkeypatch, cls, wrong, name, beta):
    """The equality above must notice each of these plausible mistakes (in the gradient: every one
    of them keeps the value)."""
    vae = make_vae()
    vae.set_kl_weight(beta)
    spec = dict(CASES)[name]
    monkeypatch.setattr(cls, "fast_loss", wrong)
    value, grad = mismatch(build(spec), vae, batch())
    assert grad > 1e-3, (wrong.__name__, value, grad)


class _TemperedIWAE(IWAE_ELBO):
    """A subclass that changes only the objective: keeps the direct form, with its own objective."""

    def objective(self, terms):
        return 0.5 * iwae_bound(2.0 * terms.log_weight)


class _OwnLoss(IWAE_ELBO):
    """A subclass with a loss of its own: the inherited direct form would compute another one."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return 2.0 * super().differentiable_loss(model, guide, *args, **kwargs)


def test_a_subclass_keeps_the_direct_form_unless_it_changes_the_loss():
    vae = make_vae()
    x = batch()
    assert isinstance(accelerate(_TemperedIWAE(4)(vae.model, vae.guide)), FastELBO)
    value, grad = mismatch(_TemperedIWAE(4), vae, x)
    assert value < 1e-12 and grad < 1e-10
    m = _OwnLoss(4)(vae.model, vae.guide)
    assert direct_form(m.elbo) is None and accelerate(m) is m


@pytest.mark.parametrize("kind", ["dreg", "stl"])
def test_the_convergence_runs_estimators_take_the_fast_path(kind):
    """dreg K=5 and stl K=1 on the standard MLP VAE built from the spec: ``accelerate`` (what
    ``train.fast_path: true`` applies) takes them, without falling back."""
    from pyro_vae.models.vae import build_model
    from pyro_vae.spec import DEFAULT_SPEC, resolve

    k = 5 if kind == "dreg" else 1
    cfg = resolve({**DEFAULT_SPEC, "elbo": {"kind": kind, "num_particles": k}})
    vae = build_model(cfg, (1, 28, 28))
    assert isinstance(vae.guide, DiagonalNormalGuide) and isinstance(vae.model.likelihood, likelihoods.Bernoulli)
    fast = accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
    assert isinstance(fast, FastELBO)
    x = (torch.rand(4, 1, 28, 28) < 0.5).float()
    fast(x, None).backward()
    assert fast.fallbacks == 0


def test_dreg_refuses_a_point_mass_guide_on_the_fast_path_too():
    vae = make_vae(dtype=torch.float32)
    nets = mlp(event_shape=EVENT, latent_dim=LATENT, out_params=1, hidden=[8])
    fast = FastELBO(build({"kind": "dreg"}), vae.model, DeltaGuide(encoder=nets.encoder, latent_dim=LATENT))
    with pytest.raises(SpecError, match="point mass"):
        fast(batch(dtype=torch.float32), None)


def test_score_function_has_no_direct_form():
    vae = make_vae()
    m = build({"kind": "score_function"})(vae.model, vae.guide)
    assert direct_form(m.elbo) is None and accelerate(m) is m


@pytest.mark.parametrize("name", ["dreg5", "stl1", "piwae", "free_bits"])
def test_noise_handler_draws_reach_the_direct_forms(name):
    from pyro_vae.training.noise import StepNoise

    vae = make_vae()
    x = batch()
    fast = FastELBO(build(dict(CASES)[name]), vae.model, vae.guide)
    losses = []
    for fn in (fast, fast.pyro_loss):
        with StepNoise(seed=11, n_global=len(x), start=0, stop=len(x)):
            losses.append(fn(x, None).detach())
    assert fast.fallbacks == 0 and torch.allclose(losses[0], losses[1], rtol=1e-12)
