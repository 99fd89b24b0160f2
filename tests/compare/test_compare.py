"""`pyro-vae compare`: equal footing (same init, data order, budget, evaluation), files, aggregation."""

import json
import math

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.compare import CompareOptions, aggregate, compare, plan, run_job, snr_estimators
from pyro_vae.errors import SpecError
from pyro_vae.training import fit

TINY = [
    "train.epochs=1",
    "train.batch_size=64",
    "train.progress=false",
    "train.figures=false",
    "train.eval_particles=2",
    "data.limit=192",
    "model.latent_dim=2",
    "model.network.hidden=[16]",
]
OPTS = CompareOptions(
    eval_particles=20,
    eval_points=40,
    curve_particles=5,
    curve_points=20,
    snr_particles=(1, 3),
    snr_draws=3,
    snr_points=8,
)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    return compare(None, ["trace", "dreg:num_particles=3"], seeds=(0, 1), out=out, overrides=TINY, options=OPTS)


def test_compare_writes_json_markdown_figures_and_run_directories(done):
    out = done.out
    doc = json.loads((out / "compare.json").read_text())
    assert [r["estimator"] for r in doc["estimators"]] == ["trace", "dreg:num_particles=3"]
    assert len(doc["runs"]) == 4 and {r["seed"] for r in doc["runs"]} == {0, 1}
    for row in doc["estimators"]:
        assert row["seeds"] == [0, 1] and row["eval_particles"] == 20 and row["eval_points"] == 40
        assert math.isfinite(row["log_likelihood"]) and row["log_likelihood_se_seeds"] >= 0
        assert row["log_likelihood"] >= row["test_elbo"] - 1.0  # L_20 vs a 20-draw ELBO average: above it
    assert {(g["estimator"], g["num_particles"], g["group"]) for g in doc["gradients"]} == {
        (e, k, g) for e in ("trace", "dreg") for k in (1, 3) for g in ("encoder", "decoder")
    }
    md = (out / "compare.md").read_text()
    assert "| trace | 2 | 1 |" in md and "| dreg:num_particles=3 | 2 | 1 |" in md and "L_20" in md
    assert (out / "figures" / "curves.png").stat().st_size > 1000
    assert (out / "figures" / "gradient_snr.png").stat().st_size > 1000
    dreg = doc["estimators"][1]
    assert len(doc["runs"][0]["test"]["point_log_likelihoods"]) == 40 and math.isfinite(dreg["ll_vs_first"])
    assert "L_20 minus first row" in md
    for job in done.jobs:
        assert job.run_dir and (done.out / "runs").exists()
        assert (
            json.loads((done.out / "runs" / job.run_dir.split("/runs/")[-1] / "summary.json").read_text())["epochs"]
            == 1
        )
    assert all(len(r["curve"]) == 1 and "test_log_likelihood" in r["curve"][0] for r in done.records)


def test_same_seed_means_same_initialization_and_data_order(tmp_path):
    jobs = plan(None, ["trace", "iwae:num_particles=4", "score_function"], seeds=(3,), out=tmp_path, overrides=TINY)
    states = [fit(j.config, out=j.run_dir, overrides=["train.epochs=0"]).vae.state_dict() for j in jobs]
    for s in states[1:]:
        assert all(torch.equal(s[k], states[0][k]) for k in s)
    assert {j.config["seed"] for j in jobs} == {3}
    # only elbo (and the run name) differ between the jobs' specs
    strip = lambda c: {k: v for k, v in c.items() if k not in ("elbo", "name")}
    assert all(strip(j.config) == strip(jobs[0].config) for j in jobs)


def test_plan_keeps_the_spec_beta_and_validates_before_work(tmp_path):
    jobs = plan(None, ["iwae", "dreg:beta=0.5"], out=tmp_path, overrides=[*TINY, "elbo.beta=0.2"])
    assert [j.config["elbo"]["beta"] for j in jobs] == [0.2, 0.5]
    assert (
        plan(None, ["iwae"], out=tmp_path, options=CompareOptions(train_particles=7))[0].config["elbo"]["num_particles"]
        == 7
    )
    with pytest.raises(SpecError, match="mixx"):
        plan(None, ["trace", "ciwae:mixx=2"], out=tmp_path)
    with pytest.raises(SpecError, match="listed twice"):
        plan(None, ["trace", "trace"], out=tmp_path)
    assert snr_estimators(
        plan(None, ["iwae:num_particles=1", "iwae:num_particles=5", "ciwae:mix=0.5"], out=tmp_path)
    ) == [
        "iwae",
        "ciwae:mix=0.5",
    ]


