"""Training batches held in memory or streamed through a ``torch.utils.data.DataLoader``, in one order.

Both sources produce the same sequence of :class:`Batch` values for a given seed, so a run gives the
same numbers whichever is used (``tests/data/test_streaming.py`` checks metrics and parameters):

- the epoch's order is one ``torch.randperm(N)`` drawn from the run's data-order generator when the
  epoch's first batch is requested (as :meth:`pyro_vae.training.signals.Stop.batches` expects), cut into
  global batches of ``train.batch_size`` rows;
- under ``torchrun`` every rank draws the same permutation and keeps its contiguous block of each
  global batch (:meth:`pyro_vae.training.distributed.Context.shard`): the sharding ``DistributedSampler`` gives,
  at batch rather than epoch granularity, so the per-step gradient sum is the single-process one;
- resuming inside an epoch skips the batches already done without reading them: the source yields
  ``None`` in their place and :meth:`~pyro_vae.training.signals.Stop.batches` drops those positions.

In memory (:class:`InMemoryBatches`) the training split lives on the training device and a batch is an
index gather. Streamed (:class:`StreamingBatches`) it stays where it was loaded (CPU memory or a
memory-mapped file: only the rows of a batch are read), and a ``DataLoader`` whose sampler yields this
rank's row indices of each global batch gathers them in worker processes, into pinned memory when
training on CUDA; the main process copies each batch to the device. :func:`should_stream` makes the
choice for ``data.stream: auto`` from the size of the training split and ``data.memory_budget_gb``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from .._typing import Tensor
from . import dataset

#: Fraction of the training device's available memory the training split may take when
#: ``data.memory_budget_gb`` is null (the rest is for the model, activations and evaluation splits).
DEFAULT_BUDGET_FRACTION = 0.5


@dataclass(frozen=True)
class Batch:
    """One training step's data: this rank's rows of the global batch, on the training device."""

    x: Tensor
    y: Tensor | None
    size: int  # rows in the global batch over all ranks: losses are normalised by it


# --------------------------------------------------------------------------- the choice


def available_memory(device: torch.device) -> int:
    """Bytes available now where the training split would live: free GPU memory or available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: assume it fits


def split_bytes(*tensors: Any) -> int:
    """Bytes the given arrays take as held (NumPy arrays or tensors; None counts zero)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        total += int(t.nbytes) if isinstance(t, np.ndarray) else t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class StreamChoice:
    """Whether the training split streams, and why (for the training output)."""

    stream: bool
    nbytes: int  # the training split as held
    budget: int | None  # bytes allowed (None when data.stream is true or false)
    reason: str


def should_stream(stream: bool | str, nbytes: int, budget_gb: float | None, device: torch.device) -> StreamChoice:
    """``data.stream``: true or false as given; ``auto``: stream when the split exceeds the budget.

    The budget is ``data.memory_budget_gb`` (GB = 10^9 bytes), or :data:`DEFAULT_BUDGET_FRACTION` of
    :func:`available_memory` on the training device when it is null.
    """
    if stream is True or stream is False:
        return StreamChoice(stream, nbytes, None, f"data.stream: {str(stream).lower()}")
    budget = int(budget_gb * 1e9) if budget_gb is not None else int(DEFAULT_BUDGET_FRACTION * available_memory(device))
    where = (
        "data.memory_budget_gb"
        if budget_gb is not None
        else f"{DEFAULT_BUDGET_FRACTION:g} of the {device.type} memory available"
    )
    if nbytes > budget:
        return StreamChoice(True, nbytes, budget, f"the training split ({_gb(nbytes)}) exceeds {where} ({_gb(budget)})")
    return StreamChoice(False, nbytes, budget, f"the training split ({_gb(nbytes)}) fits {where} ({_gb(budget)})")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def default_workers() -> int:
    """DataLoader workers when ``data.stream_workers`` is null: up to 4, leaving one CPU to the training loop."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------- sources


