"""Training progress: tqdm's bar on a terminal, plain lines where there is none.

A log file, CI output, ``nohup`` or a cluster scheduler's log is not a terminal: tqdm's carriage-return
redraws would fill it with hundreds of partial lines. There :class:`Progress` prints one line per epoch
with the epoch's record (``key=value``, the names of ``metrics.jsonl``) and, inside a long epoch, at most
one line every ``interval`` seconds with the step count and the running values. On a terminal (or in a
Jupyter kernel) it is tqdm's bar, as before.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from tqdm.auto import tqdm


def is_interactive(stream: Any) -> bool:
    """A terminal, or a Jupyter kernel's output (tqdm draws a widget there)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    h, rem = divmod(s, 3600)
    return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) and (abs(v) >= 1e4 or 0 < abs(v) < 1e-3) else f"{v:.3f}"
    return str(v)


class Progress:
    """The progress of ``total`` training steps over epochs ``start_epoch + 1..epochs``.

    The training loop calls :meth:`update` after each step, :meth:`set_postfix` with running values,
    :meth:`epoch_end` with each epoch's record and :meth:`close` at the end.
    ``plain=None`` chooses by the stream: plain lines unless :func:`is_interactive`.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        epochs: int,
        steps_per_epoch: int,
        start_epoch: int = 0,
        enabled: bool = True,
        interval: float = 60.0,
        plain: bool | None = None,
        stream: TextIO | None = None,
        names: Callable[[str], str] | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.plain = (not is_interactive(self.stream)) if plain is None else plain
        self.enabled, self.desc, self.epochs, self.steps_per_epoch = enabled, desc, epochs, steps_per_epoch
        self.interval = interval
        self.names = names or (lambda key: key)  # how a record's key is shown (what the number is)
        self.epoch = start_epoch + 1  # the epoch being trained
        self.n = 0
        self._postfix: dict[str, Any] = {}
        self._bar: Any = None
        if enabled and not self.plain:
            self._bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=self.stream)
        self._epoch_start = self._last_line = time.monotonic()
        self._epoch_steps = 0  # steps of the current epoch so far (including those done before a resume)

    def _print(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._epoch_steps += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if (
            self.enabled
            and self.plain
            and now - self._last_line >= self.interval
            and self._epoch_steps < self.steps_per_epoch
        ):
            self._last_line = now
            values = " ".join(f"{k}={_value(v)}" for k, v in self._postfix.items() if k != "epoch")
            pct = 100 * self._epoch_steps / max(self.steps_per_epoch, 1)
            self._print(
                f"epoch {self.epoch}/{self.epochs} step {self._epoch_steps}/{self.steps_per_epoch} ({pct:.0f}%)"
                + (f" {values}" if values else "")
                + f" [{_duration(now - self._epoch_start)}]"
            )

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Running values shown with the bar (tqdm) or in the next in-epoch line (plain)."""
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **values)

    def epoch_end(self, record: Mapping[str, Any]) -> None:
        """One epoch is done: the bar shows its numbers; plain mode prints its line."""
        if self._bar is not None:
            shown = {name: _value(record[k]) for k, name in (("train_objective", "objective"),
                                                              ("test_elbo", self.names("test_elbo"))) if k in record}  # fmt: skip
            self._bar.set_postfix(epoch=record["epoch"], **shown)
        elif self.enabled:
            values = " ".join(
                f"{self.names(k)}={_value(v)}"
                for k, v in record.items()
                if k not in ("epoch", "seconds", "train_loss") and isinstance(v, (int, float))
            )
            self._print(f"epoch {record['epoch']}/{self.epochs} {values} [{_duration(float(record['seconds']))}]")
        self._epoch_start = self._last_line = time.monotonic()
        self._epoch_steps = 0
        self.epoch = int(record["epoch"]) + 1
        self._postfix = {}  # running values belong to their epoch

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


__all__ = ["Progress", "is_interactive"]
