"""Progress where there is no terminal: one plain line per epoch, at most one per N seconds inside one."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.cli import main
from pyro_vae.training import progress

TINY = ["train.epochs=3", "train.batch_size=64", "train.eval_particles=1", "train.figures=false", "data.limit=128",
        "model.latent_dim=2", "model.network.hidden=[32]"]  # fmt: skip
EPOCH_LINE = re.compile(r"^digits-vae: epoch (\d)/3 train_objective=\S+ lr=\S+ test_ce_bound=\S+ .*\[\d+\.\ds\]$")


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _check_epoch_lines(text: str, run: Path, epochs: int) -> None:
    assert "\r" not in text and "\x1b[" not in text  # no redraws, no cursor movement
    lines = [ln for ln in text.splitlines() if ln.startswith("digits-vae: epoch") and " step " not in ln]
    assert [EPOCH_LINE.match(ln).group(1) for ln in lines] == [str(e) for e in range(1, epochs + 1)], text  # type: ignore[union-attr]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    for ln, rec in zip(lines, metrics, strict=True):
        fields = dict(kv.split("=") for kv in ln.split(" [")[0].split()[3:])
        assert float(fields["train_objective"]) == pytest.approx(rec["train_objective"], abs=5e-4)
        assert float(fields["test_ce_bound"]) == pytest.approx(rec["test_elbo"], abs=5e-4)  # greyscale digits


def test_train_with_captured_output_prints_one_line_per_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr captured (not a terminal): the epoch lines with the numbers of metrics.jsonl, no redraws."""
    assert main(["train", "--out", str(tmp_path / "run"), *_sets(TINY)]) == 0
    err = capsys.readouterr().err
    _check_epoch_lines(err, tmp_path / "run", 3)
    assert "elbo" not in err  # greyscale digits under a Bernoulli likelihood: a cross-entropy bound, named so
    # a tiny interval: a line after every step but an epoch's last (2 steps of 64 per epoch)
    assert main(["train", "--out", str(tmp_path / "often"), *_sets([*TINY, "train.progress_seconds=1e-9"])]) == 0
    err = capsys.readouterr().err
    _check_epoch_lines(err, tmp_path / "often", 3)
    assert re.findall(r"epoch (\d)/3 step (\d)/2 \(50%\)", err) == [("1", "1"), ("2", "1"), ("3", "1")]
    assert (
        main(["train", "--out", str(tmp_path / "quiet"), *_sets([*TINY, "train.epochs=1", "train.progress=false"])])
        == 0
    )
    captured = capsys.readouterr()
    assert "epoch 1/1" not in captured.err + captured.out


@pytest.mark.slow
def test_train_into_a_log_file_prints_one_line_per_epoch(tmp_path: Path) -> None:
    """`pyro-vae train > log 2>&1` in a fresh process."""
    log = tmp_path / "train.log"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--out", str(tmp_path / "run"), *_sets(TINY)],
                            stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300, check=False).returncode  # fmt: skip
    text = log.read_text()
    assert rc == 0, text
    _check_epoch_lines(text, tmp_path / "run", 3)
    assert text.rstrip().splitlines()[-1].startswith("run directory:")


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_in_epoch_lines_at_most_one_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()  # not a terminal
    p = progress.Progress(200, desc="run", epochs=2, steps_per_epoch=100, interval=10.0, stream=out)
    assert p.plain and p._bar is None
    for epoch in (1, 2):
        for step in range(100):
            clock.t += 0.25  # 25 s per epoch: lines at 10 s and 20 s, none at the epoch's last step
            p.set_postfix(epoch=epoch, loss=f"{100.0 - step:.3f}", refresh=False)
            p.update(1)
        p.epoch_end({"epoch": epoch, "train_objective": 1.5, "train_loss": 1.5, "test_elbo": -2.0, "seconds": 25.0})
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "run: epoch 1/2 step 40/100 (40%) loss=61.000 [10.0s]",
        "run: epoch 1/2 step 80/100 (80%) loss=21.000 [20.0s]",
        "run: epoch 1/2 train_objective=1.500 test_elbo=-2.000 [25.0s]",
        "run: epoch 2/2 step 40/100 (40%) loss=61.000 [10.0s]",
        "run: epoch 2/2 step 80/100 (80%) loss=21.000 [20.0s]",
        "run: epoch 2/2 train_objective=1.500 test_elbo=-2.000 [25.0s]",
    ]


def test_a_resumed_epoch_counts_the_steps_done_before(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()
    p = progress.Progress(70, desc="run", epochs=3, steps_per_epoch=100, start_epoch=1, interval=5.0, stream=out)
    p.update(30)  # steps done before the interrupt
    clock.t += 6
    p.update(1)
    assert out.getvalue() == "run: epoch 2/3 step 31/100 (31%) [6.0s]\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_tqdm_bar() -> None:
    term = _Terminal()
    p = progress.Progress(10, desc="run", epochs=1, steps_per_epoch=10, stream=term)
    assert not p.plain
    for _ in range(10):
        p.update(1)
    p.epoch_end({"epoch": 1, "train_objective": 1.0, "test_elbo": -1.0, "seconds": 1.0})
    p.close()
    assert "\r" in term.getvalue() and "10/10" in term.getvalue() and "run: epoch" not in term.getvalue()
    assert progress.is_interactive(term) and not progress.is_interactive(io.StringIO())
