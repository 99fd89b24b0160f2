"""A NaN/inf loss or gradient never reaches the parameters, a checkpoint or metrics.jsonl."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import pyro_vae.training.loop as train_mod
from pyro_vae import cli, fit
from pyro_vae.errors import RunError
from pyro_vae.rundir import checkpoint
from pyro_vae.training import NonFiniteLoss

from .conftest import TINY, one_clear_line


class _InfGrad(torch.autograd.Function):
    """Identity forward, +inf gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return torch.full_like(g, math.inf)


def _inject(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool], how: str) -> list[dict[str, torch.Tensor]]:
    """Corrupt the decoder output on training calls ``i`` with ``bad(i)``; snapshot parameters per call."""
    real = train_mod.build_model
    snapshots: list[dict[str, torch.Tensor]] = []

    def build_model(*args: Any, **kwargs: Any) -> Any:
        vae = real(*args, **kwargs)

        def hook(module: Any, inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
            if not vae.training:  # epoch-end evaluation is left alone
                return None
            i = len(snapshots)
            snapshots.append({k: v.detach().clone() for k, v in vae.state_dict().items()})
            if not bad(i):
                return None
            return out * math.nan if how == "nan_loss" else _InfGrad.apply(out)

        vae.model.decoder.register_forward_hook(hook)
        return vae

    monkeypatch.setattr(train_mod, "build_model", build_model)
    return snapshots


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["nan_loss", "inf_grad"])
def test_bad_steps_are_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    bad_steps = {2, 6, 7, 12}
    snaps = _inject(monkeypatch, lambda i: i in bad_steps, how)
    res = fit(overrides=TINY, out=tmp_path / "run")
    assert len(snaps) == 15  # 3 epochs x 5 steps
    for i in range(len(snaps) - 1):
        # a skipped step leaves every parameter bit-identical; a good one moves them
        assert _same(snaps[i], snaps[i + 1]) == (i in bad_steps), i
    assert [r["skipped_steps"] for r in res.history] == [1, 3, 4]
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    checkpoint.check_finite(state)  # parameters and optimizer state (Adam moments) are finite
    for r in res.history:
        assert all(math.isfinite(v) for v in r.values())


def test_stops_after_max_bad_steps_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    _inject(monkeypatch, lambda i: i >= 11, "nan_loss")  # epoch 3 goes bad from its second step
    with pytest.raises(NonFiniteLoss) as info:
        fit(overrides=[*TINY, "train.max_bad_steps=3", "train.epochs=5"], out=out)
    msg = str(info.value)
    assert "3 consecutive steps" in msg and "train.lr" in msg and "likelihood" in msg and "checkpoint" in msg
    assert "\n" not in msg
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 2
    checkpoint.check_finite(state)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # the CLI: exit 2 with the one line; --resume continues from the good epoch (and fails again)
    assert cli.main(["train", "--out", str(out), "--resume"]) == 2
    assert "consecutive steps had a NaN/inf loss" in one_clear_line(capsys.readouterr().err)


def test_all_steps_of_an_epoch_skipped_reports_nan_not_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, lambda i: 5 <= i < 10, "nan_loss")  # all of epoch 2; 5 in a row < 20
    res = fit(overrides=TINY, out=tmp_path / "run")
    assert math.isnan(res.history[1]["train_loss"])
    assert math.isfinite(res.history[2]["train_loss"]) and res.history[2]["skipped_steps"] == 5


@pytest.mark.parametrize(
    "extra",
    [
        ["train.optimizer=sgd", "train.lr=1000000.0"],
        ["train.lr=100000.0", "model.likelihood.kind=gaussian"],
        ["train.optimizer=sgd", "train.lr=1.0e+30", "model.likelihood.kind=gaussian"],
    ],
    ids=["sgd-1e6-bernoulli", "adam-1e5-gaussian", "sgd-1e30-gaussian"],
)
def test_exploding_configuration_stops_cleanly(tmp_path: Path, extra: list[str]) -> None:
    """Huge learning rates: a clear NonFiniteLoss, no traceback, never a NaN checkpoint or metric."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="train.lr") as info:
        fit(overrides=[*TINY, *extra, "train.epochs=4"], out=out)
    assert "likelihood" in str(info.value)
    if (out / "checkpoint.pt").exists():
        checkpoint.check_finite(checkpoint.load(out / "checkpoint.pt"))
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            assert all(math.isfinite(v) for k, v in json.loads(line).items() if k != "train_loss")


def test_checkpoint_refuses_non_finite_state(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    good = {"epoch": 1, "model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg_sq": torch.ones(3)}}}}
    checkpoint.save(path, good)
    before = path.read_bytes()
    for section, tensor in [("model", {"w": torch.tensor([1.0, math.nan, 0.0])}),
                            ("optimizer", {"state": {0: {"exp_avg_sq": torch.tensor([math.inf, 1.0, 1.0])}}})]:  # fmt: skip
        with pytest.raises(RunError, match=f"NaN/inf values in {section}.*previous checkpoint is intact"):
            checkpoint.save(path, {**good, section: tensor})
        assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
