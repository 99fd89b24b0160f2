"""Likelihoods of the component zoo: laplace, categorical (256 levels), discretized logistic."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pyro_vae.errors import DataError
from pyro_vae.models.likelihoods import Laplace
from pyro_vae.models.pixel import Categorical256, DiscretizedLogisticLikelihood, to_levels
from pyro_vae.registry import REGISTRY

EVENT = (1, 2, 3)  # (C, H, W)
LEVELS = torch.arange(256) / 255.0


def _all_levels(lead: int = 4) -> torch.Tensor:
    """Every level for every element: shape (256, lead, *EVENT)."""
    return LEVELS.reshape(256, 1, 1, 1, 1).expand(256, lead, *EVENT)


def test_registered() -> None:
    assert {"laplace", "categorical", "discretized_logistic"} <= set(REGISTRY.names("likelihood"))


def test_laplace_matches_torch_and_learns_its_scale() -> None:
    lik = Laplace(event_shape=EVENT)
    params = torch.randn(5, 1, *EVENT)
    x = torch.randn(5, *EVENT)
    ref = torch.distributions.Laplace(params[:, 0], lik.b()).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(lik(params).log_prob(x), ref)
    torch.testing.assert_close(lik.mean(params), params[:, 0])
    assert lik.raw_scale.requires_grad
    fixed = Laplace(event_shape=EVENT, scale=0.5)
    ref = torch.distributions.Laplace(params[:, 0], 0.5).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(fixed(params).log_prob(x), ref)
    fixed.check_data(100 * x)  # any real data


def test_categorical_is_seed_004_cross_entropy_and_normalized() -> None:
    lik = Categorical256(event_shape=EVENT)
    assert lik.num_params == 256
    params = torch.randn(4, 256, *EVENT)  # decoder output (*lead, 256, *event)
    k = torch.randint(0, 256, (4, *EVENT))
    x = k / 255.0
    # the reference: torch's F.cross_entropy(logits, levels, reduction="sum") with the 256 classes at dim 1
    ce = torch.stack([F.cross_entropy(params[i : i + 1], k[i : i + 1], reduction="sum") for i in range(4)])
    torch.testing.assert_close(lik(params).log_prob(x), -ce)
    # The 256 probabilities of every element sum to 1.
    d = lik(params).base_dist  # per-element distribution, batch (4, *EVENT)
    total = torch.logsumexp(torch.stack([d.log_prob(torch.full((4, *EVENT), v.item())) for v in LEVELS]), 0)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)
    probs = F.softmax(params, 1)
    torch.testing.assert_close(lik.mean(params), (probs * LEVELS.reshape(1, 256, 1, 1, 1)).sum(1))
    s = lik(params).sample()
    assert s.shape == (4, *EVENT) and torch.allclose(to_levels(s) / 255.0, s)


def test_discretized_logistic_is_a_normalized_pmf() -> None:
    lik = DiscretizedLogisticLikelihood(event_shape=EVENT)
    params = torch.stack([torch.rand(4, *EVENT), torch.randn(4, *EVENT) - 3.0], 1)  # loc in [0,1], log s ~ -3
    d = lik(params).base_dist
    lp = torch.stack([d.log_prob(torch.full((4, *EVENT), v.item())) for v in LEVELS])
    torch.testing.assert_close(torch.logsumexp(lp, 0), torch.zeros(4, *EVENT), atol=1e-4, rtol=0)
    assert torch.isfinite(lp).all()


def test_discretized_logistic_approaches_the_density_times_the_bin() -> None:
    """For a scale much wider than a bin, P(level) ~ logistic density x 1/255 away from the edges."""
    loc, log_s = torch.tensor(0.5), torch.tensor(-2.0)
    d = DiscretizedLogisticLikelihood(event_shape=(1,))(torch.stack([loc, log_s]).reshape(2, 1)).base_dist
    x = torch.tensor([0.3, 0.5, 0.7]).reshape(3, 1)
    x = to_levels(x) / 255.0
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(0.0, 1.0),
        [torch.distributions.transforms.SigmoidTransform().inv, torch.distributions.AffineTransform(loc, log_s.exp())],
    ).log_prob(x) + torch.log(torch.tensor(1 / 255.0))
    torch.testing.assert_close(d.log_prob(x), ref, atol=1e-3, rtol=0)


def test_discretized_logistic_gradients_are_finite_at_the_edges() -> None:
    params = torch.zeros(2, 2, *EVENT, requires_grad=True)
    x = torch.zeros(2, *EVENT)
    x[1] = 1.0
    lik = DiscretizedLogisticLikelihood(event_shape=EVENT)
    lik(params).log_prob(x).sum().backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("kind", ["categorical", "discretized_logistic"])
def test_8bit_likelihoods_reject_other_data(kind: str) -> None:
    lik = REGISTRY.build("likelihood", {"kind": kind}, event_shape=EVENT)
    lik.check_data(torch.randint(0, 256, (3, *EVENT)) / 255.0)  # 8-bit: fine
    lik.check_data(torch.randint(0, 2, (3, *EVENT)).float())  # binarized: levels 0 and 255
    with pytest.raises(DataError, match=r"\[0, 1\].*gaussian"):
        lik.check_data(torch.randn(3, *EVENT) * 3)
    with pytest.raises(DataError, match=r"k/255.*not one of the 256 levels"):
        lik.check_data(torch.full((3, *EVENT), 0.123456))
    with pytest.raises(DataError, match=kind):
        lik.check_data(torch.arange(17.0).div(16).reshape(17, 1))  # the digits' k/16 values


@pytest.mark.parametrize("kind", ["laplace", "categorical", "discretized_logistic"])
def test_trains_end_to_end_on_8bit_images(kind: str, tmp_path, tiny) -> None:
    import numpy as np

    from pyro_vae import fit

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (96, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:64], x_test=x[64:])
    res = fit(
        overrides=[*tiny, "data={name: npz, path: " + str(tmp_path / "d.npz") + "}", f"model.likelihood={{kind: {kind}}}",
                   "train.epochs=2", "train.figures=false"],
        out=tmp_path / "run",
    )  # fmt: skip
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
