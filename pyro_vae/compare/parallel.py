"""Independent jobs (e.g. ``pyro-vae compare``'s estimator x seed runs) over processes of one machine.

:func:`map_jobs` runs ``fn(job, *args)`` for every job, in order in this process (``workers=1``)
or in a pool of ``workers`` spawned processes, and returns the results **in job order**, so a
report built from them does not depend on ``workers``. Each job seeds itself (``fit`` seeds from
the job's config), so a job computes the same numbers in a worker as in this process given the
same number of torch threads: workers use ``threads`` intra-op threads each (default: this
process's threads divided among the workers, at least 1). With CUDA, worker ``i`` runs its jobs on
GPU ``i mod torch.cuda.device_count()``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import torch

from ..errors import SpecError

J = TypeVar("J")
R = TypeVar("R")

_WORKER: dict[str, int] = {}


def _init_worker(counter: Any, threads: int) -> None:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER["index"] = index
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(index % torch.cuda.device_count())


def _call(fn: Callable[..., R], i: int, job: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, R]:
    return i, fn(job, *args, **kwargs)


def default_threads(workers: int) -> int:
    return max(1, torch.get_num_threads() // max(workers, 1))


def map_jobs(
    fn: Callable[..., R],
    jobs: Sequence[J],
    *args: Any,
    workers: int = 1,
    threads: int | None = None,
    on_result: Callable[[int, J, R], None] | None = None,
    **kwargs: Any,
) -> list[R]:
    """``[fn(job, *args, **kwargs) for job in jobs]``, over ``workers`` processes.

    ``fn`` must be a module-level function and jobs/arguments picklable (workers are spawned, not
    forked, so CUDA and torch's thread pools start clean). ``on_result(index, job, result)`` is
    called in this process as each job finishes (completion order); the returned list is in job
    order. The first job error is raised here, after cancelling the jobs not yet started.
    """
    if workers < 1:
        raise SpecError(f"--workers {workers}: must be >= 1")
    if workers == 1 or len(jobs) <= 1:
        out: list[R] = []
        for i, job in enumerate(jobs):
            res = fn(job, *args, **kwargs)
            out.append(res)
            if on_result is not None:
                on_result(i, job, res)
        return out
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    n = min(workers, len(jobs))
    results: dict[int, R] = {}
    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(counter, threads or default_threads(n))
    ) as pool:
        futures = [pool.submit(_call, fn, i, job, args, kwargs) for i, job in enumerate(jobs)]
        try:
            for fut in as_completed(futures):
                i, res = fut.result()
                results[i] = res
                if on_result is not None:
                    on_result(i, jobs[i], res)
        except BaseException:  # a job's error, or a stop (SIGINT/SIGTERM): end the running jobs now
            for f in futures:
                f.cancel()
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()  # their run directories keep their last whole checkpoint (atomic writes)
            raise
    return [results[i] for i in range(len(jobs))]


__all__ = ["default_threads", "map_jobs"]