class InMemoryBatches:
    """Batches gathered by index from splits held on the training device."""

    def __init__(self, x: Tensor, y: Tensor | None, batch_size: int, shard: Callable[[Tensor], Tensor]) -> None:
        self.x, self.y, self.batch_size, self.shard = x, y, batch_size, shard

    def epoch(self, generator: torch.Generator, skip: int = 0) -> Iterator[Batch | None]:
        """The epoch's batches in a fresh seeded order; ``None`` for the first ``skip`` (not gathered)."""
        order = dataset.batches(len(self.x), self.batch_size, shuffle=True, generator=generator, device=self.x.device)
        for i, idx in enumerate(order):  # the permutation is drawn at the first next()
            if i < skip:
                yield None
                continue
            mine = self.shard(idx)  # this rank's rows of the global batch idx (all of them in one process)
            yield Batch(self.x[mine], None if self.y is None else self.y[mine], len(idx))

    def close(self) -> None:
        pass


class _Rows(TorchDataset):  # type: ignore[type-arg]
    """Map-style dataset whose key is one batch: ``(row indices, global batch size)``.

    A memory-mapped array is read in ascending row order (sequential pages) and put back in the
    batch's order, so a batch reads only its own rows from disk.
    """

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def _take(a: Any, rows: np.ndarray) -> Tensor:
        if isinstance(a, torch.Tensor):
            return a[torch.from_numpy(rows)]
        order = np.argsort(rows, kind="stable")
        got = np.asarray(a[rows[order]])
        out = np.empty_like(got)
        out[order] = got
        return torch.from_numpy(out)

    def __getitem__(self, key: tuple[np.ndarray, int]) -> tuple[Tensor, Tensor | None, int]:
        rows, size = key
        return self._take(self.x, rows), None if self.y is None else self._take(self.y, rows), size


class _EpochPlan(Sampler):  # type: ignore[type-arg]
    """Sampler of one epoch: this rank's row indices of each global batch, from batch ``skip`` on."""

    def __init__(self, n: int, batch_size: int, shard: Callable[[Tensor], Tensor]) -> None:
        self.n, self.batch_size, self.shard = n, batch_size, shard
        self.order = torch.arange(n)
        self.skip = 0

    def __len__(self) -> int:
        return max(0, -(-self.n // self.batch_size) - self.skip)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for start in range(self.skip * self.batch_size, self.n, self.batch_size):
            idx = self.order[start : start + self.batch_size]
            yield self.shard(idx).numpy(), len(idx)


class StreamingBatches:
    """Batches read through a ``DataLoader`` from a split that stays where it was loaded.

    ``x`` and ``y`` may be CPU tensors or NumPy arrays (a ``np.memmap`` is read row by row).
    ``workers`` processes gather rows (0: in this process); on CUDA the batches come in pinned memory
    and are copied without blocking. The loader's workers persist across epochs. On Linux they are
    forked, so they read the parent's split (a memory-mapped file stays one mapping); where only
    ``spawn`` exists (macOS, Windows) each worker receives a pickled copy of the split, and
    ``data.stream_workers: 0`` avoids that.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        shard: Callable[[Tensor], Tensor],
        device: torch.device,
        workers: int = 0,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.plan = _EpochPlan(len(x), batch_size, shard)
        self.loader: DataLoader[Any] | None = DataLoader(
            _Rows(x, y),
            batch_size=None,  # each key is a whole batch
            sampler=self.plan,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            # fork: workers share the parent's (memory-mapped) split instead of receiving a pickled copy
            multiprocessing_context="fork" if workers > 0 and sys.platform.startswith("linux") else None,
            prefetch_factor=2 if workers > 0 else None,
            # workers' seeds come from here, not from the global torch stream the model draws from
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch(self, generator: torch.Generator, skip: int = 0) -> Iterator[Batch | None]:
        """The epoch's batches in a fresh seeded order; ``None`` for the first ``skip`` (not read)."""
        assert self.loader is not None, "StreamingBatches used after close()"
        self.plan.order = torch.randperm(self.plan.n, generator=generator)  # drawn at the first next()
        self.plan.skip = skip
        for _ in range(skip):
            yield None
        blocking = self.device.type != "cuda"
        for x, y, size in self.loader:
            x = x.to(self.device, non_blocking=not blocking)
            y = None if y is None else y.to(self.device, non_blocking=not blocking)
            yield Batch(x, y, int(size))

    def close(self) -> None:
        """Stop the worker processes (also done when the object is garbage-collected)."""
        self.loader = None


__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "Batch",
    "InMemoryBatches",
    "StreamChoice",
    "StreamingBatches",
    "available_memory",
    "default_workers",
    "should_stream",
    "split_bytes",
]
