"""VQ-VAE (pyro_vae/models/vqvae.py): where each gradient goes (autograd on tiny cases), the EMA
codebook, dead-code restarts, the constant KL in evaluation, codebook metrics, and the digits spec."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import SpecError, fit
from pyro_vae.cli import main
from pyro_vae.evaluation.evaluate import point_terms
from pyro_vae.models.vqvae import Codebook, fit_code_prior, vq_metrics, vq_terms
from pyro_vae.registry import REGISTRY

SPEC = Path(__file__).resolve().parents[2] / "experiments" / "structured" / "vqvae_digits.yaml"
K, DIM = 5, 3


def _tiny(**kw: object):
    torch.manual_seed(0)
    spec = {"kind": "vqvae", "num_codes": K, "embedding_dim": DIM, "hidden": 4, "downsample": 1, "beta": 0.25,
            "codebook_update": "loss", "decay": 0.99, "restart_dead": False, "dead_threshold": 0.03,
            "likelihood": {"kind": "bernoulli"}, **kw}  # fmt: skip
    vae = REGISTRY.build("model", spec, event_shape=(1, 4, 4))  # 2x2 grid of codes
    x = torch.rand(6, 1, 4, 4).round()
    return vae, x


def _leaves() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(2, 4, DIM, generator=g, requires_grad=True)  # (B, P, D)
    w = torch.randn(K, DIM, generator=g, requires_grad=True)
    k = ((z_e.detach().unsqueeze(-2) - w.detach()) ** 2).sum(-1).argmin(-1)  # brute force
    return z_e, w, k, w.detach()[k]


def test_quantization_picks_the_nearest_code_and_passes_its_value() -> None:
    z_e, w, k, e = _leaves()
    z_st, kk, _, _ = vq_terms(z_e, w)
    assert torch.equal(kk, k)
    torch.testing.assert_close(z_st, e)


def test_straight_through_gradient_reaches_the_encoder_unchanged_and_not_the_codebook() -> None:
    z_e, w, _, _ = _leaves()
    g = torch.randn(z_e.shape)
    (vq_terms(z_e, w)[0] * g).sum().backward()
    torch.testing.assert_close(z_e.grad, g)  # d z_q / d z_e = identity
    assert w.grad is None or not w.grad.any()


def test_codebook_loss_moves_only_the_codebook() -> None:
    z_e, w, k, e = _leaves()
    vq_terms(z_e, w)[2].sum().backward()
    assert z_e.grad is None or not z_e.grad.any()
    want = torch.zeros(K, DIM).index_add_(0, k.reshape(-1), (2 * (e - z_e.detach())).reshape(-1, DIM))
    torch.testing.assert_close(w.grad, want)


def test_commitment_loss_moves_only_the_encoder() -> None:
    z_e, w, _, e = _leaves()
    vq_terms(z_e, w)[3].sum().backward()
    assert w.grad is None or not w.grad.any()
    torch.testing.assert_close(z_e.grad, 2 * (z_e.detach() - e))


def test_elbo_gradient_on_the_codebook_is_exactly_the_codebook_term() -> None:
    """Through Pyro's Trace_ELBO: reconstruction reaches encoder and decoder but never the codebook."""
    vae, x = _tiny()
    loss = pyro.infer.Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)(x)
    loss.backward()
    with torch.no_grad():
        z_e = vae.guide.encode(x)
        _, k, _, _ = vq_terms(z_e, vae.guide.codebook.weight)
        e = vae.guide.codebook.weight[k]
    want = torch.zeros(K, DIM).index_add_(0, k.reshape(-1), (2 * (e - z_e)).reshape(-1, DIM))
    torch.testing.assert_close(vae.guide.codebook.weight.grad, want)
    enc_w = vae.guide.encoder[0].weight
    total = enc_w.grad.clone()
    enc_w.grad = None
    (0.25 * vq_terms(vae.guide.encode(x), vae.guide.codebook.weight)[3].sum()).backward()
    assert (total - enc_w.grad).abs().max() > 1e-6  # the reconstruction term reaches the encoder too
    assert all(p.grad is not None and p.grad.any() for p in vae.model.decoder.parameters())


