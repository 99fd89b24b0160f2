"""SIGINT / SIGTERM at every stage: stop soon, keep what is whole, say what was kept and how to continue.

Two kinds of work are guarded, and the innermost guard decides what a first signal does:

- **Training** (:func:`handle_signals`, around :func:`pyro_vae.fit`): the first signal only sets a
  flag. The training loop iterates its batches through :meth:`Stop.batches`, which ends the epoch
  early once the flag is set; the loop then writes a checkpoint that records how many steps of the
  epoch were done, the running loss and the data-order generator's state at the epoch start, and
  raises :class:`Interrupted`. ``--resume`` replays the same permutation, skips the steps already
  done and continues bit for bit.
- **A stage** (:func:`stage`: the final evaluation, figures, ``evaluate``, ``diagnose``, ``compare``,
  ...): nothing is worth finishing, so the first signal raises :class:`Interrupted` at once (between
  two Python bytecodes, so within the current tensor operation), naming the stage and what was kept.

The CLI exits with 128 + signal number (130 for SIGINT, 143 for SIGTERM) and prints the message.
A second signal exits at once, with one line saying so (KeyboardInterrupt for SIGINT, SystemExit
143 for SIGTERM); files are written atomically, so the last whole ones are what is kept.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

#: Signals that request a stop.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_command(run_dir: Path | str) -> str:
    """The exact command that continues the run in ``run_dir``."""
    return f"pyro-vae train --resume --out {shlex.quote(str(run_dir))}"


class Interrupted(BaseException):
    """Work stopped on a signal; ``exit_code`` is 128 + signal number.

    A :class:`BaseException` (like :class:`KeyboardInterrupt`), so that code catching ``Exception``
    to report a bad file or a failed download never mistakes a stop for an error.
    """

    def __init__(self, signum: int, run_dir: Path | str | None = None, message: str | None = None) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.command = "" if run_dir is None else resume_command(run_dir)
        name = signal.Signals(self.signum).name if self.signum else "a signal"
        if message is None:
            message = f"stopped by {name}; checkpoint saved in {str(run_dir)!r}; resume with: {self.command}"
        super().__init__(message)


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


@dataclass
class Stage:
    """A long piece of work that a signal stops at once: what it is, and what stays if it stops."""

    what: str  # "the final evaluation", "evaluate"
    kept: str  # "nothing was written; eval.json is unchanged"


_frames: list[Stop | Stage] = []  # innermost last; the innermost decides what a signal does
_received: list[int] = []  # signals received since the outermost guard was entered
_saved_handlers: dict[Any, Any] = {}
_exit_at_once = False


def exit_at_once_on_second_signal(flag: bool = True) -> None:
    """A second signal ends the process with ``os._exit`` (the ``pyro-vae`` command) instead of raising
    KeyboardInterrupt / SystemExit (a library call: the caller decides). Whole files stay whole either
    way (atomic writes); a killed write's temp file is removed by the next run in that directory."""
    global _exit_at_once
    _exit_at_once = flag


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    top = _frames[-1] if _frames else None
    if _received:  # a second signal: leave now, with a word
        kept = top.kept if isinstance(top, Stage) else "files are written atomically: the last whole ones are kept"
        print(f"\npyro-vae: second {name}: exiting at once; {kept}", file=sys.stderr, flush=True)
        if _exit_at_once:  # the command line: no interpreter teardown (seconds with torch loaded)
            sys.stdout.flush()
            os._exit(128 + signum)
        if signum == signal.SIGINT:
            e = KeyboardInterrupt()
            e.announced = True  # type: ignore[attr-defined]  # the CLI prints no second line
            raise e
        raise SystemExit(128 + signum)
    _received.append(signum)
    if isinstance(top, Stop):
        top.request(signum)
        print(
            f"\npyro-vae: {name} received: finishing the current step and saving a checkpoint "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
    elif isinstance(top, Stage):
        raise Interrupted(signum, message=f"stopped by {name} during {top.what}; {top.kept}")


@contextmanager
def _guard(frame: Stop | Stage) -> Iterator[None]:
    """Push ``frame``; the outermost guard installs the handler and restores the old ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    outermost = not _frames
    if outermost:
        _received.clear()
        for s in SIGNALS:
            _saved_handlers[s] = signal.getsignal(s)
            signal.signal(s, _handler)
    _frames.append(frame)
    try:
        yield
    finally:
        _frames.remove(frame)
        if outermost:
            for s, h in _saved_handlers.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            _saved_handlers.clear()
            _received.clear()


@contextmanager
def stage(what: str, kept: str) -> Iterator[None]:
    """While inside, the first SIGINT/SIGTERM raises :class:`Interrupted` at once:
    ``"stopped by SIGTERM during {what}; {kept}"``."""
    with _guard(Stage(what, kept)):
        yield


def current() -> Stop:
    """The stop flag of the innermost running :func:`handle_signals` call (a never-set one outside)."""
    stops = [f for f in _frames if isinstance(f, Stop)]
    return stops[-1] if stops else Stop()


def handle_signals(fn: F) -> F:
    """Decorator: while ``fn`` runs, SIGINT/SIGTERM set :func:`current`'s flag instead of killing it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _guard(Stop()):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = [
    "Interrupted",
    "Stage",
    "Stop",
    "current",
    "exit_at_once_on_second_signal",
    "handle_signals",
    "resume_command",
    "stage",
]
