"""Training: run directory contract, exact resume, refusal to overwrite, Python API."""

import json
import math

import pytest
import torch
import yaml

from pyro_vae import fit, load_run
from pyro_vae.errors import RunError, SpecError
from pyro_vae.rundir.checkpoint import load as load_ckpt


def test_fit_writes_the_run_directory_contract(tmp_path, tiny):
    res = fit(overrides=tiny + ["train.epochs=2"], out=tmp_path / "run")
    d = res.run_dir
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (d / f).is_file(), f
    lines = [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"epoch", "train_loss", "test_elbo", "seconds"} <= set(lines[0])
    summary = json.loads((d / "summary.json").read_text())
    assert {"test_elbo", "epochs", "train_seconds"} <= set(summary) and summary["epochs"] == 2
    assert summary["test_log_likelihood"] >= summary["test_elbo"] - 0.5  # L_K >= ELBO up to noise
    figs = {p.name for p in (d / "figures").glob("*.png")}
    assert {"loss.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png"} <= figs
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["latent_dim"] == 2


def test_resume_gives_the_same_numbers_as_a_straight_run(tmp_path, tiny):
    base = tiny + ["train.figures=false"]
    straight = fit(overrides=base + ["train.epochs=3"], out=tmp_path / "a")
    fit(overrides=base + ["train.epochs=2"], out=tmp_path / "b")
    resumed = fit(overrides=["train.epochs=3"], out=tmp_path / "b", resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(straight.history)
    sa, sb = load_ckpt(tmp_path / "a" / "checkpoint.pt"), load_ckpt(tmp_path / "b" / "checkpoint.pt")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert resumed.summary["test_elbo"] == straight.summary["test_elbo"]


def test_existing_directory_needs_resume_or_force(tmp_path, tiny):
    fit(overrides=tiny + ["train.figures=false"], out=tmp_path / "r")
    with pytest.raises(RunError, match="already exists; use --resume"):
        fit(overrides=tiny, out=tmp_path / "r")
    fit(overrides=tiny + ["train.figures=false"], out=tmp_path / "r", force=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a pyro-vae run directory"):
        fit(out=tmp_path / "empty", resume=True)


def test_resume_refuses_to_change_the_experiment(tmp_path, tiny):
    fit(overrides=tiny + ["train.figures=false"], out=tmp_path / "r")
    with pytest.raises(SpecError, match="cannot change when resuming"):
        fit(overrides=["train.lr=0.5"], out=tmp_path / "r", resume=True)


def test_load_run_restores_the_trained_model(tmp_path, tiny):
    res = fit(overrides=tiny + ["train.figures=false"], out=tmp_path / "r")
    run = load_run(tmp_path / "r", device="cpu")
    x = run.data.x_test[:5]
    assert torch.allclose(run.vae.posterior_mean(x), res.vae.posterior_mean(x))


@pytest.mark.parametrize(
    "override",
    [
        ["elbo.kind=iwae", "elbo.num_particles=3"],
        ["elbo.kind=meanfield"],
        ["model.network.kind=conv", "model.network.filters=4", "model.network.dense=8"],
        ["model.likelihood.kind=continuous_bernoulli"],
        ["model.likelihood.kind=gaussian", "model.likelihood.scale=learned_per_feature"],
        ["data.binarize=dynamic", "train.optimizer=nadam"],
        ["elbo.beta=4", "train.optimizer=sgd", "train.lr=0.01", "train.momentum=0.9"],
    ],
)
def test_training_reduces_the_loss(tmp_path, tiny, override):
    res = fit(
        overrides=tiny + ["train.epochs=4", "train.figures=false", "data.limit=512"] + override, out=tmp_path / "r"
    )
    losses = [r["train_loss"] for r in res.history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_likelihood_rejects_data_it_cannot_score(tmp_path):
    import numpy as np

    from pyro_vae.errors import DataError

    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.full((8, 4), 3.0), x_test=np.full((4, 4), 3.0))
    with pytest.raises(DataError, match=r"'bernoulli' needs values in \[0, 1\]"):
        fit(overrides=["data.name=npz", f"data.path={p}", "train.progress=false"], out=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written before the data was checked
