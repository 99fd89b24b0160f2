"""Posterior diagnostics on a linear-Gaussian VAE whose posterior and marginal are known exactly.

p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I): p(z|x) = N(S W^T (x - b) / sigma^2, S) with
S = (I + W^T W / sigma^2)^-1 and p(x) = N(b, W W^T + sigma^2 I). The guide is set by hand: exact
(full-rank), shrunk (over-confident), shifted (biased) or diagonal.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.diagnostics import (
    DiagnoseOptions,
    _arviz,
    amortization_gap,
    calibration_tests,
    guide_log_ratios,
    log_joint,
    log_joint_traced,
    nuts_reference,
    pit_values,
    psis_summary,
    run_diagnostics,
    select_points,
    simulate,
    write_outputs,
)
from pyro_vae.errors import SpecError
from pyro_vae.guides.base import AmortizedGuide
from pyro_vae.models.likelihoods import Gaussian
from pyro_vae.models.nets import Decoder, Encoder
from pyro_vae.models.priors import StandardNormal
from pyro_vae.models.vae import VAE, Generative

D, F, SIGMA = 2, 5, 0.6


class HandGuide(AmortizedGuide):
    """q(z|x) = N(m(x) + shift * sd, (shrink^2) S) (full) or a diagonal Normal, from the exact posterior."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, shrink: float, shift: float, diagonal: str | None) -> None:
        super().__init__(Encoder(nn.Identity(), W.shape[0]), W.shape[1])
        cov = torch.linalg.inv(torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / SIGMA**2)
        self.register_buffer("A", cov @ W.T / SIGMA**2)
        self.register_buffer("b", b)
        self.register_buffer("tril", torch.linalg.cholesky(cov))
        self.register_buffer("sd", cov.diagonal().sqrt())
        self.register_buffer("mf_sd", 1.0 / torch.linalg.inv(cov).diagonal().sqrt())  # mean-field optimum
        self.shrink, self.shift, self.diagonal = shrink, shift, diagonal

    def head(self, h: torch.Tensor) -> dist.Distribution:
        mean = (h - self.b) @ self.A.T + self.shift * self.sd
        if self.diagonal == "meanfield":
            return dist.Normal(mean, self.shrink * self.mf_sd).to_event(1)
        return dist.MultivariateNormal(mean, scale_tril=self.shrink * self.tril)


def linear_vae(shrink: float = 1.0, shift: float = 0.0, diagonal: str | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(F, D, generator=g, dtype=torch.float64)
    W[:, 1] = 0.5 * W[:, 0] + W[:, 1]  # correlation -0.65 in p(z|x): diagonal and full-rank q differ
    b = 0.3 * torch.randn(F, generator=g, dtype=torch.float64)
    lin = nn.Linear(D, F).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    model = Generative(StandardNormal(latent_dim=D), Decoder(lin, D, (1, F)), Gaussian(event_shape=(F,), scale=SIGMA))
    vae = VAE(model.double(), HandGuide(W, b, shrink, shift, diagonal)).double()
    cov = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + W.T @ W / SIGMA**2)
    x = (
        torch.randn(200, D, generator=g, dtype=torch.float64) @ W.T
        + b
        + SIGMA * torch.randn(200, F, generator=g, dtype=torch.float64)
    )
    exact = {
        "cov": cov,
        "mean": (x - b) @ (cov @ W.T / SIGMA**2).T,
        "log_px": torch.distributions.MultivariateNormal(
            b, W @ W.T + SIGMA**2 * torch.eye(F, dtype=torch.float64)
        ).log_prob(x),
    }
    return vae, x, exact


def test_log_joint_matches_closed_form_and_trace():
    vae, x, _ = linear_vae()
    z = torch.randn(3, 4, D, dtype=torch.float64)
    xb = x[:4]
    direct = log_joint(vae.model, xb, None, z)
    traced = log_joint_traced(vae.model, xb, None, z)
    lin = vae.model.decoder.body
    closed = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + torch.distributions.Normal(
        lin(z), SIGMA
    ).log_prob(xb).sum(-1)
    assert direct.shape == (3, 4)
    torch.testing.assert_close(direct, closed)
    torch.testing.assert_close(traced, closed)


class TemperedGenerative(Generative):
    """Its own program: an extra ``pyro.factor`` per point, so its log p(x, z) is not the plain one."""

    def forward(self, x, cond=None):
        super().forward(x, cond)
        zero = torch.zeros(x.shape[0], D, dtype=x.dtype)
        pyro.factor("again", self.likelihood(self.decoder(zero)).log_prob(x))  # (B,): one term per point


