"""full_rank guide: its density is the exact N(mu, L L^T) it samples from, and it stays finite when the
KL weight is near 0 (the start of a linear warm-up), where an ``L``-parametrized guide collapsed."""

from __future__ import annotations

import math

import pyro
import torch
from torch import nn

import pyro_vae
from pyro_vae.estimators.fast import accelerate
from pyro_vae.guides import FullRankGuide
from pyro_vae.models.nets import Encoder
from pyro_vae.registry import REGISTRY

H, D = 7, 5


def _guide(d: int = D, scale: float = 0.3) -> FullRankGuide:
    guide = FullRankGuide(encoder=Encoder(nn.Identity(), H), latent_dim=d).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return guide


def _reference_log_density(guide: FullRankGuide, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Hand-written: Sigma = L L^T with L = (I - B)^-1 diag(s), log N(z; mu, Sigma) from inv and slogdet."""
    s = nn.functional.softplus(guide.raw_diag(h)) + guide.min_scale
    rows, cols = torch.tril_indices(D, D, offset=-1)
    b = torch.zeros(*h.shape[:-1], D, D, dtype=h.dtype)
    b[..., rows, cols] = guide.off_diag(h)
    lower = torch.linalg.inv(torch.eye(D, dtype=h.dtype) - b) @ torch.diag_embed(s)
    cov = lower @ lower.transpose(-1, -2)
    diff = (z - guide.loc(h)).unsqueeze(-1)
    maha = (diff.transpose(-1, -2) @ torch.linalg.inv(cov) @ diff).squeeze(-1).squeeze(-1)
    return -0.5 * (maha + torch.linalg.slogdet(cov).logabsdet + D * math.log(2 * math.pi))


def test_log_prob_and_gradients_equal_the_hand_written_density_in_float64() -> None:
    guide = _guide()
    h = torch.randn(4, H, dtype=torch.float64)
    z = torch.randn(3, 4, D, dtype=torch.float64, requires_grad=True)  # arbitrary points, not draws
    q = guide.dist(h)
    assert q.batch_shape == (4,) and q.event_shape == (D,)
    assert (guide.off_diag(h).abs() > 0.1).any()  # genuinely correlated
    params = [p for p in guide.parameters()]
    got = q.log_prob(z)
    ref = _reference_log_density(guide, h, z)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g_got = torch.autograd.grad(got.sum(), [z, *params], retain_graph=True)
    g_ref = torch.autograd.grad(ref.sum(), [z, *params])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # the law sampled is the one scored: scale_tril, covariance, precision, entropy agree with the reference
    cov_ref = torch.linalg.inv(q.precision_matrix)
    torch.testing.assert_close(q.covariance_matrix, cov_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q.scale_tril, guide.scale_tril(h))
    ent_ref = 0.5 * (torch.linalg.slogdet(cov_ref).logabsdet + D * (1 + math.log(2 * math.pi)))
    torch.testing.assert_close(q.entropy(), ent_ref, rtol=1e-10, atol=1e-10)


def test_reparameterized_draws_have_the_whitened_density_and_path_gradient() -> None:
    guide = _guide()
    h = torch.randn(4, H, dtype=torch.float64)
    q = guide.dist(h)
    eps = torch.randn(6, 4, D, dtype=torch.float64)
    z = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    torch.manual_seed(3)
    drawn = q.rsample((6,))
    torch.manual_seed(3)
    assert torch.equal(
        drawn, q.loc + (q.scale_tril @ torch.randn(6, 4, D, dtype=torch.float64).unsqueeze(-1)).squeeze(-1)
    )
    log_det = torch.diagonal(q.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    torch.testing.assert_close(q.log_prob(z), -0.5 * eps.pow(2).sum(-1) - log_det - D * 0.5 * math.log(2 * math.pi))
    # total derivative of log q(z(theta), theta) at a fixed eps is that of -log det L alone
    params = [p for p in guide.parameters()]
    g_total = torch.autograd.grad(q.log_prob(z).sum(), params, allow_unused=True, retain_graph=True)
    g_det = torch.autograd.grad(-log_det.sum() * 6, params, allow_unused=True)
    for prm, a, b in zip(params, g_total, g_det):
        zero = torch.zeros_like(prm)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b, rtol=1e-9, atol=1e-9)


def test_thin_posterior_with_correlations_scores_its_own_draws_in_float32() -> None:
    """The state training reached with a KL weight near 0: residual scales ~1e-3, O(1) couplings. The
    log-density of the guide's own float32 draws must stay the whitened one (|eps|^2 ~ d), not overflow."""
    d = 50
    guide = FullRankGuide(encoder=Encoder(nn.Identity(), H), latent_dim=d)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        guide.raw_diag.bias.fill_(-7.0)  # s ~ 1e-3
        guide.off_diag.bias.copy_(torch.randn(guide.off_diag.bias.shape, generator=g) / math.sqrt(d))
    h = torch.randn(16, H, generator=g)
    q = guide.dist(h)
    eps = torch.randn(4, 16, d, generator=g)
    z = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    log_det = torch.diagonal(q.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    ref = -0.5 * eps.pow(2).sum(-1) - log_det - d * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(q.log_prob(z), ref, rtol=0, atol=0.05)


def test_kl_weight_near_zero_training_stays_finite_and_log_q_exact() -> None:
    """A Bernoulli MLP VAE with a KL weight of 1e-3 (the first tenth of a warm-up): with L parametrized
    directly, its diagonal collapses under O(1) off-diagonals (condition number 1e21 within 50 steps)
    and log q of the guide's own draws is off by 1e27 (the loss reaches -1e21)."""
    pyro.set_rng_seed(0)
    d, p, n = 20, 32, 128
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.sigmoid(3 * torch.randn(n, 4, generator=g) @ torch.randn(4, p, generator=g)), generator=g)
    nets = pyro_vae.mlp(event_shape=(p,), latent_dim=d, out_params=1, hidden=[64, 64])
    guide = FullRankGuide(encoder=nets.encoder, latent_dim=d)
    model = pyro_vae.Generative(
        pyro_vae.StandardNormal(latent_dim=d), nets.decoder, pyro_vae.Bernoulli(event_shape=(p,))
    )
    vae = pyro_vae.VAE(model, guide)
    loss_fn = accelerate(REGISTRY.build("elbo", {"kind": "trace"})(vae.model, vae.guide))
    vae.set_kl_weight(1e-3)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(60):
        loss = loss_fn(x[torch.randint(0, n, (32,), generator=g)]) / 32
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and loss > -1.0  # -log p(x|z) >= 0; 1e-3 (log q - log p) is small
        assert all(torch.isfinite(q.grad).all() for q in vae.parameters() if q.grad is not None)
        opt.step()
    with torch.no_grad():
        q = guide.dist(x)
        eps = torch.randn(n, d, generator=g)
        z = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        log_det = torch.diagonal(q.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        ref = -0.5 * eps.pow(2).sum(-1) - log_det - d * 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(q.log_prob(z), ref, rtol=0, atol=0.5)
