"""CVAE (pyro_vae/models/cvae.py): conditional likelihood identities on a linear-Gaussian model,
conditional priors, spec checks, and the digits spec end to end (CI smoke)."""

from __future__ import annotations

import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import SpecError, fit, resolve
from pyro_vae.cli import main
from pyro_vae.evaluation.evaluate import point_terms
from pyro_vae.guides.base import AmortizedGuide
from pyro_vae.models.cvae import CVAE, ClassMeanPrior, ConditionalPrior
from pyro_vae.models.likelihoods import Gaussian
from pyro_vae.models.nets import Decoder
from pyro_vae.models.vae import Generative
from pyro_vae.spec import DEFAULT_SPEC

SPEC = Path(__file__).resolve().parents[2] / "experiments" / "structured" / "cvae_digits.yaml"
C, D, F, SIGMA = 3, 2, 5, 0.7


class _Cat(nn.Module):
    """Encoder features [x, cond] (linear, so the exact posterior is a function of them)."""

    out_features = F + C

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        assert cond is not None
        return torch.cat([x, cond], -1)


class _ExactPosteriorGuide(AmortizedGuide):
    """q(z|x,y) = the exact posterior of the linear-Gaussian CVAE, with scales times ``widen``."""

    def __init__(self, M: torch.Tensor, W: torch.Tensor, V: torch.Tensor, b: torch.Tensor, widen: float) -> None:
        super().__init__(_Cat(), D)
        self.M, self.W, self.V, self.b, self.widen = M, W, V, b, widen
        self.S = torch.linalg.inv(torch.eye(D, dtype=W.dtype) + W.T @ W / SIGMA**2)

    def head(self, h: torch.Tensor) -> dist.Distribution:
        x, y = h[..., :F], h[..., F:]
        mu_y = y @ self.M.T
        resid = x - mu_y @ self.W.T - y @ self.V.T - self.b
        loc = mu_y + resid @ (self.S @ self.W.T / SIGMA**2).T
        scale = self.S.diagonal().sqrt() * self.widen
        return dist.Normal(loc, scale.expand_as(loc)).to_event(1)


