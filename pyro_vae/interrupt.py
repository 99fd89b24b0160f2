"""Graceful stop on SIGINT / SIGTERM: finish the current step, checkpoint it, say how to resume.

While :func:`pyro_vae.fit` runs (it is wrapped by :func:`handle_signals`), the first SIGINT or SIGTERM
only sets a flag. The training loop iterates its batches through :meth:`Stop.batches`, which ends the
epoch early once the flag is set; the loop then writes a checkpoint that records how many steps of
the epoch were done, the running loss and the data-order generator's state at the epoch start, and
raises :class:`Interrupted` (the CLI exits with 128 + signal number: 130 for SIGINT, 143 for SIGTERM).
``--resume`` replays the same permutation, skips the steps already done and continues bit for bit.
A second signal aborts at once (KeyboardInterrupt / exit 128 + signal); the checkpoint on disk is then
the last one written, which atomic writes keep whole.
"""

from __future__ import annotations

import functools
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

#: Signals that request a graceful stop.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_command(run_dir: Path | str) -> str:
    """The exact command that continues the run in ``run_dir``."""
    return f"pyro-vae train --resume --out {shlex.quote(str(run_dir))}"


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + signal number."""

    def __init__(self, signum: int, run_dir: Path | str) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.run_dir = Path(run_dir)
        self.command = resume_command(run_dir)
        name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {name}; checkpoint saved in {str(run_dir)!r}; resume with: {self.command}")


class Stop:
    """The stop flag of one training run and the position within the current epoch."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.steps = 0  # steps of the current epoch completed (or skipped when resuming)
        self.data_state: torch.Tensor | None = None  # data-order generator state at the epoch start

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = int(signum)

    def batches(self, generator: torch.Generator, it: Iterable[Any], skip: int = 0) -> Iterator[Any]:
        """Yield ``it``'s batches until a stop is requested, skipping the first ``skip`` (resume).

        ``it`` must be lazy (draw its permutation from ``generator`` on the first ``next``), so that
        the state recorded here is the one the epoch's order is drawn from.
        """
        self.data_state = generator.get_state()
        self.steps = 0
        for i, batch in enumerate(it):
            if self.signum is not None:
                return
            if i >= skip:
                yield batch
            self.steps = i + 1


def _install(stop: Stop) -> dict[int, Any] | None:
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:  # second signal: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        stop.request(signum)
        print(
            f"\npyro-vae: {signal.Signals(signum).name} received: finishing the current step and saving a "
            "checkpoint (send it again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    old: dict[int, Any] = {}
    for s in SIGNALS:
        old[s] = signal.getsignal(s)
        signal.signal(s, handler)
    return old


_current: list[Stop] = []


def current() -> Stop:
    """The stop flag of the innermost running :func:`handle_signals` call (a never-set one outside)."""
    return _current[-1] if _current else Stop()


def handle_signals(fn: F) -> F:
    """Decorator: while ``fn`` runs, SIGINT/SIGTERM set :func:`current`'s flag instead of killing it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stop = Stop()
        old = _install(stop)
        _current.append(stop)
        try:
            return fn(*args, **kwargs)
        finally:
            _current.remove(stop)
            if old is not None:
                for s, h in old.items():
                    signal.signal(s, h if h is not None else signal.SIG_DFL)

    return wrapper  # type: ignore[return-value]


__all__ = ["Interrupted", "Stop", "current", "handle_signals", "resume_command"]
