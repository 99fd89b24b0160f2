"""Run directories written before the training loop was rewritten over TrainState resume exactly.

tests/training/data/checkpoint_v1 holds runs trained by the previous loop (make_fixture.py says how):
one stopped by SIGINT inside epoch 2 (a ``partial`` checkpoint) and one trained for a single epoch,
both of a 3-epoch IWAE spec with dynamic binarization, and the parameters, metrics and summary of
the same spec trained for 3 epochs without a stop. Resuming either with today's ``fit`` must end with
those parameters bit for bit, and :class:`TrainState` must read and write the checkpoint layout as is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pyro_vae import fit
from pyro_vae.rundir import checkpoint, load_run
from pyro_vae.rundir.checkpoint import layout_problem
from pyro_vae.spec import train_config
from pyro_vae.training import TrainState, make_optimizer
from pyro_vae.training.state import rng_state

FIXTURE = Path(__file__).parent / "data" / "checkpoint_v1"
#: Entries a version-1 checkpoint holds (``partial`` only when a signal stopped an epoch).
V1_KEYS = {"format", "version", "epoch", "model", "optimizer", "rng", "history", "config", "data_fingerprint"}
#: Per-epoch numbers computed by the evaluation after the epoch's steps (metrics.jsonl).
EVALUATED = ("test_elbo", "test_reconstruction", "test_kl", "valid_elbo", "train_elbo", "curve_ll")


def _records(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in path.read_text().splitlines()]


def _assert_same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Training numbers equal exactly, evaluated ones within float rounding (1e-6 relative)."""
    assert len(a) == len(b)
    for r, t in zip(a, b):
        assert set(r) == set(t)
        assert {k: v for k, v in r.items() if k not in EVALUATED} == {k: v for k, v in t.items() if k not in EVALUATED}
        assert {k: v for k, v in r.items() if k in EVALUATED} == pytest.approx(
            {k: t[k] for k in r if k in EVALUATED}, rel=1e-6
        )


def _assert_equal(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers: equal exactly (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def straight_now(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's spec trained for 3 epochs without a stop by today's code."""
    out = tmp_path_factory.mktemp("now") / "straight"
    cfg = checkpoint.load(FIXTURE / "epoch1" / "checkpoint.pt")["config"]
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(cfg)
    fit(str(spec), overrides=["train.epochs=3"], out=out)
    return out


@pytest.mark.parametrize("run,overrides", [("partial", []), ("epoch1", ["train.epochs=3"])])
def test_a_run_of_the_previous_loop_resumes_to_the_uninterrupted_parameters(
    tmp_path: Path, straight_now: Path, run: str, overrides: list[str]
) -> None:
    out = tmp_path / run
    shutil.copytree(FIXTURE / run, out)
    before = checkpoint.load(out / "checkpoint.pt")
    assert layout_problem(before) is None and set(before) - {"partial"} == V1_KEYS
    assert ("partial" in before) == (run == "partial")

    res = fit(overrides=overrides, out=out, resume=True)

    then = torch.load(FIXTURE / "straight" / "params.pt", weights_only=True)  # the previous loop, no stop
    now = load_run(straight_now).vae.state_dict()  # today's loop, no stop
    for name, value in res.vae.state_dict().items():
        assert torch.equal(value, then[name]), name
        assert torch.equal(value, now[name]), name
    # what training computes is the previous loop's to the bit; the held-out numbers of the epochs after
    # the resume are evaluated by today's code, the previous evaluation's within float rounding
    records = _records(out / "metrics.jsonl")
    if run == "epoch1":  # epoch 1 was that run's last epoch, so it also got the learning-curve point
        assert "curve_ll" in records[0]
        records[0] = {k: v for k, v in records[0].items() if not k.startswith("curve_")}
    _assert_same_records(records, _records(FIXTURE / "straight" / "metrics.jsonl"))
    _assert_same_records(records, _records(straight_now / "metrics.jsonl"))
    summary, now_summary, then_summary = (
        {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "train_seconds"}
        for d in (out, straight_now, FIXTURE / "straight")
    )
    for other in (now_summary, then_summary):
        assert set(summary) == set(other)
        assert {k: v for k, v in summary.items() if not isinstance(v, float)} == {
            k: v for k, v in other.items() if not isinstance(v, float)
        }
        assert {k: v for k, v in summary.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in other.items() if isinstance(v, float)}, rel=1e-6
        )
    after = checkpoint.load(out / "checkpoint.pt")  # written by TrainState: the same layout, no partial
    assert set(after) == V1_KEYS and after["epoch"] == 3 and layout_problem(after) is None
    assert checkpoint.load(out / "best.pt")["epoch"] == json.loads((out / "summary.json").read_text())["best_epoch"]


@pytest.mark.parametrize("run", ["partial", "epoch1"])
def test_train_state_writes_back_exactly_the_checkpoint_it_restored(tmp_path: Path, run: str) -> None:
    """restore then checkpoint is the identity on a version-1 checkpoint (the clock of a partial epoch aside)."""
    shutil.copytree(FIXTURE / run, tmp_path / run)
    saved = checkpoint.load(tmp_path / run / "checkpoint.pt")
    loaded = load_run(tmp_path / run)  # the model of the stored config, with the checkpoint's parameters
    state = TrainState(
        loaded.vae, make_optimizer(loaded.vae.parameters(), train_config(loaded.config)), torch.Generator()
    )
    state.restore(saved, "fixture")
    assert state.epoch == saved["epoch"] and state.history == saved["history"]
    assert (state.progress is not None) == (run == "partial")
    if run == "partial":  # the epoch draws its order: a partial checkpoint keeps the state it was drawn from
        torch.randperm(10, generator=state.data_rng)
    written = state.checkpoint(saved["config"], saved["data_fingerprint"])
    expected = {k: v for k, v in saved.items() if k not in ("format", "version")}
    if run == "partial":
        assert written["partial"]["seconds"] >= expected["partial"]["seconds"]
        written["partial"]["seconds"] = expected["partial"]["seconds"]
    rng = rng_state(state.data_rng)  # the process's streams were set from the checkpoint
    assert torch.equal(rng["torch"], saved["rng"]["torch"])
    _assert_equal(written, expected)
