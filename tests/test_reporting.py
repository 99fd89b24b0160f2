"""Every reported number is what its name says: active units without Monte Carlo noise, and one rule
(``pyro_vae.evaluate.measure_of``) naming bounds in the CLI, eval.json, summary.json, figures and
compare tables: log p(x) only for a normalized likelihood of the data scored and a guide with a density.
"""

import json
import math

import pytest
import torch

from pyro_vae import spec as spec_mod
from pyro_vae.cli import main
from pyro_vae.compare import markdown
from pyro_vae.evaluation import (
    MEAN_DRAWS,
    EvalResult,
    Measure,
    active_units,
    measure_of,
    point_terms,
    summarize,
    unit_variances,
)
from pyro_vae.models.vae import build_model

TINY = ["--set", "train.epochs=1", "--set", "data.limit=256", "--set", "model.network.hidden=[32]",
        "--set", "train.eval_particles=4", "--set", "train.progress=false"]  # fmt: skip


def _model(*overrides: str, event_shape=(8,)):
    cfg = spec_mod.from_args(None, ["model.latent_dim=4", "model.network.hidden=[16]", *overrides])
    return build_model(cfg, event_shape)


# --------------------------------------------------------------------------- active units


def _flow_with_identity_transforms(scale_bias: float = 2.0):
    """A flow guide whose transforms are the identity (zero weights) and whose base scale is
    softplus(scale_bias) for every x: q(z|x) = N(loc(h(x)), sigma^2 I), mean known in closed form."""
    vae = _model("guide.kind=flow", "model.likelihood.kind=gaussian")
    with torch.no_grad():
        for f in vae.guide.flows:
            for p in f.parameters():
                p.zero_()
        vae.guide.raw_scale.weight.zero_()
        vae.guide.raw_scale.bias.fill_(scale_bias)
    return vae


def test_zero_weight_flow_encoder_has_no_active_units() -> None:
    """q(z|x) identical for every x: Var_x(E[z|x]) = 0, so 0 of 4 units are active."""
    torch.manual_seed(0)
    vae = _model("guide.kind=flow", "model.likelihood.kind=gaussian")
    with torch.no_grad():
        for p in vae.guide.encoder.parameters():
            p.zero_()
        vae.guide.raw_scale.bias.fill_(2.0)  # sigma ~ 2.1: Var_q / S is well above the 0.01 threshold at S = 64
    x = torch.randn(300, 8)
    t = point_terms(vae, x, None, 1)
    assert summarize(t, "test", 1).active_units == 0
    assert float(unit_variances(t.posterior_mean, t.posterior_mean_noise).abs().max()) < 0.005
    # the Monte Carlo mean alone (no noise removed) counts every unit: what the test guards against
    assert active_units(t.posterior_mean) == 4


def test_varying_posterior_mean_is_counted_and_its_variance_recovered() -> None:
    torch.manual_seed(1)
    vae = _flow_with_identity_transforms()
    x = torch.randn(600, 8)
    with torch.no_grad():
        h = vae.guide.encoder(x)
        vae.guide.loc.weight[2:].zero_()  # units 2, 3: a constant mean (inactive)
        raw = h @ vae.guide.loc.weight[:2].T
        vae.guide.loc.weight[:2] *= (0.05 / raw.var(0)).sqrt()[:, None]  # units 0, 1: Var_x(E[z|x]) = 0.05
        truth = vae.guide.loc(h).var(0).double()
    t = point_terms(vae, x, None, 1)
    sigma2 = float(torch.nn.functional.softplus(torch.tensor(2.0)) + vae.guide.min_scale) ** 2
    # the noise of each Monte Carlo mean is Var_q / S, estimated from the draws
    assert float(t.posterior_mean_noise.mean()) == pytest.approx(sigma2 / MEAN_DRAWS, rel=0.05)
    est = unit_variances(t.posterior_mean, t.posterior_mean_noise)
    assert torch.allclose(est, truth, atol=0.01), (est, truth)  # about 4 standard errors
    assert summarize(t, "test", 1).active_units == 2
    assert active_units(t.posterior_mean) == 4  # uncorrected: the two constant units look active


def test_closed_form_means_have_no_noise_and_the_threshold_is_burdas() -> None:
    vae = _model("model.likelihood.kind=gaussian")
    t = point_terms(vae, torch.randn(50, 8), None, 3)
    assert torch.equal(t.posterior_mean_noise, torch.zeros_like(t.posterior_mean))
    means = torch.cat([torch.randn(400, 1), torch.full((400, 1), 0.3), 0.05 * torch.randn(400, 1)], 1)
    assert active_units(means) == 1
    noise = torch.full_like(means, 0.98)  # removing Var 0.98 of Monte Carlo noise leaves unit 0 at ~0.02
    assert active_units(means, noise=noise) == int(float(means[:, 0].var()) - 0.98 > 0.01)


# --------------------------------------------------------------------------- the rule