def test_log_joint_uses_the_direct_form_only_for_the_model_s_own_program(monkeypatch):
    vae, x, _ = linear_vae()
    z = torch.randn(3, 4, D, dtype=torch.float64)
    xb = x[:4]
    calls = []
    real = Generative.log_joint
    monkeypatch.setattr(Generative, "log_joint", lambda self, *a: (calls.append(type(self)), real(self, *a))[1])
    log_joint(vae.model, xb, None, z)
    assert calls == [Generative]  # the plain program: no trace
    m = vae.model
    own = TemperedGenerative(m.prior, m.decoder, m.likelihood).double()
    got = log_joint(own, xb, None, z)
    assert calls == [Generative]  # another program: traced, whatever it adds
    extra = m.likelihood(m.decoder(torch.zeros(4, D, dtype=torch.float64))).log_prob(xb)
    torch.testing.assert_close(got, log_joint_traced(m, xb, None, z) + extra)


def test_exact_guide_log_ratios_are_log_px():
    """With q = p(z|x), log p(x,z) - log q(z|x) = log p(x) for every draw: ELBO = L_S = log p(x)."""
    vae, x, exact = linear_vae()
    lr, draws = guide_log_ratios(vae, x[:20], None, 50)
    assert lr.shape == (20, 50) and draws.shape == (50, 20, D)
    ps = psis_summary(lr)
    np.testing.assert_allclose(ps["elbo"], exact["log_px"][:20].numpy(), atol=1e-4)
    np.testing.assert_allclose(ps["iwae"], exact["log_px"][:20].numpy(), atol=1e-4)
    assert np.all(ps["gap"] < 1e-4)


@pytest.mark.parametrize(
    "shrink, expect",
    [(1.0, "good"), (1.3, "good"), (0.3, "bad")],
    ids=["exact", "wider", "overconfident"],
)
def test_khat_separates_correct_from_overconfident_guides(shrink, expect):
    vae, x, _ = linear_vae(shrink=shrink)
    torch.manual_seed(0)
    lr, _ = guide_log_ratios(vae, x[:40], None, 1000)
    k = psis_summary(lr)["khat"]
    if expect == "good":
        assert np.all(k < 0.5), k.max()
    else:
        assert np.mean(k > 0.7) >= 0.9, np.sort(k)


def test_psis_constant_ratios_give_minus_inf_not_inf():
    _, k = _arviz.psis(np.zeros((2, 100)))
    assert np.all(k == -np.inf)


def _pit(vae, x, n, seed=0):
    torch.manual_seed(seed)
    xt = x[torch.arange(n) % len(x)]
    z_star, x_sim = simulate(vae, xt, None)
    ranks, pit = pit_values(vae.guide.dist(x_sim), z_star, 99, torch.Generator().manual_seed(seed))
    assert ranks.min() >= 0 and ranks.max() <= 99
    return pit.numpy()


def test_sbc_simulates_from_the_prior():
    vae, x, _ = linear_vae()
    torch.manual_seed(0)
    z_star, x_sim = simulate(vae, x[torch.arange(2000) % len(x)], None)
    assert x_sim.shape == (2000, F)
    np.testing.assert_allclose(z_star.mean(0).numpy(), 0.0, atol=0.1)
    np.testing.assert_allclose(torch.cov(z_star.T).numpy(), np.eye(D), atol=0.1)


@pytest.mark.parametrize(
    "kwargs, uniform, symmetric",
    [({}, True, True), ({"shrink": 0.3}, False, True), ({"shift": 0.7}, False, False)],
    ids=["exact", "overconfident", "biased"],
)
def test_sbc_calibration(kwargs, uniform, symmetric):
    vae, x, _ = linear_vae(**kwargs)
    c = calibration_tests(_pit(vae, x, 1000), alpha=0.01)
    assert c["uniform"] is uniform, c["ks_pvalue"]
    assert c["symmetric"] is symmetric, c["vsbc_pvalue"]
    if kwargs.get("shrink"):  # an over-confident q misses z* far more often than 5% of the time
        assert c["mean_outside_central95"] > 0.3
        assert c["dims_outside_band"] == D
    if not kwargs:
        assert abs(c["mean_outside_central95"] - 0.05) < 0.025
        assert c["dims_outside_band"] == 0


