"""Resume is bit-identical: a run stopped after any epoch, or by SIGINT/SIGTERM at any step,
and continued with ``--resume`` ends with exactly the numbers and parameters of a straight run."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pyro_vae import cli, fit
from pyro_vae import data as data_mod
from pyro_vae.errors import RunError
from pyro_vae.rundir import checkpoint
from pyro_vae.training.signals import Interrupted, resume_command

from .conftest import (
    TINY,
    as_sets,
    assert_same_tensors,
    model_tensors,
    one_clear_line,
    summary_numbers,
    without_time,
)

VARIANTS = {
    "plain": [],
    # dynamic binarization draws from the global RNG inside the loop; IWAE uses K particles
    "dynamic-iwae": ["data.binarize=dynamic", "elbo.kind=iwae", "elbo.num_particles=3"],
}


_REFS: dict[str, Path] = {}


def _straight(tmp: Path, extra: list[str]) -> Path:
    """An uninterrupted 3-epoch run (cached per variant for the whole module)."""
    key = " ".join(extra)
    if key not in _REFS or not _REFS[key].is_dir():
        _REFS[key] = tmp / "straight"
        fit(overrides=[*TINY, *extra], out=_REFS[key])
    return _REFS[key]


def _assert_same_run(a: Path, b: Path) -> None:
    ma = [json.loads(ln) for ln in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(ln) for ln in (b / "metrics.jsonl").read_text().splitlines()]
    assert without_time(ma) == without_time(mb)
    assert summary_numbers(a) == summary_numbers(b)
    assert_same_tensors(model_tensors(a), model_tensors(b))
    opt_a = checkpoint.load(a / "checkpoint.pt")["optimizer"]["state"]
    opt_b = checkpoint.load(b / "checkpoint.pt")["optimizer"]["state"]
    for k in opt_a:
        for name in opt_a[k]:
            assert torch.equal(opt_a[k][name], opt_b[k][name])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resume_after_epoch_is_bit_identical(tmp_path: Path, variant: str) -> None:
    extra = VARIANTS[variant]
    ref = _straight(tmp_path, extra)
    out = tmp_path / "resumed"
    fit(overrides=[*TINY, *extra, "train.epochs=1"], out=out)
    fit(overrides=["train.epochs=2"], out=out, resume=True)
    fit(overrides=["train.epochs=3"], out=out, resume=True)
    _assert_same_run(ref, out)


class _CrashAfter(Exception):
    pass


def test_crash_between_checkpoint_and_metrics_is_repaired(tmp_path: Path) -> None:
    """An exception (or kill) right after epoch 2's checkpoint leaves metrics.jsonl behind; resume fixes it."""
    ref = _straight(tmp_path, [])
    out = tmp_path / "crashed"

    def crash(record: dict[str, Any], vae: Any) -> None:
        if record["epoch"] == 2:
            (out / "metrics.jsonl").write_text("")  # as if killed before metrics.jsonl was written
            raise _CrashAfter

    with pytest.raises(_CrashAfter):
        fit(overrides=TINY, out=out, callbacks={"on_epoch_end": [crash]})
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 2
    fit(out=out, resume=True)
    _assert_same_run(ref, out)


_SIGINT_AT_IMPORT = signal.getsignal(signal.SIGINT)


def _signal_at(monkeypatch: pytest.MonkeyPatch, at_step: int, signum: int) -> list[int]:
    """Make the process send itself ``signum`` while batch ``at_step`` (global count) is trained."""
    real = data_mod.batches
    seen = [0]

    def batches(*args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        for idx in real(*args, **kwargs):
            if seen[0] == at_step:
                os.kill(os.getpid(), signum)
            seen[0] += 1
            yield idx

    monkeypatch.setattr(data_mod.dataset, "batches", batches)  # the module the batch order calls
    return seen


@pytest.mark.parametrize(
    "at_step,signum",
    [(0, signal.SIGINT), (2, signal.SIGTERM), (4, signal.SIGINT), (5, signal.SIGTERM), (13, signal.SIGINT)],
)
def test_signal_checkpoints_and_resume_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_step: int, signum: int
) -> None:
    """5 steps per epoch: 0 before any step, 2 and 4 inside epoch 1, 5 at the epoch boundary, 13 in epoch 3."""
    extra = VARIANTS["dynamic-iwae"]
    ref = _straight(tmp_path, extra)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        _signal_at(m, at_step, signum)
        with pytest.raises(Interrupted) as info:
            fit(overrides=[*TINY, *extra], out=out)
    assert info.value.exit_code == 128 + signum
    assert resume_command(out) in str(info.value)
    state = checkpoint.load(out / "checkpoint.pt")
    # the signal lands as batch `at_step` is drawn: that batch is not trained, the ones before are
    done = at_step
    assert state["epoch"] == done // 5
    assert state["partial"]["steps"] == done % 5
    assert len(state["history"]) == done // 5
    # handlers are restored after fit returns
    assert signal.getsignal(signal.SIGINT) is _SIGINT_AT_IMPORT  # (SIG_IGN under nohup/background jobs)
    fit(out=out, resume=True)
    _assert_same_run(ref, out)