def test_measure_rule_for_each_case() -> None:
    grey, binary = torch.rand(20, 8), torch.bernoulli(torch.full((20, 8), 0.4))
    bern = _model()
    assert measure_of(bern, grey).kind == "cross_entropy"
    assert measure_of(bern, binary).kind == "log_likelihood"
    assert measure_of(_model("model.likelihood.kind=gaussian"), grey).kind == "log_likelihood"
    assert measure_of(_model("model.likelihood.kind=continuous_bernoulli"), grey).kind == "log_likelihood"
    assert measure_of(_model("guide.kind=delta"), binary).kind == "point_score"
    assert measure_of(_model("guide.kind=delta"), grey).kind == "point_cross_entropy"
    for kind in ("log_likelihood", "cross_entropy", "point_score", "point_cross_entropy"):
        assert Measure.from_kind(kind).kind == kind


def test_progress_names_of_each_measure() -> None:
    ll, ce, pm = Measure(), Measure(normalized=False), Measure(point_mass=True)
    assert [ll.display_key(k) for k in ("test_elbo", "test_reconstruction", "test_kl")] == [
        "test_elbo", "test_reconstruction", "test_kl"]  # fmt: skip
    assert [ce.display_key(k) for k in ("test_elbo", "valid_elbo", "test_reconstruction")] == [
        "test_ce_bound", "valid_ce_bound", "test_reconstruction_ce"]  # fmt: skip
    assert [pm.display_key(k) for k in ("test_elbo", "test_kl")] == ["test_point_score", "test_prior_penalty"]
    assert ll.display_key("train_objective") == ce.display_key("train_objective") == "train_objective"


def test_labels_of_each_measure() -> None:
    ll, ce, pm = Measure(), Measure(normalized=False), Measure(point_mass=True)
    assert ll.label("elbo") == "ELBO" and ll.label("log_likelihood", 100) == "log p(x) >= L_100"
    assert ll.label("kl") == "KL(q(z|x) || p(z))" and ll.note() == ""
    for q in ("elbo", "log_likelihood", "reconstruction"):
        name = ce.label(q, 100)
        assert name is not None and "cross-entropy" in name and "ELBO" not in name and "log p(x)" not in name
    assert ce.label("log_likelihood", 100) == "Bernoulli cross-entropy bound L_100"
    assert "not binary" in ce.note()
    assert pm.label("log_likelihood", 100) is None  # no bound for a point mass
    assert pm.label("kl") == "prior penalty -log p(f(x))"
    assert pm.label("elbo").startswith("point-mass score") and "+inf" in pm.note()


def test_point_mass_evaluation_prints_no_bound_and_no_kl() -> None:
    vae = _model("guide.kind=delta")
    x = torch.bernoulli(torch.full((30, 8), 0.4))
    t = point_terms(vae, x, None, 10)
    with torch.no_grad():  # log w = log p(x | f(x)) + log p(f(x)) exactly: Delta has log q = 0
        z = vae.guide.dist(x).mean
        score = vae.model.likelihood(vae.model.decoder(z)).log_prob(x) + vae.model.prior_dist(None).log_prob(z)
    torch.testing.assert_close(t.elbo, score)
    torch.testing.assert_close(t.log_likelihood, score)  # every K: the same score, no bound
    res = summarize(t, "test", 10)
    rows, note = res.table().split("\nnote: ")
    assert "log p(x) >=" not in rows and "KL(" not in rows and "ELBO" not in rows
    assert "point-mass score" in rows and "prior penalty -log p(f(x))" in rows and "point mass" in note
    d = res.to_dict()
    assert d["measure"] == "point_score"
    assert d["elbo"] is None and d["log_likelihood"] is None and d["kl"] is None
    assert d["point_score"] == pytest.approx(float(score.double().mean()), abs=1e-5)
    assert d["prior_penalty"] == pytest.approx(res.kl)
    assert set(d["labels"]) == {"point_score", "prior_penalty", "reconstruction"}


def test_eval_result_round_trip_labels_follow_the_measure() -> None:
    base = {"split": "test", "n": 10, "num_particles": 50, "elbo": -30.0, "log_likelihood": -29.0,
            "log_likelihood_stderr": 0.1, "kl": 2.0, "reconstruction": -28.0, "active_units": 2}  # fmt: skip
    ll = EvalResult(**base).to_dict()
    assert ll["labels"]["log_likelihood"] == "log p(x) >= L_50" and ll["elbo"] == -30.0
    ce = EvalResult(**base, measure="cross_entropy")
    assert ce.to_dict()["labels"]["elbo"].startswith("Bernoulli cross-entropy bound")
    rows, note = ce.table().split("\nnote: ")
    assert "log p(x)" not in rows and "ELBO" not in rows and note.startswith("the data are not binary")


