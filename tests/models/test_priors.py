"""Priors: densities (normalization, mixture identities) and the prior x guide x estimator training grid."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from pyro_vae.errors import SpecError
from pyro_vae.guides import DiagonalNormalGuide, FlowGuide
from pyro_vae.models.nets import Encoder
from pyro_vae.models.priors import EqualMixture, FlowPrior, LearnedNormal, MixturePrior, VampPrior
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.spec import DEFAULT_SPEC, resolve

PRIORS = ["standard_normal", "learned_normal", "mixture", "vamp", "flow"]
GUIDES = ["diagonal_normal", "full_rank", "low_rank", "flow", "delta"]
ESTIMATORS = ["trace", "meanfield", "iwae", "renyi"]


def _grid_mass(log_prob, lo: float = -7.0, hi: float = 7.0, n: int = 300) -> float:
    g = torch.linspace(lo, hi, n)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        return float(log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2)


def test_every_prior_is_registered() -> None:
    assert set(PRIORS) <= set(REGISTRY.names("prior"))


def test_learned_normal_starts_standard_and_learns() -> None:
    p = LearnedNormal(latent_dim=3)
    d = p()
    torch.testing.assert_close(d.base_dist.scale, torch.full((3,), 1.0 + 1e-3))
    assert {n for n, _ in p.named_parameters()} == {"loc", "raw_scale"}


def test_mixture_log_prob_is_the_log_mean_of_component_densities() -> None:
    torch.manual_seed(0)
    p = MixturePrior(latent_dim=2, num_components=4)
    with torch.no_grad():
        p.logits.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    z = torch.randn(7, 2)
    w = torch.softmax(p.logits, 0)
    comp = torch.distributions.Independent(
        torch.distributions.Normal(p.loc, nn.functional.softplus(p.raw_scale + math.log(math.e - 1)) + 1e-3), 1
    )
    ref = torch.logsumexp(comp.log_prob(z[:, None, :]) + w.log(), -1)
    torch.testing.assert_close(p().log_prob(z), ref)
    assert _grid_mass(p().log_prob) == pytest.approx(1.0, abs=1e-2)


def _guide(flow: bool = False) -> nn.Module:
    enc = Encoder(nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.Tanh()), 8)
    return FlowGuide(encoder=enc, latent_dim=2, hidden=[8]) if flow else DiagonalNormalGuide(encoder=enc, latent_dim=2)


@pytest.mark.parametrize("flow_guide", [False, True], ids=["diagonal_guide", "flow_guide"])
def test_vamp_is_the_equal_mixture_of_posteriors_at_pseudo_inputs(flow_guide: bool) -> None:
    torch.manual_seed(0)
    guide = _guide(flow_guide)
    p = VampPrior(latent_dim=2, event_shape=(5,), guide=guide, num_components=3)
    z = torch.randn(4, 2)
    each = torch.stack([guide.dist(p.pseudo_inputs[k : k + 1]).log_prob(z) for k in range(3)], -1)  # (4, 3)
    torch.testing.assert_close(p().log_prob(z), torch.logsumexp(each, -1) - math.log(3), rtol=1e-4, atol=1e-4)
    assert _grid_mass(p().log_prob, -6, 6, 200) == pytest.approx(1.0, abs=2e-2)
    s = p().sample((11,))
    assert s.shape == (11, 2) and torch.isfinite(s).all()
    # The prior shares the guide's parameters but does not own them (saved once, trained by both terms).
    assert not any(n.startswith("guide") for n, _ in p.named_parameters())


def test_vamp_log_prob_of_particle_batches_matches_a_loop_over_points_and_pseudo_inputs() -> None:
    """z of shape (particles, B, D), as the estimators score it: every entry against all K components."""
    torch.manual_seed(0)
    guide = _guide()
    p = VampPrior(latent_dim=2, event_shape=(5,), guide=guide, num_components=4)
    z = 3 * torch.randn(3, 6, 2)
    q = guide.dist(p.pseudo_inputs)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    ref = torch.empty(3, 6)
    for i, j in itertools.product(range(3), range(6)):
        each = [torch.distributions.Normal(loc[k], scale[k]).log_prob(z[i, j]).sum() for k in range(4)]
        ref[i, j] = torch.logsumexp(torch.stack(each), 0) - math.log(4)
    pz = p().expand((3, 6))  # what the particle and data plates make of it
    torch.testing.assert_close(pz.log_prob(z), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p().log_prob(z), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_vamp_training_loss_and_gradients_match_a_hand_written_elbo(beta: float) -> None:
    """Fast path and Pyro path give the VampPrior ELBO of Tomczak & Welling: beta (log p(z) - log q(z|x))
    with log p(z) = log mean_k q(z|u_k); gradients reach the pseudo-inputs and the shared encoder."""
    from pyro_vae.estimators import fast as fastpath

    torch.manual_seed(0)
    r = _spec("vamp", "diagonal_normal", "trace")
    vae = build_model(r, (1, 4, 4))
    vae.set_kl_weight(beta)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)).round()
    fast = fastpath.accelerate(REGISTRY.build("elbo", r["elbo"])(vae.model, vae.guide))
    n = r["elbo"]["num_particles"]

    def by_hand() -> torch.Tensor:
        q = vae.guide.dist(x)
        z = q.rsample((n,))
        qu = vae.guide.dist(vae.model.prior.pseudo_inputs)
        comp = torch.distributions.Normal(qu.base_dist.loc, qu.base_dist.scale)
        log_p = torch.logsumexp(comp.log_prob(z[:, :, None, :]).sum(-1), -1) - math.log(5)
        obs = vae.model.likelihood(vae.model.decoder(z)).log_prob(x)
        return -(obs + beta * (log_p - q.log_prob(z))).sum() / n

    params = list(vae.parameters())
    results = []
    for loss_fn in (fast, fast.pyro_loss, by_hand):
        torch.manual_seed(3)
        loss = loss_fn(x) if loss_fn is not by_hand else by_hand()
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    for loss, grads in results[:2]:
        torch.testing.assert_close(loss, results[2][0], rtol=1e-5, atol=1e-4)
        for g, ref in zip(grads, results[2][1]):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)
    named = dict(zip((k for k, _ in vae.named_parameters()), results[2][1]))
    assert named["model.prior.pseudo_inputs"].abs().sum() > 0
    assert named["guide.encoder.body.1.weight"].abs().sum() > 0


def test_equal_mixture_sample_mean() -> None:
    comps = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor([[-2.0, 0.0], [2.0, 4.0]]), torch.ones(2, 2)), 1
    )
    torch.manual_seed(0)
    s = EqualMixture(comps).sample((20000,))
    torch.testing.assert_close(s.mean(0), torch.tensor([0.0, 2.0]), atol=0.06, rtol=0)


@pytest.mark.parametrize("transform", ["affine_autoregressive", "spline_autoregressive"])
def test_flow_prior_is_normalized_and_samples_where_it_puts_mass(transform: str) -> None:
    torch.manual_seed(0)
    p = FlowPrior(latent_dim=2, transform=transform, num_flows=2, hidden=[8])
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    assert _grid_mass(p().log_prob) == pytest.approx(1.0, abs=2e-2)
    with torch.no_grad():
        s = p().sample((2000,))
        lp_s, lp_base = float(p().log_prob(s).mean()), float(p().log_prob(torch.randn(2000, 2)).mean())
    # Draws come from the density that log_prob scores: their mean log-density beats the N(0, I) draws'.
    assert lp_s > lp_base - 0.05


def test_flow_prior_needs_two_dimensions() -> None:
    with pytest.raises(SpecError, match="latent_dim >= 2"):
        FlowPrior(latent_dim=1)


def _spec(prior: str, guide: str, elbo: str) -> dict:
    spec = dict(DEFAULT_SPEC)
    spec["model"] = dict(
        spec["model"],
        latent_dim=2,
        prior={"kind": prior, **({"num_components": 5} if prior in ("mixture", "vamp") else {})},
        network={"kind": "mlp", "hidden": [16]},
    )
    spec["guide"] = {"kind": guide}
    spec["elbo"] = {"kind": elbo, **({"num_particles": 2} if elbo in ("trace", "meanfield") else {})}
    return resolve(spec)


def test_vamp_rejects_a_point_mass_guide() -> None:
    with pytest.raises(SpecError, match="point mass"):
        build_model(_spec("vamp", "delta", "trace"), (1, 8, 8))


# renyi shares iwae's code path (LogWeightELBO); its column of the grid runs with -m slow.
GRID = [
    pytest.param(*c, marks=[pytest.mark.slow] if c[2] == "renyi" else [])
    for c in itertools.product(PRIORS, GUIDES, ESTIMATORS)
    if c[:2] != ("vamp", "delta")
]


@pytest.mark.parametrize("prior, guide, elbo", GRID)
def test_every_prior_guide_estimator_combination_trains(prior: str, guide: str, elbo: str) -> None:
    torch.manual_seed(0)
    r = _spec(prior, guide, elbo)
    vae = build_model(r, (1, 8, 8))
    loss_fn = REGISTRY.build("elbo", r["elbo"])(vae.model, vae.guide)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-2)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)).round()
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # meanfield's fallback notice is tested in test_divergences.py
        for _ in range(8):
            loss = loss_fn(x) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # a decreasing trend
    # Everything downstream of training works for the combination.
    assert vae.sample(3).shape == (3, 1, 8, 8)
    assert vae.reconstruct(x[:2]).shape == (2, 1, 8, 8)
    assert torch.isfinite(vae.posterior_mean(x[:2])).all()


def _direct_mixture_log_prob(z, loc, scale, log_w):
    """Hand-written: the (N, K, D) differences, summed per component, then log-sum-exp over K."""
    diff = (z.unsqueeze(-2) - loc) / scale
    comp = -0.5 * diff.pow(2).sum(-1) - scale.log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return torch.logsumexp(comp + log_w, -1)


def test_diagonal_mixture_log_prob_and_gradients_equal_the_direct_formula_in_float64() -> None:
    """Narrow components far from the origin (scale 0.03..0.3, |z| up to ~8): the three-product form
    cancels terms of size D (z/s)^2 ~ 1e5, so float64 products are what keeps it exact."""
    from pyro_vae.models.priors import diagonal_mixture_log_prob

    g = torch.Generator().manual_seed(3)
    k, d = 7, 6
    loc = (3 * torch.randn(k, d, generator=g, dtype=torch.float64)).requires_grad_()
    scale = (0.03 + 0.27 * torch.rand(k, d, generator=g, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(k, generator=g, dtype=torch.float64).requires_grad_()
    z = (loc.detach()[torch.randint(k, (4, 5), generator=g)] + 0.1 * torch.randn(4, 5, d, generator=g,
                                                                                  dtype=torch.float64)).requires_grad_()  # fmt: skip
    log_w = torch.log_softmax(logits, -1)
    ours = diagonal_mixture_log_prob(z, loc, scale, log_w)
    ref = _direct_mixture_log_prob(z, loc, scale, log_w)
    assert ours.shape == (4, 5)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-9)
    for a, b in zip(torch.autograd.grad(ours.sum(), [z, loc, scale, logits], retain_graph=True),
                    torch.autograd.grad(ref.sum(), [z, loc, scale, logits]), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-8)


def test_diagonal_mixture_log_prob_in_float32_is_as_accurate_as_float32_allows() -> None:
    """float32 inputs: within 1e-4 nats of the float64 direct formula (the same three products in float32
    are off by 7e-3 here), and the mixture prior's distribution uses it."""
    from pyro_vae.models.priors import diagonal_mixture_log_prob

    g = torch.Generator().manual_seed(4)
    k, d = 100, 50
    loc = 2 * torch.randn(k, d, generator=g)
    scale = 0.05 + 0.25 * torch.rand(k, d, generator=g)
    z = loc[torch.randint(k, (512,), generator=g)] + 0.1 * torch.randn(512, d, generator=g)
    log_w = torch.full((k,), -math.log(k))
    ref = _direct_mixture_log_prob(z.double(), loc.double(), scale.double(), log_w.double())
    ours = diagonal_mixture_log_prob(z, loc, scale, log_w)
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max() < 1e-4
    prior = MixturePrior(latent_dim=3, num_components=4)
    p = prior()
    x = torch.randn(9, 3)
    torch.testing.assert_close(p.log_prob(x), torch.distributions.MixtureSameFamily(
        p.mixture_distribution, p.component_distribution).log_prob(x), rtol=1e-5, atol=1e-5)  # fmt: skip
