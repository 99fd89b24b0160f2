"""beta and KL schedules (pyro_vae/training/schedules.py, elbo.beta, train.kl_schedule).

What beta means, checked on fixed random draws: for ``trace`` the loss is exactly
-(E[log p(x|z)] - beta * KL_mc); for ``meanfield`` -(E[log p(x|z)] - beta * KL_analytic); for the
importance-weighted ``iwae`` beta weights log p(z) - log q(z|x) inside each particle's log-weight,
log mean_k exp(log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))), and never scales the log-sum-exp.
beta = 1 is the plain ELBO / L_K.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae import SpecError, fit, resolve
from pyro_vae.data import load
from pyro_vae.estimators import log_terms
from pyro_vae.models.vae import build_model
from pyro_vae.registry import REGISTRY
from pyro_vae.rundir import read_metrics
from pyro_vae.spec import DEFAULT_SPEC, apply_overrides
from pyro_vae.training.schedules import burda_stage, kl_factor, lr_factor

SPEC = Path(__file__).resolve().parents[2] / "experiments" / "structured" / "beta_vae_digits.yaml"
BETAS = [0.5, 1.0, 4.0]


@pytest.fixture(scope="module")
def setup() -> tuple[object, torch.Tensor]:
    cfg = resolve(apply_overrides(DEFAULT_SPEC, ["model.latent_dim=3", "model.network.hidden=[16]"]))
    ds = load(cfg["data"])
    torch.manual_seed(0)
    return build_model(cfg, ds.event_shape), ds.x_test[:20]


def _loss(vae: object, x: torch.Tensor, elbo: dict, beta: float, seed: int = 7) -> torch.Tensor:
    vae.set_kl_weight(beta)  # type: ignore[attr-defined]
    pyro.set_rng_seed(seed)
    try:
        return REGISTRY.build("elbo", elbo)(vae.model, vae.guide)(x, None)  # type: ignore[attr-defined]
    finally:
        vae.set_kl_weight(1.0)  # type: ignore[attr-defined]


def _terms(vae: object, x: torch.Tensor, k: int, seed: int = 7):  # unscaled log p(x|z), log p(z) - log q
    pyro.set_rng_seed(seed)
    return log_terms(vae.model, vae.guide, (x, None), {}, k, scaled=False)  # type: ignore[attr-defined]


@pytest.mark.parametrize("beta", BETAS)
def test_trace_loss_is_recon_minus_beta_kl_on_fixed_draws(setup, beta: float) -> None:
    vae, x = setup
    loss = _loss(vae, x, {"kind": "trace", "num_particles": 1}, beta)
    t = _terms(vae, x, 1)
    torch.testing.assert_close(loss, -(t.obs.sum() + beta * t.latent.sum()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beta", BETAS)
def test_meanfield_loss_is_recon_minus_beta_analytic_kl(setup, beta: float) -> None:
    vae, x = setup
    loss = _loss(vae, x, {"kind": "meanfield", "num_particles": 1}, beta)
    t = _terms(vae, x, 1)
    kl = kl_divergence(vae.guide.dist(x), vae.model.prior()).sum()
    torch.testing.assert_close(loss, -(t.obs.sum() - beta * kl), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beta", BETAS)
def test_iwae_beta_weights_each_particles_latent_term_not_the_logsumexp(setup, beta: float) -> None:
    vae, x = setup
    k = 6
    loss = _loss(vae, x, {"kind": "iwae", "num_particles": k}, beta)
    t = _terms(vae, x, k)
    inside = torch.logsumexp(t.obs + beta * t.latent, 0) - math.log(k)
    torch.testing.assert_close(loss, -inside.sum(), rtol=1e-5, atol=1e-4)
    if beta != 1.0:  # the other reading (scaling the whole bound) is a different number
        outside = beta * (torch.logsumexp(t.obs + t.latent, 0) - math.log(k))
        assert not torch.allclose(loss, -outside.sum(), rtol=1e-3)


def test_beta_one_recovers_the_elbo_and_sets_no_scale(setup) -> None:
    vae, x = setup
    t = _terms(vae, x, 1)
    torch.testing.assert_close(_loss(vae, x, {"kind": "trace"}, 1.0), -t.log_weight.sum(), rtol=1e-5, atol=1e-4)
    tr = pyro.poutine.trace(vae.guide).get_trace(x)
    assert tr.nodes["z"]["scale"] == 1.0


@pytest.mark.parametrize(
    ("schedule", "step", "factor"),
    [
        ("constant", 0, 1.0),
        ("constant", 10**6, 1.0),
        ("linear", 0, 0.01),
        ("linear", 49, 0.5),
        ("linear", 99, 1.0),
        ("linear", 5000, 1.0),
        ("cyclical", 0, 0.02),
        ("cyclical", 24, 0.5),
        ("cyclical", 49, 1.0),
        ("cyclical", 99, 1.0),
        ("cyclical", 100, 0.02),  # a new cycle starts over
        ("cyclical", 324, 0.5),
    ],
)
def test_kl_factor(schedule: str, step: int, factor: float) -> None:
    assert kl_factor(schedule, step, 100, ramp=0.5) == pytest.approx(factor)


def test_cyclical_factor_is_periodic_positive_and_at_most_one() -> None:
    f = [kl_factor("cyclical", s, 40, 0.25) for s in range(200)]
    assert f[:40] == f[40:80] == f[160:200]
    assert min(f) > 0 and max(f) == 1.0 and f.count(1.0) == 5 * 31  # 10 ramp steps (the 10th reaches 1), then 30 at 1


def test_training_loop_applies_the_schedule_each_step(tmp_path: Path) -> None:
    res = fit(
        None,
        overrides=["train.epochs=2", "train.batch_size=64", "data.limit=256", "model.network.hidden=[16]",
                   "train.progress=false", "train.figures=false", "train.eval_particles=2", "elbo.beta=2.0",
                   "train.kl_schedule=linear", "train.kl_steps=1000"],
        out=tmp_path / "r",
    )  # fmt: skip
    steps = 2 * math.ceil(len(res.data.x_train) / 64)
    want = 2.0 * kl_factor("linear", steps - 1, 1000)
    assert res.vae.model.kl_weight == pytest.approx(want) and res.vae.guide.kl_weight == pytest.approx(want)
    assert want < 0.1  # still warming up: not the final beta


@pytest.mark.parametrize(
    ("override", "match"),
    [("train.kl_schedule=exponential", "valid choices"), ("elbo.beta=0", "out of range"), ("train.kl_ramp=2", "range")],
)
def test_bad_schedule_settings_are_spec_errors(override: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        resolve(apply_overrides(DEFAULT_SPEC, [override]))


def test_beta_vae_digits_spec_trains_and_draws_a_traversal(tmp_path: Path) -> None:
    res = fit(SPEC, overrides=["train.epochs=1", "train.progress=false", "train.eval_particles=2"], out=tmp_path / "r")
    assert math.isfinite(res.summary["test_elbo"])
    assert (tmp_path / "r" / "figures" / "traversal.png").is_file()


@pytest.mark.parametrize(
    ("epoch", "stage"),
    [(1, 0), (2, 1), (4, 1), (5, 2), (13, 2), (14, 3), (40, 3), (41, 4), (121, 4), (122, 5), (364, 5), (365, 6),
     (1093, 6), (1094, 7), (3280, 7)],
)  # fmt: skip
def test_burda_stage_i_lasts_three_to_the_i_epochs(epoch: int, stage: int) -> None:
    assert burda_stage(epoch) == stage
    assert lr_factor("burda", epoch) == pytest.approx(10 ** (-stage / 7))
    assert lr_factor("constant", epoch) == 1.0


def test_burda_stage_lengths_sum_to_the_papers_epochs() -> None:
    counts = [0] * 8
    for e in range(1, 3281):
        counts[burda_stage(e)] += 1
    assert counts == [3**i for i in range(8)] and sum(counts[:6]) == 364


def test_lr_schedule_and_eps_reach_the_optimizer_and_survive_resume(tmp_path: Path) -> None:
    sets = ["train.epochs=5", "train.batch_size=64", "data.limit=128", "model.network.hidden=[8]",
            "train.progress=false", "train.figures=false", "train.eval_particles=1", "train.lr=0.01",
            "train.lr_schedule=burda", "train.eps=0.0001", "train.curve_every=2", "train.curve_points=16",
            "train.curve_particles=3"]  # fmt: skip
    full = fit(None, overrides=sets, out=tmp_path / "full")
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * lr_factor("burda", e) for e in range(1, 6)])
    # the curve: every 2nd epoch and the last, L_3 on the first 16 test points
    assert [r["epoch"] for r in rows if "curve_ll" in r] == [2, 4, 5]
    assert all(r["curve_particles"] == 3 and r["curve_points"] == 16 for r in rows if "curve_ll" in r)
    # stopping after 3 epochs and resuming gives the same learning rates, curve and parameters
    fit(None, overrides=[*sets[1:], "train.epochs=3"], out=tmp_path / "part")
    resumed = fit(None, overrides=sets, out=tmp_path / "part", resume=True)
    again = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert [r["lr"] for r in again] == [r["lr"] for r in rows]
    assert [r.get("curve_ll") for r in again[3:]] == [r.get("curve_ll") for r in rows[3:]]
    for a, b in zip(full.vae.parameters(), resumed.vae.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adam_eps_is_the_specs(tmp_path: Path) -> None:
    from pyro_vae.spec import TrainConfig
    from pyro_vae.training import make_optimizer

    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(eps=1e-4))
    assert opt.param_groups[0]["eps"] == 1e-4