def test_ema_codebook_is_a_buffer_that_moves_to_cluster_means() -> None:
    cb = Codebook(3, 2, positions=1, ema=True, decay=0.0)
    assert not list(cb.parameters())
    z_e = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[5.0, 5.0]]])  # (B=3, P=1, D=2)
    k = torch.tensor([[1], [1], [0]])
    cb.update(z_e, k, restart_dead=False, dead_threshold=0.0)
    torch.testing.assert_close(cb.weight[1], torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(cb.weight[0], torch.tensor([5.0, 5.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(cb.usage, torch.tensor([[1 / 3, 2 / 3, 0.0]]))


def test_dead_codes_are_restarted_from_encoder_outputs() -> None:
    cb = Codebook(4, 2, positions=1, ema=False, decay=0.5)
    cb.usage.copy_(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    z_e = torch.randn(8, 1, 2)
    cb.update(z_e, torch.zeros(8, 1, dtype=torch.long), restart_dead=True, dead_threshold=0.5)
    rows = z_e.reshape(-1, 2)
    for c in (2, 3):  # usage 0 < 0.5 / 4: restarted at some encoder output
        assert (cb.weight[c] - rows).abs().sum(-1).min() < 1e-6
    assert cb.usage[0, 2] == 0.25


def test_evaluation_reports_the_constant_kl_and_no_vq_losses() -> None:
    vae, x = _tiny()
    t = point_terms(vae, x, None, num_particles=3)
    p = 4  # 2x2 grid
    torch.testing.assert_close(t.kl, torch.full((len(x),), p * math.log(K)))
    torch.testing.assert_close(t.elbo, t.reconstruction - p * math.log(K))
    torch.testing.assert_close(t.log_likelihood, t.elbo)  # deterministic guide: every particle is the same


def test_metrics_and_fitted_code_prior() -> None:
    vae, x = _tiny()
    m = vq_metrics(vae, x)
    used = len(torch.unique(vae.guide.codes(x)))
    assert m["codebook_usage"] == pytest.approx(used / K) and m["dead_codes"] == K - used
    assert 1.0 - 1e-6 <= m["codebook_perplexity"] <= used + 1e-6
    assert m["uniform_code_nll"] == pytest.approx(4 * math.log(K))
    usage = fit_code_prior(vae, x, pseudo_count=0.0)
    torch.testing.assert_close(usage.sum(-1), torch.ones(4))
    assert vq_metrics(vae, x)["code_prior_nll"] <= m["uniform_code_nll"] + 1e-5  # ML fit beats uniform
    drawn = vae.model.prior_dist().sample((50,))  # only codes seen at each position
    k = vae.guide.codebook.nearest(drawn)
    assert bool((usage.gather(1, k.T) > 0).all())


def test_grid_must_divide_the_image() -> None:
    with pytest.raises(SpecError, match="divisible by 16"):
        REGISTRY.build("model", {"kind": "vqvae", "downsample": 4}, event_shape=(1, 8, 8))


def test_digits_spec_trains_reports_codebook_metrics_and_samples(tmp_path: Path) -> None:
    res = fit(SPEC, overrides=["train.epochs=1", "train.progress=false"], out=tmp_path / "r")
    s = res.summary
    assert 1 <= s["codebook_perplexity"] <= 64 and 0 <= s["dead_codes"] < 64
    assert s["test_kl"] == pytest.approx(16 * math.log(64), rel=1e-6)
    assert {"reconstructions.png", "samples.png"} <= {p.name for p in (tmp_path / "r" / "figures").iterdir()}
    assert main(["sample", str(tmp_path / "r"), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0


def test_codebook_starts_at_encoder_outputs_of_the_first_training_batch() -> None:
    vae, x = _tiny()
    vae.train()
    vae.guide(x)
    rows = vae.guide.encode(x).detach().reshape(-1, DIM)
    w = vae.guide.codebook.weight.detach()
    assert bool(vae.guide.codebook.initialized)
    assert ((w.unsqueeze(1) - rows).abs().sum(-1).min(1).values < 1e-6).all()
    before = w.clone()
    vae.guide(x)  # only once
    torch.testing.assert_close(vae.guide.codebook.weight.detach(), before)
