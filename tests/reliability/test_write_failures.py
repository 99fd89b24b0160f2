"""Write failures (unwritable place, disk full mid-write): one clear error, the previous files intact."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Self

import pytest

import pyro_vae.rundir.checkpoint as ckpt_mod
from pyro_vae import cli, fit
from pyro_vae.errors import RunError
from pyro_vae.rundir import checkpoint

from .conftest import TINY, as_sets, one_clear_line


class _FullDisk:
    """A file object that accepts ``room`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, f: Any, room: int) -> None:
        self._f, self._room = f, room

    def write(self, b: Any) -> int:
        n = len(memoryview(b).cast("B"))
        if n > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(b)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _fill_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    real = os.fdopen
    monkeypatch.setattr(ckpt_mod.os, "fdopen", lambda fd, mode="r", *a, **k: _FullDisk(real(fd, mode, *a, **k), room))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("room", [0, 1000, 20_000])
def test_disk_full_during_training_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], room: int
) -> None:
    out = tmp_path / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)
    before = _snapshot(out)
    _fill_disk(monkeypatch, room)
    with pytest.raises(RunError, match="No space left on device.*intact"):
        fit(overrides=["train.epochs=3"], out=out, resume=True)
    rc = cli.main(["train", "--out", str(out), "--resume", "--set", "train.epochs=3"])
    assert rc == 2
    assert "No space left on device" in one_clear_line(capsys.readouterr().err)
    monkeypatch.undo()
    after = _snapshot(out)
    assert after["checkpoint.pt"] == before["checkpoint.pt"]
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))  # no torn temp files left behind
    fit(overrides=["train.epochs=3"], out=out, resume=True)  # space is back: the run continues
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 3


def test_checkpoint_write_failure_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    torch = __import__("torch")
    rng = {"torch": torch.get_rng_state(), "data": torch.Generator().get_state()}
    record = {"epoch": 1, "seconds": 0.1, "test_elbo": -1.0, "train_loss": 1.0, "skipped_steps": 0}
    checkpoint.save(path, {"epoch": 1, "model": {}, "optimizer": {}, "rng": rng, "history": [record], "config": ""})
    _fill_disk(monkeypatch, 100)
    with pytest.raises(
        RunError, match=r"cannot write checkpoint .*No space left on device; the previous checkpoint is intact"
    ):
        checkpoint.save(path, {"epoch": 2, "model": {"w": __import__("torch").zeros(10_000)}})
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1


def test_unwritable_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RunError, match="cannot create run directory"):
        fit(overrides=TINY, out=blocker / "run")
    assert cli.main(["train", "--out", str(blocker / "run"), *as_sets(TINY)]) == 2
    assert "cannot create run directory" in one_clear_line(capsys.readouterr().err)
    # a directory that refuses new files (as a read-only mount would; chmod does not stop root)
    out = tmp_path / "run"
    fit(overrides=[*TINY, "train.epochs=1"], out=out)
    before = _snapshot(out)

    def refuse(*a: Any, **k: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", refuse)
    with pytest.raises(RunError, match="Permission denied"):
        fit(overrides=["train.epochs=2"], out=out, resume=True)
    monkeypatch.undo()
    assert _snapshot(out) == before