def _linear_cvae(widen: float) -> tuple[CVAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """p(z|y) = N(M y, I), p(x|z,y) = N(W z + V y + b, SIGMA^2 I); W has orthogonal columns, so the
    exact posterior is diagonal. Returns the CVAE, x, labels and the exact log p(x|y)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(F, D, generator=g, dtype=torch.float64))
    W = q * torch.tensor([1.5, 0.8], dtype=torch.float64)
    V = torch.randn(F, C, generator=g, dtype=torch.float64)
    b = torch.randn(F, generator=g, dtype=torch.float64)
    M = 2 * torch.randn(D, C, generator=g, dtype=torch.float64)
    prior = ClassMeanPrior(latent_dim=D, cond_dim=C).double()
    lin = nn.Linear(D + C, F).double()
    with torch.no_grad():
        prior.means.weight.copy_(M)
        lin.weight.copy_(torch.cat([W, V], 1))
        lin.bias.copy_(b)
    model = Generative(prior, Decoder(lin, D + C, (1, F)), Gaussian(event_shape=(F,), scale=SIGMA).double())
    vae = CVAE(model, _ExactPosteriorGuide(M, W, V, b, widen), num_classes=C, cond_dim=C)
    n = 400
    y = torch.arange(n) % C
    onehot = nn.functional.one_hot(y, C).double()
    z = onehot @ M.T + torch.randn(n, D, generator=g, dtype=torch.float64)
    x = z @ W.T + onehot @ V.T + b + SIGMA * torch.randn(n, F, generator=g, dtype=torch.float64)
    cov = W @ W.T + SIGMA**2 * torch.eye(F, dtype=torch.float64)
    exact = dist.MultivariateNormal(onehot @ (W @ M + V).T + b, covariance_matrix=cov).log_prob(x)
    return vae, x, y, exact


def test_exact_posterior_guide_gives_log_p_x_given_y_for_every_particle() -> None:
    """With q(z|x,y) = p(z|x,y), every log-weight is log p(x|y): L_K is exact for any K, and so is the ELBO."""
    vae, x, y, exact = _linear_cvae(widen=1.0)
    t = point_terms(vae, x, y, num_particles=7)
    torch.testing.assert_close(t.log_likelihood, exact, rtol=0, atol=1e-5)  # float32 sigma buffer
    torch.testing.assert_close(t.elbo, exact, rtol=0, atol=1e-5)  # float32 sigma buffer


def test_iwae_bound_on_conditional_likelihood_increases_with_k_and_stays_below_exact() -> None:
    """With a mismatched guide: ELBO < L_1-ish < L_K <= log p(x|y) on average (Burda et al. 2015)."""
    vae, x, y, exact = _linear_cvae(widen=0.5)  # over-confident q
    l1 = point_terms(vae, x, y, num_particles=1).log_likelihood
    l100 = point_terms(vae, x, y, num_particles=100).log_likelihood
    gap1, gap100 = float((exact - l1).mean()), float((exact - l100).mean())
    se = float((exact - l100).std()) / math.sqrt(len(x))
    assert gap1 > gap100 > -3 * se
    assert gap1 > 0.05  # the mismatch is visible, so the check above is not vacuous


def test_class_mean_prior_is_a_table_of_means_with_unit_variance() -> None:
    p = ClassMeanPrior(latent_dim=3, cond_dim=4)
    with torch.no_grad():
        p.means.weight.copy_(torch.arange(12.0).reshape(3, 4))
    d = p(nn.functional.one_hot(torch.tensor([0, 2]), 4).float())
    torch.testing.assert_close(d.mean, torch.tensor([[0.0, 4.0, 8.0], [2.0, 6.0, 10.0]]))
    torch.testing.assert_close(d.variance, torch.ones(2, 3))


def test_conditional_prior_depends_on_the_condition_and_starts_near_unit_scale() -> None:
    p = ConditionalPrior(latent_dim=3, cond_dim=4, hidden=[8])
    d = p(torch.eye(4))
    assert d.batch_shape == (4,) and d.event_shape == (3,)
    torch.testing.assert_close(d.stddev, torch.ones(4, 3), atol=1e-3, rtol=0)
    assert not torch.allclose(d.mean[0], d.mean[1])


@pytest.mark.parametrize("kind", ["class_mean", "conditional"])
def test_conditional_priors_need_a_conditional_model(kind: str) -> None:
    spec = {**DEFAULT_SPEC, "model": {**DEFAULT_SPEC["model"], "prior": {"kind": kind}}}
    with pytest.raises(SpecError, match="needs a conditional model"):
        fit(spec, overrides=["train.epochs=0", "train.progress=false", "train.figures=false"], out="/nonexistent/x")


def test_tensor_condition_needs_its_width() -> None:
    spec = {**DEFAULT_SPEC, "model": {"kind": "cvae", "condition": "tensor"}}
    with pytest.raises(SpecError, match="cond_dim"):
        resolve(spec)


def test_cond_one_hot_and_tensor() -> None:
    vae, *_ = _linear_cvae(1.0)
    torch.testing.assert_close(
        vae.cond(torch.tensor([2, 0])), torch.tensor([[0.0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="needs its condition"):
        vae.cond(None)
    vae.num_classes = 0  # a tensor condition of width C
    torch.testing.assert_close(vae.cond(torch.ones(2, C)), torch.ones(2, C, dtype=torch.float64))


def test_digits_spec_trains_figures_and_cli_samples_a_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = fit(SPEC, overrides=["train.epochs=1", "train.progress=false", "train.eval_particles=4"], out=tmp_path / "r")
    assert math.isfinite(res.summary["test_log_likelihood"])
    figs = {p.name for p in (tmp_path / "r" / "figures").iterdir()}
    assert {"samples.png", "latent.png", "reconstructions.png"} <= figs and "manifold.png" not in figs
    assert main(["sample", str(tmp_path / "r"), "--label", "3", "--num", "5", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main(["sample", str(tmp_path / "r"), "--label", "10"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_tensor_condition_trains_from_npz_and_cli_sampling_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=g.integers(0, 2, (64, 1, 4, 4)).astype("float32"),
             y_train=g.random((64, 2, 3)).astype("float32"), x_test=g.integers(0, 2, (16, 1, 4, 4)).astype("float32"),
             y_test=g.random((16, 2, 3)).astype("float32"))  # fmt: skip
    spec = {
        "data": {"name": "npz", "path": str(tmp_path / "d.npz")},
        "model": {"kind": "cvae", "condition": "tensor", "cond_dim": 6, "latent_dim": 2,
                  "network": {"kind": "mlp", "hidden": [8]}, "prior": {"kind": "conditional", "hidden": [8]}},
        "guide": {"kind": "diagonal_normal"},
        "elbo": {"kind": "trace"},
        "train": {"epochs": 1, "progress": False, "eval_particles": 3},
    }  # fmt: skip
    res = fit(spec, out=tmp_path / "r")
    assert math.isfinite(res.summary["test_log_likelihood"])
    assert res.vae.sample(5, res.data.y_test[:5]).shape == (5, 1, 4, 4)
    assert main(["sample", str(tmp_path / "r")]) == 2
    assert "conditioned on a tensor" in capsys.readouterr().err


def test_a_prior_that_needs_the_unconditional_encoder_is_a_spec_error() -> None:
    from pyro_vae.registry import REGISTRY

    if "vamp" not in REGISTRY.names("prior"):
        pytest.skip("no vamp prior registered")
    with pytest.raises(SpecError, match="does not work in a CVAE"):
        REGISTRY.build("model", resolve({**DEFAULT_SPEC, "model": {"kind": "cvae", "prior": {"kind": "vamp"}}})["model"],
                       event_shape=(1, 8, 8), guide={"kind": "diagonal_normal"}, num_classes=10)  # fmt: skip
