"""One writer at a time: an flock on the run directory that the OS releases when its holder dies.

A second writer gets one line naming the holder's PID (exit 2); readers are refused while a run is
being written; SIGKILL never leaves a stale lock; every result file records the checkpoint epoch it used.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_vae import cli, fit, load_run, plots
from pyro_vae.errors import PyroVAEError, RunError
from pyro_vae.rundir import checkpoint, read_metrics
from pyro_vae.rundir.lock import LOCK, RunDir, open_writer

from .conftest import TINY, as_sets, one_clear_line, run_cli, subprocess_env, without_time

FAST = [*TINY, "train.epochs=1"]


def _hold(root: str, exclusive: bool, ready: Any, release: Any) -> None:
    """Child process: take the run lock as ``train`` (or a reader) would, then wait."""
    if exclusive:
        run = open_writer(root, force=False, resume=True, command="train")
    else:
        run = RunDir(root).lock(exclusive=False, command="evaluate")
    ready.set()
    release.wait(60)
    run.release()


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    fit(overrides=FAST, out=out)
    return out


def _holder(root: Path, exclusive: bool) -> tuple[Any, Any]:
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(root), exclusive, ready, release), daemon=True)
    proc.start()
    assert ready.wait(30), "the holder did not take the lock"
    return proc, release


def test_second_writer_and_readers_are_refused_naming_the_holder(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != LOCK}
    proc, release = _holder(trained, exclusive=True)
    try:
        for args in (
            ["train", "--out", str(trained), "--force", *as_sets(FAST)],
            ["train", "--out", str(trained), "--resume", *as_sets(["train.epochs=2"])],
            ["evaluate", str(trained), "--particles", "2", "--device", "cpu"],
            ["sample", str(trained), "--num", "2", "--device", "cpu"],
            ["gradients", str(trained), "--particles", "1", "--draws", "2", "--points", "2"],
            ["diagnose", str(trained), "--points", "4", "--samples", "20", "--nuts", "0", "--gap-points", "0",
             "--sbc", "0"],
        ):  # fmt: skip
            assert cli.main(args) == 2, args
            line = one_clear_line(capsys.readouterr().err)
            assert f"PID {proc.pid}" in line, line
        with pytest.raises(RunError, match=f"PID {proc.pid}"):
            load_run(trained)
    finally:
        release.set()
        proc.join(30)
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != LOCK}
    assert after == before  # nobody wrote while the lock was held
    assert cli.main(["evaluate", str(trained), "--particles", "2", "--device", "cpu"]) == 0  # released


def test_a_reader_keeps_writers_out_but_not_other_readers(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc, release = _holder(trained, exclusive=False)
    try:
        assert cli.main(["evaluate", str(trained), "--particles", "2", "--device", "cpu"]) == 0  # readers share
        assert cli.main(["train", "--out", str(trained), "--force", *as_sets(FAST)]) == 2
        assert f"PID {proc.pid}" in one_clear_line(capsys.readouterr().err)
    finally:
        release.set()
        proc.join(30)
    assert cli.main(["train", "--out", str(trained), "--force", *as_sets(FAST)]) == 0


def test_sigkill_never_leaves_a_stale_lock(trained: Path) -> None:
    proc, _ = _holder(trained, exclusive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert (trained / LOCK).is_file()  # the file stays; the lock died with its process
    res = fit(overrides=["train.epochs=2"], out=trained, resume=True)
    assert res.history[-1]["epoch"] == 2


def test_library_calls_release_the_lock(tmp_path: Path) -> None:
    """fit holds the lock only while it runs: a second fit and a load in the same process work."""
    out = tmp_path / "run"
    fit(overrides=FAST, out=out)
    load_run(out)
    fit(overrides=["train.epochs=2"], out=out, resume=True)
    with pytest.raises(PyroVAEError):  # an error inside fit releases it too
        fit(overrides=["train.lr=0.5"], out=out, resume=True)
    fit(overrides=FAST, out=out, force=True)


def test_every_result_records_the_checkpoint_epoch(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fit(overrides=["train.epochs=2"], out=trained, resume=True)
    epoch = checkpoint.load(trained / "checkpoint.pt")["epoch"]
    assert epoch == 2
    titles: list[str] = []
    real = plots.save_grid
    monkeypatch.setattr(plots, "save_grid", lambda *a, **k: (titles.append(k.get("title", "")), real(*a, **k))[1])
    assert cli.main(["evaluate", str(trained), "--particles", "2", "--device", "cpu"]) == 0
    assert cli.main(["sample", str(trained), "--num", "2", "--device", "cpu"]) == 0
    assert cli.main(["gradients", str(trained), "--particles", "1", "--draws", "2", "--points", "2"]) == 0
    diag = [
        "diagnose",
        str(trained),
        "--points",
        "4",
        "--samples",
        "20",
        "--nuts",
        "0",
        "--gap-points",
        "0",
        "--sbc",
        "0",
    ]
    assert cli.main(diag) == 0
    assert json.loads((trained / "eval.json").read_text())["checkpoint"]["epoch"] == epoch
    assert {g["checkpoint"]["epoch"] for g in json.loads((trained / "gradients.json").read_text())} == {epoch}
    assert json.loads((trained / "diagnostics" / "diagnostics.json").read_text())["checkpoint"]["epoch"] == epoch
    assert titles and f"epoch {epoch}" in titles[-1]


# --------------------------------------------------------------------------- real concurrent commands


def _train(out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip


def _consistent(out: Path) -> None:
    """config.yaml, checkpoint, metrics and summary all describe one and the same model."""
    run = load_run(out, device="cpu")  # config.yaml agrees with the checkpoint's config, or this raises
    state = checkpoint.load(out / "checkpoint.pt")
    assert without_time(read_metrics(out / "metrics.jsonl")) == without_time(state["history"])
    assert json.loads((out / "summary.json").read_text())["epochs"] == run.epoch == state["epoch"]


@pytest.mark.slow
def test_two_concurrent_force_trainings_leave_one_consistent_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=FAST, out=out)
    a = _train(out, "--force", *as_sets([*TINY, "train.epochs=4", "model.network.hidden=[16]"]))
    b = _train(out, "--force", *as_sets([*TINY, "train.epochs=4", "model.network.hidden=[24]"]))
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in (a, b)]
    codes = sorted(r[3] for r in results)
    assert codes in ([0, 0], [0, 2]), results  # both in turn, or the second refused
    for pid, _, err, rc in results:
        if rc == 2:
            other = next(r[0] for r in results if r[0] != pid)
            assert f"PID {other}" in one_clear_line(err)
    _consistent(out)


@pytest.mark.slow
def test_a_running_training_refuses_a_second_one_and_survives_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "run"
    a = _train(out, *as_sets([*TINY, "train.epochs=100000"]))
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pt").is_file():  # training, lock held
            assert a.poll() is None and time.time() < deadline, a.stderr.read() if a.stderr else ""
            time.sleep(0.2)
        b = run_cli(["train", "--force", "--out", str(out), *as_sets(FAST)])
        assert b.returncode == 2
        assert f"PID {a.pid} (pyro-vae train)" in one_clear_line(b.stderr)
        r = run_cli(["evaluate", str(out), "--particles", "2", "--device", "cpu"])
        assert r.returncode == 2 and "in progress" in one_clear_line(r.stderr)
    finally:
        a.kill()  # SIGKILL: no handler runs, the OS drops the lock
        a.wait(60)
    done = checkpoint.load(out / "checkpoint.pt")["epoch"]
    res = fit(overrides=[f"train.epochs={done + 1}"], out=out, resume=True)
    assert res.history[-1]["epoch"] == done + 1
    _consistent(out)