def test_cli_exit_code_and_resume_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with monkeypatch.context() as m:
            seen = _signal_at(m, 1, signum)
            args = ["train", "--out", str(out), *as_sets(TINY)]
            rc = cli.main(args if signum == signal.SIGTERM else ["train", "--out", str(out), "--resume"])
        assert rc == code, seen
        line = one_clear_line(capsys.readouterr().err.split("received:")[-1].split("\n", 1)[-1])
        assert f"resume with: pyro-vae train --resume --out {out}" in line
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def test_existing_run_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    fit(overrides=TINY, out=out)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(RunError, match="--resume .* --force"):
        fit(overrides=TINY, out=out)
    assert cli.main(["train", "--out", str(out), "--set", "train.progress=false"]) == 2
    assert "already exists" in one_clear_line(capsys.readouterr().err)
    assert (out / "checkpoint.pt").read_bytes() == before
    fit(overrides=[*TINY, "train.epochs=1"], out=out, force=True)
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_changed_experiment(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)
    with pytest.raises(RunError.__mro__[1], match="train.lr: cannot change when resuming"):
        fit(overrides=["train.lr=0.5"], out=out, resume=True)


def test_resume_before_first_checkpoint_starts_over(tmp_path: Path) -> None:
    """A kill before the first checkpoint leaves only config.yaml: --resume trains from scratch."""
    ref = _straight(tmp_path, [])
    out = tmp_path / "early"
    fit(overrides=TINY, out=out)
    for p in ("checkpoint.pt", "metrics.jsonl", "summary.json"):
        (out / p).unlink()
    (out / ".checkpoint.pt.abc.tmp").write_bytes(b"torn")  # a write killed half-way
    fit(out=out, resume=True)
    assert not (out / ".checkpoint.pt.abc.tmp").exists()
    _assert_same_run(ref, out)


def test_second_signal_aborts_at_once_keeping_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real = data_mod.batches
    seen = [0]

    def batches(*args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        for idx in real(*args, **kwargs):
            seen[0] += 1
            if seen[0] == 8:  # epoch 2, third batch: two Ctrl-C in a row
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            yield idx

    monkeypatch.setattr(data_mod.dataset, "batches", batches)  # the module the batch order calls
    with pytest.raises(KeyboardInterrupt):
        fit(overrides=TINY, out=out)
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1  # the last one written, whole
    assert signal.getsignal(signal.SIGINT) is _SIGINT_AT_IMPORT  # (SIG_IGN under nohup/background jobs)


def test_interrupted_run_can_be_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mid-epoch checkpoint is a normal checkpoint for evaluate/sample (epoch = completed epochs)."""
    from pyro_vae import load_run

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_at(m, 7, signal.SIGTERM)
        with pytest.raises(Interrupted):
            fit(overrides=TINY, out=out)
    run = load_run(out, device="cpu")
    assert run.epoch == 1
    assert cli.main(["evaluate", str(out), "--particles", "3", "--device", "cpu"]) == 0


def test_signal_during_a_step_finishes_that_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM inside step 8's forward pass: step 8 completes and is saved, then resume is exact."""
    import pyro_vae.training.loop as train_mod

    extra = VARIANTS["dynamic-iwae"]
    ref = _straight(tmp_path, extra)
    out = tmp_path / "run"
    real = train_mod.build_model
    calls = [0]

    def build_model(*args: Any, **kwargs: Any) -> Any:
        vae = real(*args, **kwargs)

        def hook(module: Any, inputs: Any, output: Any) -> None:
            if vae.training:
                calls[0] += 1
                if calls[0] == 8:
                    os.kill(os.getpid(), signal.SIGTERM)

        vae.model.decoder.register_forward_hook(hook)
        return vae

    with monkeypatch.context() as m:
        m.setattr(train_mod, "build_model", build_model)
        with pytest.raises(Interrupted):
            fit(overrides=[*TINY, *extra], out=out)
    state = checkpoint.load(out / "checkpoint.pt")
    assert (state["epoch"], state["partial"]["steps"]) == (1, 3)  # 8 steps = 5 + 3
    fit(out=out, resume=True)
    _assert_same_run(ref, out)