def test_compare_table_names_the_bound_by_the_measure() -> None:
    row = {"estimator": "elbo", "seeds": [0], "epochs": 1, "test_elbo": -30.0, "log_likelihood": -29.0,
           "log_likelihood_se_seeds": math.nan, "log_likelihood_se_points": 0.1, "kl": 2.0, "active_units": 2,
           "seconds_per_epoch": 1.0, "ll_vs_first": 0.0, "ll_vs_first_se": 0.0}  # fmt: skip
    settings = {"name": "x", "data": "digits", "epochs": 1, "seeds": [0], "eval_particles": 10, "eval_points": 0}
    md_ce = markdown({"estimators": [{**row, "measure": "cross_entropy"}], "curves": {}}, settings)
    assert "Bernoulli cross-entropy bound L_10" in md_ce and "log p(x) >=" not in md_ce and "ELBO" not in md_ce
    md_ll = markdown({"estimators": [{**row, "measure": "log_likelihood"}], "curves": {}}, settings)
    assert "| test ELBO | log p(x) >= L_10 |" in md_ll


# --------------------------------------------------------------------------- whole runs


def _numbers(out: str) -> str:
    """The printed lines that name numbers (the note explaining them is left out)."""
    return "\n".join(line for line in out.splitlines() if not line.startswith("note:"))


def _legend_and_titles(monkeypatch):
    """Capture the loss figure's legend entries and axis titles as plots.loss_curves draws them."""
    from pyro_vae import plots

    seen: dict[str, list[str]] = {"legend": [], "titles": []}
    close = plots.plt.close

    def spy(fig=None):
        if fig is not None and not seen["legend"]:
            seen["legend"] = fig.axes[0].get_legend_handles_labels()[1]
            seen["titles"] = [ax.get_title() for ax in fig.axes]
        close(fig)

    monkeypatch.setattr(plots.plt, "close", spy)
    return seen


def test_default_job_is_labelled_a_cross_entropy_everywhere(tmp_path, capsys, monkeypatch) -> None:
    """The default job (greyscale digits, Bernoulli, binarize: none): no 'log p(x)' or 'ELBO' anywhere."""
    seen = _legend_and_titles(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Bernoulli cross-entropy bound L_4" in out and "note: the data are not binary" in out
    assert "log p(x) >=" not in out and "ELBO" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["measure"] == "cross_entropy"
    assert summary["labels"]["test_log_likelihood"] == "Bernoulli cross-entropy bound L_4"
    assert "final_train_loss" not in summary and math.isfinite(summary["final_train_objective"])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_objective"] == record["train_loss"]  # train_loss: the old name, same number
    assert summary["final_train_objective"] == record["train_objective"]
    legend = " ".join(seen["legend"] + seen["titles"])
    assert "training objective" in legend and "Bernoulli cross-entropy bound" in legend
    assert "ELBO" not in legend and "train loss" not in legend
    assert main(["evaluate", str(run), "--particles", "10"]) == 0
    out = capsys.readouterr().out
    assert "Bernoulli cross-entropy bound L_10" in out and "log p(x) >=" not in out and "ELBO" not in out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["measure"] == "cross_entropy" and ev["labels"]["log_likelihood"] == "Bernoulli cross-entropy bound L_10"


@pytest.mark.slow
def test_binarized_job_reports_log_px_and_delta_job_a_point_score(tmp_path, capsys, monkeypatch) -> None:
    seen = _legend_and_titles(monkeypatch)
    run = tmp_path / "bin"
    assert main(["train", *TINY, "--set", "data.binarize=static", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "log p(x) >= L_4" in out and "note:" not in out
    assert json.loads((run / "summary.json").read_text())["measure"] == "log_likelihood"
    assert any("ELBO" in s for s in seen["legend"]) and "KL(q(z|x) || p(z))" in " ".join(seen["titles"])

    run = tmp_path / "delta"
    flags = ["--set", "data.binarize=static", "--set", "guide.kind=delta", "--set", "train.figures=false"]
    assert main(["train", *TINY, *flags, "--out", str(run)]) == 0
    out = _numbers(capsys.readouterr().out)
    assert "point-mass score" in out and "log p(x) >=" not in out and "ELBO" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["measure"] == "point_score" and summary["test_kl"] is None and summary["test_log_likelihood"] is None
    assert summary["test_prior_penalty"] is not None
    assert main(["evaluate", str(run), "--particles", "10"]) == 0
    out = _numbers(capsys.readouterr().out)
    assert "point-mass score" in out and "prior penalty" in out
    assert "log p(x) >=" not in out and "KL(" not in out and "ELBO" not in out


def test_train_elbo_is_the_beta_1_elbo_of_the_first_training_points(tmp_path, tiny) -> None:
    """metrics.jsonl's train_elbo: one draw per point at beta = 1 on the first training rows, with
    its own seeded draws (so recomputing it after training gives the same number exactly)."""
    from pyro_vae import fit
    from pyro_vae.training.loop import TRAIN_ELBO_ROWS

    res = fit(overrides=tiny + ["train.figures=false", "elbo.beta=4"], out=tmp_path / "run")  # beta: not in it
    x = res.data.x_train[:TRAIN_ELBO_ROWS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = point_terms(res.vae, x, res.data.y_train, 1, means=False)
    assert res.history[-1]["train_elbo"] == float(ref.elbo.mean())
