"""Shared helpers for the reliability suite: tiny, fast runs on the embedded digits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

#: A run that trains in a fraction of a second: 144 training points, 5 steps per epoch.
TINY = [
    "train.epochs=3",
    "train.batch_size=32",
    "train.progress=false",
    "train.figures=false",
    "train.eval_particles=3",
    "data.limit=160",
    "model.network.hidden=[16]",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run of the tiny model, trained once per test module (never modified)."""
    from pyro_vae import fit

    out = tmp_path_factory.mktemp("trained") / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`trained` that a test may edit or damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


#: Per-epoch numbers that must match exactly between an interrupted+resumed and a straight run.
EXACT_KEYS = ("epoch", "train_loss", "test_elbo", "test_reconstruction", "test_kl", "valid_elbo", "skipped_steps")


def as_sets(overrides: list[str]) -> list[str]:
    """CLI arguments ``--set A --set B ...`` for a list of overrides."""
    return [a for s in overrides for a in ("--set", s)]


def without_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def summary_numbers(run_dir: Path) -> dict[str, Any]:
    s = json.loads((Path(run_dir) / "summary.json").read_text())
    return {k: v for k, v in s.items() if k != "train_seconds"}


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    from pyro_vae.rundir import checkpoint

    return checkpoint.load(Path(run_dir) / "checkpoint.pt")["model"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"{k} differs"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("PYRO_VAE_TEST_SLOW_WRITE", None)
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - callers check returncode
        [sys.executable, "-m", "pyro_vae", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(**env),
    )


def one_clear_line(stderr: str) -> str:
    """The CLI's error contract: exactly one non-empty line on stderr, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