def test_nuts_recovers_exact_posterior_within_mc_error():
    vae, x, exact = linear_vae()
    torch.manual_seed(1)
    i = 3
    init = exact["mean"][i] + 2.0 * torch.randn(4, D, dtype=torch.float64)
    for p in vae.parameters():
        p.requires_grad_(False)
    res = nuts_reference(vae.model, x[i : i + 1], None, init, warmup=200, draws=300, min_ess=300)
    assert res.passed, res.gate_failures
    z = res.draws.reshape(-1, D)
    mean, cov = exact["mean"][i].numpy(), exact["cov"].numpy()
    sd = np.sqrt(np.diag(cov))
    mcse = sd / np.sqrt(res.ess_bulk)
    assert np.all(np.abs(z.mean(0) - mean) < 4 * mcse), (z.mean(0), mean, mcse)
    # covariance entries: standard error of a sample covariance ~ sqrt((s_i^2 s_j^2 + c_ij^2) / n_eff)
    n_eff = float(np.min(res.ess_bulk))
    se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n_eff)
    assert np.all(np.abs(np.cov(z.T) - cov) < 4 * se), (np.cov(z.T), cov)


def test_nuts_gate_fails_on_too_few_draws():
    vae, x, exact = linear_vae()
    for p in vae.parameters():
        p.requires_grad_(False)
    init = exact["mean"][0] + torch.randn(2, D, dtype=torch.float64)
    res = nuts_reference(vae.model, x[:1], None, init, warmup=20, draws=10, min_ess=400)
    assert not res.passed and any("ESS" in f for f in res.gate_failures)


def _gap_opts(**kw):
    return DiagnoseOptions(gap_steps=300, gap_lr=0.05, gap_particles=4000, **kw)


def test_amortization_gap_exact_guide_is_zero():
    vae, x, exact = linear_vae()
    torch.manual_seed(0)
    g = amortization_gap(vae, x[:5], None, _gap_opts())
    assert g["local_family"] == "full_rank_normal"
    # log p(x) is the larger of two IWAE-K estimates: within their Monte Carlo error of the truth
    np.testing.assert_allclose(g["log_px"], exact["log_px"][:5].numpy(), atol=0.01)
    np.testing.assert_allclose(g["elbo_amortized"], exact["log_px"][:5].numpy(), atol=1e-3)
    assert np.all(np.abs(g["amortization_gap"]) < 0.02) and np.all(np.abs(g["approximation_gap"]) < 0.02)


def test_amortization_gap_of_shrunk_full_rank_guide_is_its_kl():
    """Local optimization recovers p(z|x), so the amortization gap is KL(N(m, c^2 S) || N(m, S))."""
    c = 0.5
    vae, x, exact = linear_vae(shrink=c)
    torch.manual_seed(0)
    g = amortization_gap(vae, x[:5], None, _gap_opts())
    kl = 0.5 * (D * c**2 - D - D * math.log(c**2))
    np.testing.assert_allclose(g["amortization_gap"], kl, atol=0.05)
    assert np.all(np.abs(g["approximation_gap"]) < 0.03)
    np.testing.assert_allclose(g["log_px"], exact["log_px"][:5].numpy(), atol=0.02)


def test_approximation_gap_of_diagonal_family_is_mean_field_kl():
    """Best diagonal q for a Gaussian with precision L: KL = (sum log L_ii - log det L) / 2."""
    vae, x, exact = linear_vae(shrink=0.7, diagonal="meanfield")
    torch.manual_seed(0)
    g = amortization_gap(vae, x[:5], None, _gap_opts())
    prec = torch.linalg.inv(exact["cov"])
    kl = 0.5 * float(prec.diagonal().log().sum() - torch.logdet(prec))
    assert g["local_family"] == "diagonal_normal" and kl > 0.2
    # the optimizer reaches the mean-field optimum, ELBO = log p(x) - KL ...
    np.testing.assert_allclose(g["elbo_local"], exact["log_px"][:5].numpy() - kl, atol=0.04)
    # ... and the gap is KL up to the (downward) bias of IWAE-K with an over-confident proposal (k-hat ~0.5-0.7)
    np.testing.assert_allclose(g["approximation_gap"], kl, atol=0.07)
    assert np.all(g["amortization_gap"] > 0.1)


def test_select_points_worst_median_random_distinct():
    k = np.array([0.1, 0.9, 0.3, np.nan, 0.2, 0.5])
    chosen = select_points(k, 4, torch.Generator().manual_seed(0))
    pos = [p for p, _ in chosen]
    assert pos[0] == 3 and chosen[0][1] == "worst k-hat"  # NaN counts as worst
    assert len(set(pos)) == 4
    assert chosen[1] == (int(np.argsort(np.where(np.isnan(k), np.inf, k))[3]), "median k-hat")
    assert len(select_points(k, 10, torch.Generator().manual_seed(0))) == len(k)


def test_options_reject_bad_values():
    with pytest.raises(SpecError, match="--samples"):
        DiagnoseOptions(samples=5).check()
    with pytest.raises(SpecError, match="--nuts"):
        DiagnoseOptions(nuts=-1).check()