def test_wall_clock_budget_stops_at_an_epoch_end(tmp_path):
    job = plan(None, ["trace"], out=tmp_path, overrides=[*TINY, "train.epochs=5"])[0]
    rec = run_job(job, CompareOptions(eval_particles=2, eval_points=10, curve_particles=0, budget_seconds=1e-9))
    assert rec["stopped_by_budget"] and rec["epochs"] == 1 and rec["curve"][0].keys() == {"epoch", "test_elbo"}


def _rec(label, seed, ll, elbo=-10.0):
    test = {"elbo": elbo, "log_likelihood": ll, "log_likelihood_stderr": 0.5, "kl": 1.0, "reconstruction": -9.0,
            "active_units": 2, "num_particles": 10, "n": 5}  # fmt: skip
    return {"label": label, "seed": seed, "epochs": 2, "seconds_per_epoch": 1.0, "test": test,
            "curve": [{"epoch": 1, "test_elbo": elbo - 1}, {"epoch": 2, "test_elbo": elbo}]}  # fmt: skip


def test_aggregate_means_and_standard_errors_across_seeds():
    summary = aggregate([_rec("a", 0, -9.0), _rec("b", 0, -8.0), _rec("a", 1, -7.0), _rec("a", 2, -8.0)])
    a, b = summary["estimators"]
    assert a["estimator"] == "a" and a["seeds"] == [0, 1, 2]
    assert a["log_likelihood"] == pytest.approx(-8.0)
    assert a["log_likelihood_se_seeds"] == pytest.approx(1.0 / math.sqrt(3))  # sample sd 1, three seeds
    assert math.isnan(b["log_likelihood_se_seeds"]) and b["log_likelihood_se_points"] == 0.5
    assert summary["curves"]["a"] == [{"epoch": 1, "test_elbo": -11.0}, {"epoch": 2, "test_elbo": -10.0}]


def test_paired_differences_use_the_same_test_points_and_seeds():
    recs = [_rec("a", 0, -9.0), _rec("b", 0, -8.0), _rec("a", 1, -9.0), _rec("b", 1, -8.0)]
    pts = {("a", 0): [-10.0, -8.0, -9.0], ("b", 0): [-9.0, -7.5, -7.5], ("a", 1): [-10.0, -8.0, -9.0],
           ("b", 1): [-9.0, -6.5, -7.5]}  # fmt: skip
    for r in recs:
        r["test"]["point_log_likelihoods"] = pts[r["label"], r["seed"]]
    a, b = aggregate(recs)["estimators"]
    assert a["ll_vs_first"] == 0.0 and a["ll_vs_first_se"] == 0.0
    per_point = [1.0, 1.0, 1.5]  # b - a per point, averaged over the two seeds
    assert b["ll_vs_first"] == pytest.approx(sum(per_point) / 3)
    assert b["ll_vs_first_se"] == pytest.approx(math.sqrt(((1 - 7 / 6) ** 2 * 2 + (1.5 - 7 / 6) ** 2) / 2 / 3))
    assert math.isnan(aggregate([_rec("a", 0, -9.0)])["estimators"][0]["ll_vs_first"])  # no per-point values


def test_cli_compare_and_gradients(tmp_path, capsys, done):
    sets = [a for s in TINY for a in ("--set", s)]
    argv = ["compare", "--estimators", "iwae:num_particles=2,stl", "--particles", "5", "--eval-points", "10"]
    argv += ["--snr-particles", "1,2", "--snr-draws", "2", "--snr-points", "4", "--out", str(tmp_path / "c"), *sets]
    assert main(argv) == 0
    assert "| stl | 1 | 1 |" in capsys.readouterr().out
    assert (tmp_path / "c" / "compare.json").is_file()
    run_dir = done.jobs[0].run_dir
    assert (
        main(["gradients", run_dir, "--estimators", "iwae,dreg", "--particles", "1,2", "--draws", "3", "--points", "4"])
        == 0
    )
    stats = json.loads((done.out / "runs" / "trace-seed0" / "gradients.json").read_text())
    assert len(stats) == 8
    assert main(["compare", "--estimators", "nope", "--out", str(tmp_path / "d")]) == 2
    assert "unknown elbo 'nope'" in capsys.readouterr().err
    assert main(["gradients", run_dir, "--particles", "0"]) == 2
