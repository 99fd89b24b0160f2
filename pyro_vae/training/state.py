"""The training state: everything ``fit`` needs to continue a run, saved and restored in one place.

A :class:`TrainState` holds the model, the optimizer, the data-order generator, the position
(epochs completed, and inside the epoch in progress: the steps taken and the partial sums of the
training objective), the step counters of the non-finite guard and the per-epoch history.
:meth:`TrainState.checkpoint` is the one place that writes it as a checkpoint dict and
:meth:`TrainState.restore` the one place that reads it back, so a run resumed from any checkpoint
continues exactly where it stopped (bit for bit on the CPU).

The checkpoint layout (format ``pyro-vae-checkpoint``, version 1, checked by
:func:`pyro_vae.rundir.checkpoint.layout_problem`): ``epoch`` (epochs completed), ``model``,
``optimizer`` (state dicts), ``rng`` (torch, data-order generator, Python, NumPy and CUDA states),
``history`` (one metrics record per completed epoch), ``config`` (the resolved spec as YAML),
``data_fingerprint``, and, when a signal stopped an epoch, ``partial``: that epoch's number, its steps
taken, objective sum and rows, seconds, skipped steps and consecutive skipped steps; the data-order
state in ``rng`` is then the one the epoch's permutation was drawn from, so the resumed epoch replays it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from ..models.vae import VAE
from ..rundir import checkpoint


@dataclass
class EpochProgress:
    """Where the epoch in progress stands: the steps taken and what they summed to."""

    epoch: int  # 1-based number of the epoch in progress
    total: torch.Tensor  # sum over the steps taken of the objective times the rows of the step
    count: int = 0  # rows over the steps taken (the skipped steps' excluded)
    steps: int = 0  # steps taken (when the epoch was resumed: including those taken before)
    earlier: float = 0.0  # seconds spent on it before a resume
    started: float = field(default_factory=time.perf_counter)  # when this process began (or resumed) it
    data_state: torch.Tensor | None = None  # data-order generator state the epoch's permutation is drawn from

    @property
    def seconds(self) -> float:
        """Seconds spent on the epoch so far, by this process and those it resumed from."""
        return self.earlier + time.perf_counter() - self.started


@dataclass
class TrainState:
    """The model, optimizer and random streams of a run, and its position (see the module docstring)."""

    vae: VAE
    optimizer: torch.optim.Optimizer
    data_rng: torch.Generator  # draws each epoch's permutation of the training split
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per completed epoch
    skipped: int = 0  # steps skipped for a NaN/inf loss or gradient since the run began
    bad_in_row: int = 0  # consecutive skipped steps (train.max_bad_steps stops the run)
    progress: EpochProgress | None = None  # the epoch in progress; None between epochs

    def begin_epoch(self, epoch: int, device: torch.device) -> EpochProgress:
        """The progress of ``epoch``: the restored one of a resumed partial epoch, else from its start."""
        if self.progress is None or self.progress.epoch != epoch:
            self.progress = EpochProgress(epoch, torch.zeros((), device=device))
        else:  # a resumed epoch: its clock goes on from the seconds already spent
            self.progress.total = self.progress.total.to(device)
            self.progress.started = time.perf_counter()
        return self.progress

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.epoch = int(record["epoch"])
        self.progress = None

    def checkpoint(self, config: str, fingerprint: str | None) -> dict[str, Any]:
        """The checkpoint dict of this state (``config``: the resolved spec as YAML text)."""
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.data_rng),
            "history": self.history,
            "config": config,
            "data_fingerprint": fingerprint,
        }
        p = self.progress
        if p is not None:  # stopped inside an epoch: resume replays its permutation and skips p.steps
            assert p.data_state is not None
            state["rng"]["data"] = p.data_state
            state["partial"] = {"epoch": p.epoch, "steps": p.steps, "total": p.total.detach(), "count": p.count,
                                "seconds": p.seconds, "skipped": self.skipped, "bad_in_row": self.bad_in_row}  # fmt: skip
        return state

    def restore(self, saved: Mapping[str, Any], where: str) -> None:
        """Continue from a checkpoint dict (loaded by :func:`pyro_vae.rundir.checkpoint.load`)."""
        checkpoint.load_model_state(self.vae, saved.get("model"), where)  # names the first mismatch
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
            set_rng_state(saved["rng"], self.data_rng)
            self.history = list(saved["history"])
            self.epoch = int(saved["epoch"])
            self.skipped = int(self.history[-1].get("skipped_steps", 0)) if self.history else 0
            self.bad_in_row = 0
            self.progress = None
            part = saved.get("partial")
            if part is not None:
                self.skipped, self.bad_in_row = int(part["skipped"]), int(part["bad_in_row"])
                self.progress = EpochProgress(int(part["epoch"]), part["total"], int(part["count"]), int(part["steps"]),
                                              float(part["seconds"]), data_state=saved["rng"]["data"])  # fmt: skip
        except Exception as e:  # noqa: BLE001 - whatever a malformed optimizer or RNG state raises is one line
            raise RunError(
                f"{where} does not match config.yaml ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
            ) from None

    def global_step(self, steps_per_epoch: int) -> int:
        """Steps taken since the run began (the trackers' step axis)."""
        return self.epoch * steps_per_epoch + (self.progress.steps if self.progress is not None else 0)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """The random streams of this process and the data-order generator ``gen``, as tensors and ints."""
    _np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
        "python": random.getstate(),  # tuples of ints: weights_only-safe
        "numpy": {"keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_gauss), "cached_gaussian": float(np_cached)},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], gen: torch.Generator) -> None:
    """Set the streams :func:`rng_state` recorded (Python, NumPy and CUDA states when present)."""
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["data"].cpu())
    if "python" in state:
        random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


__all__ = ["EpochProgress", "TrainState", "rng_state", "set_rng_state"]