def test_end_to_end_outputs(tmp_path):
    vae, x, _ = linear_vae(shrink=0.4)
    opts = DiagnoseOptions(
        points=60,
        samples=200,
        nuts=2,
        chains=2,
        warmup=40,
        draws=40,
        min_ess=20,
        gap_points=4,
        gap_steps=30,
        gap_particles=500,
        sbc=200,
    )
    d = run_diagnostics(vae, x, None, opts)
    paths = write_outputs(d, tmp_path, x, (F,), vae)
    report = json.loads(paths["json"].read_text())  # strict JSON: no NaN / Infinity
    assert report["psis"]["points"] == 60 and len(report["psis"]["per_point"]["khat"]) == 60
    assert report["psis"]["share_above_0.7"] > 0.5
    assert len(report["nuts"]) == 2 and report["amortization_gap"]["points"] == 4
    assert report["calibration"]["uniform"] is False
    assert "reliable for" in report["verdict"]
    idata = _arviz.load(paths["netcdf"])
    groups = set(idata.groups())
    assert {"posterior", "sample_stats", "nuts_posterior", "nuts_sample_stats"} <= groups
    assert idata.sample_stats["log_ratio"].shape == (1, 200, 60)
    assert idata.posterior["z"].shape == (1, 200, 2, D)
    assert idata.nuts_posterior["z"].shape == (2, 40, 2, D)
    # the stored guide draws are the ones behind the stored log ratios
    pos = [p["position"] for p in report["nuts"]]
    z = torch.as_tensor(idata.posterior["z"].values[0, :, 0, :], dtype=torch.float64)
    xi = x[d.index[pos[0]] : d.index[pos[0]] + 1]
    with torch.no_grad():
        lr = log_joint(vae.model, xi, None, z[:, None, :])[:, 0] - vae.guide.dist(xi).log_prob(z[:, None, :])[:, 0]
    np.testing.assert_allclose(lr.numpy(), idata.sample_stats["log_ratio"].values[0, :, pos[0]], atol=1e-4)
    for key in ("khat_png", "gaps_png", "sbc_png"):
        assert paths[key].stat().st_size > 1000


def test_cli_diagnose_on_a_tiny_digits_run(tmp_path, tiny, capsys):
    from pyro_vae.cli import main
    from pyro_vae.training import fit

    run = tmp_path / "run"
    fit(None, overrides=[*tiny, "train.figures=false"], out=run)
    small = ["--points", "30", "--samples", "100", "--nuts", "1", "--chains", "2", "--warmup", "30", "--draws", "30"]
    argv = ["diagnose", str(run), *small, "--gap-points", "3", "--sbc", "100", "--out", str(tmp_path / "d")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "q(z|x) is reliable for" in out and "Calibration (SBC" in out
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert report["psis"]["points"] == 30 and report["options"]["samples"] == 100
    assert (tmp_path / "d" / "posterior.nc").is_file() and (tmp_path / "d" / "figures" / "worst_points.png").is_file()
    # bad values are one line and exit 2
    assert main(["diagnose", str(run), "--samples", "5"]) == 2
    assert "--samples 5" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("guide", ["diagonal_normal", "full_rank", "low_rank", "flow", "delta"])
def test_every_guide_family_through_the_generic_interface(guide):
    """Untrained tiny models: diagnostics use only ``guide.dist``; point-mass guides are refused."""
    from pyro_vae.errors import RunError
    from pyro_vae.models.vae import build_model
    from pyro_vae.spec import DEFAULT_SPEC, resolve

    spec = {**DEFAULT_SPEC, "guide": {"kind": guide}}
    spec["model"] = {**DEFAULT_SPEC["model"], "network": {"kind": "mlp", "hidden": [8]}}
    vae = build_model(resolve(spec), (16,))
    x = torch.rand(12, 16)
    opts = DiagnoseOptions(
        points=12,
        samples=50,
        nuts=1,
        chains=2,
        warmup=10,
        draws=10,
        gap_points=2,
        gap_steps=5,
        gap_particles=50,
        sbc=30,
    )
    if guide == "delta":
        with pytest.raises(RunError, match="point mass"):
            run_diagnostics(vae, x, None, opts)
        return
    d = run_diagnostics(vae, x, None, opts)
    assert d.psis["khat"].shape == (12,) and d.pit is not None and d.pit.shape == (30, 2)
    expected = {"diagonal_normal": "diagonal_normal", "full_rank": "full_rank_normal", "low_rank": "full_rank_normal"}
    assert d.gap is not None and d.gap["local_family"] == expected.get(guide, "diagonal_normal")
    assert (d.gap["local_family_note"] == "same family") is (guide in ("diagonal_normal", "full_rank"))
