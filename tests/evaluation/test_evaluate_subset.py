"""`pyro-vae evaluate --points N --seed S`: a seeded random subset, stated in eval.json and the printout."""

import json

import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.evaluation.evaluate import point_terms, random_subset, summarize
from pyro_vae.rundir import load_run

TINY = ["--set", "train.epochs=1", "--set", "data.limit=256", "--set", "model.network.hidden=[32]",
        "--set", "train.eval_particles=4", "--set", "train.progress=false", "--set", "train.figures=false"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_random_subset_is_seeded_sorted_and_without_replacement():
    a, b, c = random_subset(360, 50, 3), random_subset(360, 50, 3), random_subset(360, 50, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 50 and bool((a[1:] > a[:-1]).all()) and 0 <= int(a.min()) and int(a.max()) < 360


def test_points_scores_exactly_the_stated_subset(run, capsys):
    assert main(["evaluate", str(run), "--particles", "8", "--points", "50", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "eval.json").read_text())
    idx = random_subset(360, 50, 3)
    assert ev["n"] == 50
    assert ev["subset"] == {"points": 50, "of": 360, "seed": 3, "indices": idx.tolist()}
    assert "50 of 360 (random subset, seed 3)" in out
    # the same numbers from the library on those rows with the importance samples seeded alike
    loaded = load_run(run, device="cpu")
    x, y = loaded.data.split("test")
    pyro.set_rng_seed(3)
    ref = summarize(point_terms(loaded.vae, x[idx], None if y is None else y[idx], 8), "test", 8)
    assert ev["elbo"] == pytest.approx(ref.elbo, abs=1e-9)
    assert ev["log_likelihood"] == pytest.approx(ref.log_likelihood, abs=1e-9)
    # another subset gives other numbers; the same seed repeats them exactly
    assert main(["evaluate", str(run), "--particles", "8", "--points", "50", "--seed", "4"]) == 0
    other = json.loads((run / "eval.json").read_text())
    assert other["subset"]["indices"] != ev["subset"]["indices"] and other["elbo"] != ev["elbo"]
    assert main(["evaluate", str(run), "--particles", "8", "--points", "50", "--seed", "3"]) == 0
    assert json.loads((run / "eval.json").read_text()) == ev


def test_points_at_least_the_split_scores_all_of_it(run, capsys):
    assert main(["evaluate", str(run), "--particles", "4", "--points", "1000"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n"] == 360 and "subset" not in ev
    assert "random subset" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [(["--points", "0"], "--points 0: must be >= 1"),
                                            (["--seed", "-1"], "--seed -1: must be in")])  # fmt: skip
def test_bad_points_or_seed_is_one_line(run, capsys, argv, fragment):
    assert main(["evaluate", str(run), "--particles", "4", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_points_of_a_streamed_training_split(tmp_path, capsys):
    """The training split of a streamed run stays where it was loaded; a subset of it is scored all the same."""
    run = tmp_path / "s"
    assert main(["train", *TINY, "--set", "data.stream=true", "--set", "data.stream_workers=0", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--particles", "4", "--split", "train", "--points", "30", "--seed", "1"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    loaded = load_run(run, device="cpu")
    assert loaded.data.stream
    idx = random_subset(len(loaded.data.x_train), 30, 1)
    pyro.set_rng_seed(1)
    ref = summarize(point_terms(loaded.vae, loaded.data.x_train[idx], loaded.data.y_train[idx], 4), "train", 4)
    assert ev["n"] == 30 and ev["subset"]["of"] == 230 and ev["elbo"] == pytest.approx(ref.elbo, abs=1e-9)
