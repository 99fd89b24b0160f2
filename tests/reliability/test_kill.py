"""Kill at any moment: SIGKILL a training subprocess at random points (many during checkpoint writes,
which a test hook slows down); the run directory always holds a loadable checkpoint once one was
written, and ``--resume`` finishes with exactly the numbers of an uninterrupted run. SIGINT/SIGTERM
save, print the resume command and exit 130/143."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.rundir import checkpoint, read_config
from pyro_vae.rundir.checkpoint import SLOW_WRITE_ENV

from .conftest import TINY, as_sets, assert_same_tensors, model_tensors, subprocess_env, summary_numbers, without_time

pytestmark = pytest.mark.slow

SETS = [*TINY, "train.epochs=8"]
SLOW = "0.01"  # seconds per write call inside atomic_write_bytes: a checkpoint takes ~0.3 s to write


def _args(out: Path, fresh: bool) -> list[str]:
    if fresh:
        return ["train", "--out", str(out), *as_sets(SETS)]
    return ["train", "--out", str(out), "--resume"]


def _inode(p: Path) -> int | None:
    try:
        return p.stat().st_ino
    except FileNotFoundError:
        return None


def _launch(out: Path, fresh: bool) -> tuple[subprocess.Popen[bytes], float]:
    """Start training; return once it has (re)written config.yaml, i.e. training is under way."""
    before = _inode(out / "config.yaml")
    p = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", *_args(out, fresh)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(**{SLOW_WRITE_ENV: SLOW}),
    )
    deadline = time.monotonic() + 300
    while _inode(out / "config.yaml") in (before, None) and p.poll() is None:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.005)
    return p, time.monotonic()


def _reference(tmp: Path) -> tuple[Path, float]:
    out = tmp / "reference"
    p, started = _launch(out, fresh=True)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()
    return out, time.monotonic() - started


def _check_after_kill(out: Path, seen_epoch: int) -> int:
    """The run directory is consistent after a SIGKILL; returns the checkpoint's epoch (-1: none yet)."""
    read_config(out)  # config.yaml is whole
    if not (out / "checkpoint.pt").exists():
        assert seen_epoch == -1, "a written checkpoint disappeared"
        return -1
    state = checkpoint.load(out / "checkpoint.pt")  # never torn
    epoch = int(state["epoch"])
    assert epoch >= seen_epoch, "the checkpoint went back in time"
    checkpoint.check_finite(state)
    if (out / "metrics.jsonl").exists():
        lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert epoch - 1 <= len(lines) <= epoch
        assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1))
    return epoch


def test_sigkill_at_random_points_then_resume_is_exact(tmp_path: Path) -> None:
    rng = random.Random(8)
    ref, duration = _reference(tmp_path)
    kills = mid_write = runs = 0
    log = []
    while kills < 24:
        runs += 1
        out = tmp_path / f"killed{runs}"
        seen = -1
        fresh = True
        for attempt in range(60):
            p, started = _launch(out, fresh)
            delay = rng.uniform(0, duration * 0.6)
            while p.poll() is None and time.monotonic() - started < delay:
                time.sleep(0.002)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                torn = list(out.glob(".*.tmp"))
                mid_write += bool(torn)
                seen = _check_after_kill(out, seen)
                log.append((runs, round(delay, 2), seen, [t.name.split(".")[1] for t in torn]))
                fresh = False
                continue
            _, err = p.communicate()
            assert p.returncode == 0, err.decode()
            break
        else:
            pytest.fail("the run never finished")
        assert not list(out.glob(".*.tmp"))
        metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        ref_metrics = [json.loads(ln) for ln in (ref / "metrics.jsonl").read_text().splitlines()]
        a, b = model_tensors(out), model_tensors(ref)
        differing = [r["epoch"] for r, q in zip(without_time(metrics), without_time(ref_metrics)) if r != q]
        runs_log = [entry for entry in log if entry[0] == runs]
        assert differing == [], (differing, [k for k in a if not torch.equal(a[k], b[k])], runs_log)
        assert summary_numbers(out) == summary_numbers(ref)
        assert_same_tensors(a, b)
    print(f"{kills} SIGKILLs over {runs} runs, {mid_write} during an atomic write; (run, delay s, epoch, torn): {log}")
    assert mid_write >= 3, log


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_subprocess_saves_and_says_how_to_resume(tmp_path: Path, signum: int, code: int) -> None:
    ref, duration = _reference(tmp_path)
    out = tmp_path / "run"
    p, _ = _launch(out, fresh=True)
    time.sleep(duration * 0.4)
    p.send_signal(signum)
    _, err = p.communicate(timeout=300)
    text = err.decode()
    assert p.returncode == code, text
    assert "Traceback" not in text
    assert f"resume with: pyro-vae train --resume --out {out}" in text.splitlines()[-1]
    state = checkpoint.load(out / "checkpoint.pt")
    assert "partial" in state or state["epoch"] >= 1
    r = subprocess.run([sys.executable, "-m", "pyro_vae", *_args(out, fresh=False)], capture_output=True, check=False,
                       text=True, timeout=600, env=subprocess_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert summary_numbers(out) == summary_numbers(ref)
    assert_same_tensors(model_tensors(out), model_tensors(ref))
