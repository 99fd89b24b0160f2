"""SIGINT / SIGTERM at every stage: stop within a second or two, say what was kept, exit 130 / 143.

In-process tests pin the mechanism (pyro_vae/interrupt.py): inside a stage the first signal raises
at once, inside training it only sets the flag, a second signal leaves with a line, and the previous
handlers come back. Subprocess tests (slow) send real signals to ``pyro-vae`` at several stages: the
final evaluation, the figures, ``evaluate``, ``diagnose``, ``compare`` (then ``compare --resume``
reuses the finished jobs), and a second signal during a checkpoint write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pyro_vae.training.loop as train_mod
from pyro_vae import cli, fit
from pyro_vae.rundir import checkpoint
from pyro_vae.training import signals as interrupt
from pyro_vae.training.signals import Interrupted

from .conftest import TINY, as_sets, subprocess_env

_HANDLERS_AT_IMPORT = {s: signal.getsignal(s) for s in interrupt.SIGNALS}


# --------------------------------------------------------------------------- the mechanism, in process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stage_stops_at_once_and_says_what_was_kept(signum: int) -> None:
    t0 = time.perf_counter()
    with pytest.raises(Interrupted) as info, interrupt.stage("the long part", "the earlier files are kept"):
        os.kill(os.getpid(), signum)
        time.sleep(30)  # never reached: the handler raises as soon as the signal lands
    assert time.perf_counter() - t0 < 5
    assert info.value.exit_code == 128 + signum
    assert (
        str(info.value) == f"stopped by {signal.Signals(signum).name} during the long part; the earlier files are kept"
    )
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == _HANDLERS_AT_IMPORT


def test_training_inside_a_stage_is_graceful_and_a_stage_inside_training_is_not() -> None:
    """The innermost guard decides: a Stop (training) only sets its flag; a stage within it raises."""
    seen: list[Any] = []

    @interrupt.handle_signals
    def work() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append(interrupt.current().signum)  # the flag, no exception
        with interrupt.stage("the summary", "kept"):
            time.sleep(0.01)  # a signal before the stage is not raised again here

    with interrupt.stage("the command", "nothing"):
        work()
    assert seen == [signal.SIGTERM]

    @interrupt.handle_signals
    def work2() -> None:
        with interrupt.stage("the summary", "the checkpoint is kept"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)

    with pytest.raises(Interrupted, match="during the summary; the checkpoint is kept"):
        work2()


@pytest.mark.parametrize("signum,exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_second_signal_leaves_at_once_with_a_line(
    signum: int, exc: type[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    @interrupt.handle_signals
    def work() -> None:
        os.kill(os.getpid(), signum)  # first: the flag
        os.kill(os.getpid(), signum)  # second: out
        time.sleep(30)

    t0 = time.perf_counter()
    with pytest.raises(exc):
        work()
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert f"second {signal.Signals(signum).name}: exiting at once" in err
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == _HANDLERS_AT_IMPORT


def test_signal_in_the_final_evaluation_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit: every epoch is checkpointed, so a signal in the final evaluation does not wait for it;
    ``--resume`` then writes the summary from the same checkpoint."""
    real = train_mod.final_summary

    def slow_summary(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "final_summary", slow_summary)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(Interrupted, match="during the final evaluation; the checkpoint of epoch 3 is kept") as info:
        fit(overrides=TINY, out=out)
    assert time.perf_counter() - t0 < 30
    assert info.value.exit_code == 143
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 3 and not (out / "summary.json").exists()
    monkeypatch.setattr(train_mod, "final_summary", real)
    fit(out=out, resume=True)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def test_cli_reports_the_stage_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate_mod = sys.modules["pyro_vae.evaluation.evaluate"]  # the module whose evaluate the CLI calls
    out = tmp_path / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)

    def interrupted_evaluate(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    monkeypatch.setattr(evaluate_mod, "evaluate", interrupted_evaluate)
    assert cli.main(["evaluate", str(out), "--particles", "2", "--device", "cpu"]) == 130
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [
        "pyro-vae: stopped by SIGINT during pyro-vae evaluate; nothing was written; an earlier eval.json is unchanged"
    ]
    assert not (out / "eval.json").exists()


# --------------------------------------------------------------------------- real processes, real signals

SLOW_TINY = [s for s in TINY if not s.startswith("train.epochs")]


#: ``pyro-vae`` whose figures take 60 s more (to land a signal in them on purpose); same CLI otherwise.
SLOW_FIGURES = (
    "import sys, time, pyro_vae.plots as p; real = p.run_figures; "
    "p.run_figures = lambda *a, **k: (time.sleep(60), real(*a, **k))[1]; "
    "from pyro_vae.cli import main; sys.exit(main())"
)


def _start(args: list[str], cwd: Path, *, code: str = "", **env: str) -> subprocess.Popen[str]:
    entry = ["-c", code] if code else ["-m", "pyro_vae"]
    return subprocess.Popen(
        [sys.executable, *entry, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=subprocess_env(**env),
    )  # fmt: skip


def _wait(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "never reached the stage"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[float, str, str]:
    """Send ``signum``; seconds until the process has exited, its stdout and stderr."""
    t0 = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return time.monotonic() - t0, out, err


def _last_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


#: Seconds allowed from the signal to the process's exit (about 1 s idle; the interpreter's teardown
#: with torch loaded takes longer when six test suites share two cores).
EXIT_WITHIN = 15.0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_train_final_evaluation_and_figures(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "run"
    stage, extra = ("the final evaluation", ["train.eval_particles=200000", "train.figures=false"]) if signum == signal.SIGTERM \
        else ("the figures", ["train.eval_particles=3", "train.figures=true"])  # fmt: skip
    proc = _start(["train", *as_sets([*SLOW_TINY, "train.epochs=2", *extra]), "--out", str(out)], tmp_path,
                  code=SLOW_FIGURES if signum == signal.SIGINT else "")  # fmt: skip
    marker = out / ("metrics.jsonl" if signum == signal.SIGTERM else "summary.json")
    _wait(proc, lambda: marker.is_file() and (signum == signal.SIGINT or len(marker.read_text().splitlines()) == 2))
    took, _, err = _stop(proc, signum)
    assert proc.returncode == 128 + signum
    assert took < EXIT_WITHIN
    line = _last_line(err)
    assert f"during {stage}" in line and "pyro-vae train --resume --out" in line
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 2
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", "--out", str(out), "--set",
                           "train.eval_particles=3"], capture_output=True, text=True, env=subprocess_env(), timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("signals") / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
def test_evaluate_and_diagnose(trained: Path, tmp_path: Path, command: str) -> None:
    args = ["evaluate", str(trained), "--particles", "20000", "--device", "cpu"] if command == "evaluate" else \
        ["diagnose", str(trained), "--points", "300", "--samples", "2000", "--nuts", "2", "--sbc", "300",
         "--out", str(tmp_path / "diag")]  # fmt: skip
    proc = _start(args, tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()  # its first progress line: the stage has started
    time.sleep(0.5)
    took, _, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143 and took < EXIT_WITHIN
    line = _last_line(err)
    assert line.startswith(f"pyro-vae: stopped by SIGTERM during pyro-vae {command}")
    if command == "evaluate":
        assert "nothing was written" in line and not (trained / "eval.json").exists()
    else:
        assert "no diagnostics were written" in line
        assert not (tmp_path / "diag" / "diagnostics.json").exists()


@pytest.mark.slow
def test_compare_stops_and_resumes_reusing_finished_jobs(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", *as_sets([*SLOW_TINY, "train.epochs=40"]), "--estimators", "trace,iwae:num_particles=2,dreg:num_particles=2",
            "--particles", "3", "--no-snr", "--curve-particles", "0", "--out", str(out)]  # fmt: skip
    proc = _start(args, tmp_path)
    _wait(proc, lambda: (out / "jobs").is_dir() and any((out / "jobs").iterdir()))
    took, _, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143 and took < EXIT_WITHIN
    line = _last_line(err)
    assert "during the comparison" in line and "of 3 jobs finished" in line and "--resume" in line
    finished = sorted(p.name for p in (out / "jobs").iterdir())
    kept = {name: (out / "jobs" / name).read_text() for name in finished}
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoint.pt")}
    again = subprocess.run([sys.executable, "-m", "pyro_vae", *args, "--resume"], capture_output=True, text=True,
                           env=subprocess_env(), timeout=600, cwd=tmp_path, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} of 3 jobs already finished" in again.stdout
    report = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["trace", "iwae:num_particles=2", "dreg:num_particles=2"]
    for name, text in kept.items():  # reused as they were: same record, checkpoint never rewritten
        assert json.loads(text)["record"] in report["runs"]
        run_dir = out / "runs" / name.removesuffix(".json")
        assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == ckpts[run_dir / "checkpoint.pt"]


@pytest.mark.slow
def test_second_signal_during_a_checkpoint_write(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(["train", *as_sets([*SLOW_TINY, "train.epochs=500"]), "--out", str(out)], tmp_path,
                  PYRO_VAE_TEST_SLOW_WRITE="0.02")  # fmt: skip
    _wait(proc, lambda: (out / "checkpoint.pt").is_file())
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    first = proc.stderr.readline() or proc.stderr.readline()
    first = first.strip() or proc.stderr.readline().strip()
    assert "finishing the current step" in first
    time.sleep(0.2)  # the graceful checkpoint is being written, slowly
    took, _, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143
    assert took < EXIT_WITHIN / 3  # no interpreter teardown: os._exit
    assert "second SIGTERM: exiting at once" in _last_line(err)
    checkpoint.load(out / "checkpoint.pt")  # the last whole checkpoint
