"""Shared helpers of the benchmark scripts: machine description, interleaved timing, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MNIST_ROOT = os.environ.get("PYRO_VAE_DATA", "/work/shared/data")


def machine(threads: int) -> dict[str, Any]:
    """What the numbers were measured on (the machine is shared: the load average is part of it)."""
    import pyro

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "loadavg_start": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, round_seconds: float, warmup: int = 2
) -> dict[str, Any]:
    """Median seconds per call of each function, timed in interleaved rounds (order rotated per round).

    Each round times ``n`` back-to-back calls (``n`` sized so a round lasts about ``round_seconds``);
    interleaving spreads the shared machine's load changes over all variants alike. Both wall time and
    this process's CPU time are recorded: on a machine shared with many other jobs the CPU time is the
    steadier measure of a step's cost (wall time also counts the time the scheduler gave to others).
    """
    names = list(fns)
    per_call: dict[str, float] = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        t = time.perf_counter()
        fns[name]()
        per_call[name] = time.perf_counter() - t
    reps = {k: max(1, int(round_seconds / max(v, 1e-6))) for k, v in per_call.items()}
    samples: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(reps[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - t) / reps[name])
            cpu[name].append((time.process_time() - c) / reps[name])
    return {
        k: {"median_s": statistics.median(v), "median_cpu_s": statistics.median(cpu[k]), "samples_s": v,
            "samples_cpu_s": cpu[k], "calls_per_round": reps[k]}
        for k, v in samples.items()
    }  # fmt: skip


def write(out: Path, name: str, payload: dict[str, Any], markdown: str, keep_load: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not keep_load:
        payload["machine"]["loadavg_end"] = list(os.getloadavg())
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    head = (
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs; load average "
        f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end), torch threads {m['torch_threads']}, "
        f"CUDA: {m['cuda'] or 'none'}; Python {m['python']}, torch {m['torch']}, pyro {m['pyro']}; {m['date_utc']} UTC.\n\n"
    )
    (out / f"{name}.md").write_text(head + markdown)
    print(head + markdown)
