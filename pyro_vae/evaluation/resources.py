"""Will it fit, and how long will it take? Estimates checked before any work starts.

Memory: the model is built on PyTorch's ``meta`` device (shapes only, nothing allocated), which
gives the exact parameter count of any registered component; activations are estimated from the
widths of its layers. Training needs the parameters, their gradients and two Adam moments
(16 bytes per float32 parameter) plus the activations of one batch of ``batch_size x num_particles``
rows kept for the backward pass. The estimate is compared with the memory available now
(``MemAvailable`` in ``/proc/meminfo``, a cgroup limit when lower; free memory on a CUDA device).

Time: a command that would run for hours is timed on a short probe first and refused with the
estimate unless the user raises the limit.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._typing import Shape
from ..errors import SpecError

#: float32 bytes per parameter while training: the value, its gradient and Adam's two moments.
TRAIN_BYTES_PER_PARAM = 16
#: Activations kept per row (data point x particle) per unit of layer width: forward value and gradient,
#: float32, with a factor 2 of slack for the likelihood's and the estimator's temporaries.
BYTES_PER_WIDTH = 16


def fmt_bytes(n: float) -> str:
    """``12.3 GB`` (powers of 1000, as ``free -h --si``)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # unreachable


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that can be allocated now on ``device`` (CPU: MemAvailable, capped by a cgroup limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if not avail:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 1 << 62  # unknown: nothing is refused
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def layer_width(module: nn.Module, event_shape: Shape) -> int:
    """Sum of the output widths of ``module``'s layers for one row (a data point or a particle).

    Linear layers contribute their ``out_features``; convolutions their channels times the event's
    pixels (an upper bound for strided layers); the data and its likelihood parameters count twice.
    """
    pixels = math.prod(event_shape[1:]) if len(event_shape) >= 2 else 1
    width = 2 * math.prod(event_shape)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            width += m.out_features
        elif isinstance(
            m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        ):
            width += m.out_channels * pixels
    return width


def model_size(cfg: Mapping[str, Any], event_shape: Shape, num_classes: int = 0) -> tuple[int, int, str]:
    """(parameters, width per row, what the count rests on) of the resolved spec's model.

    Exact when the model can be built on the meta device; when a component needs real values to be
    built (Pyro's autoregressive flows compute their masks), a lower bound from the network's layer
    sizes (:func:`spec_lower_bound`), which still refuses absurd sizes without allocating them.
    """
    import pyro

    from ..models.vae import build_model

    try:  # argument validation would read values, which meta tensors do not have
        with torch.device("meta"), pyro.validation_enabled(False):
            vae = build_model(cfg, event_shape, num_classes)
    except SpecError:
        raise
    except Exception:  # noqa: BLE001 - a component that computes with tensor values in __init__
        return spec_lower_bound(cfg, event_shape)
    tensors = [*vae.named_parameters(), *vae.named_buffers()]
    params = sum(t.numel() for _, t in tensors)
    name, big = max(tensors, key=lambda nt: nt[1].numel(), default=("", torch.empty(0)))
    largest = f"the largest tensor is {name} of shape {tuple(big.shape)}" if name else "no tensors"
    return params, layer_width(vae, event_shape), largest


def spec_lower_bound(cfg: Mapping[str, Any], event_shape: Shape) -> tuple[int, int, str]:
    """At least the weights of an encoder and a decoder with the spec's hidden widths between the data
    and the latent space (every network kind has at least these many, or more for convolutions)."""
    model = cfg.get("model", {})
    hidden = [int(h) for h in (model.get("network") or {}).get("hidden") or [] if isinstance(h, (int, float))]
    latent = int(model.get("latent_dim") or 1)
    widths = [math.prod(event_shape), *hidden, latent]
    one_way = sum(a * b for a, b in itertools.pairwise(widths))
    return 2 * one_way, 2 * sum(widths), f"at least {2 * one_way:,} from the layer sizes {widths} (both directions)"


def check_memory(need: float, what: str, device: torch.device | str, fix: str) -> None:
    """Raise :class:`SpecError` when ``need`` bytes exceed what ``device`` has available."""
    avail = available_memory(device)
    if need > avail:
        raise SpecError(
            f"{what} needs about {fmt_bytes(need)} of memory but {fmt_bytes(avail)} is available on "
            f"{torch.device(device).type}; {fix}"
        )


def forward_width(cfg: Mapping[str, Any], event_shape: Shape, num_classes: int = 0) -> int | None:
    """Activation elements per row measured by one forward pass of the model and guide on meta tensors
    (every leaf module's output; nothing is allocated), or None when the pass needs real values.

    Exact where :func:`layer_width` can only bound (strided convolutions shrink their outputs); it
    costs about a second, so it only refines an estimate that would otherwise refuse the spec.
    """
    import pyro

    from ..estimators import log_terms
    from ..models.vae import build_model

    total = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    try:
        with torch.device("meta"), pyro.validation_enabled(False):
            vae = build_model(cfg, event_shape, num_classes)
            for m in vae.modules():
                if not list(m.children()):
                    m.register_forward_hook(count)
            x = torch.empty(2, *event_shape)
            y = torch.zeros(2, dtype=torch.long) if getattr(vae, "conditional", False) else None
            log_terms(vae.model, vae.guide, (x, vae.cond(y)), {}, 1, scaled=False)
    except Exception:  # noqa: BLE001 - a component that needs real values: keep the cheaper estimate
        return None
    return 2 * math.prod(event_shape) + total[0] // 2


def check_training_fits(
    cfg: Mapping[str, Any], event_shape: Shape, num_classes: int, device: torch.device | str, eval_rows: int
) -> None:
    """Refuse a spec whose model, batch or particles cannot fit in memory, before anything is built."""
    params, width, largest = model_size(cfg, event_shape, num_classes)
    particles = int(cfg["elbo"].get("num_particles") or 1)
    rows = max(cfg["train"]["batch_size"] * particles, eval_rows)
    weights = TRAIN_BYTES_PER_PARAM * params
    if weights + BYTES_PER_WIDTH * rows * width > available_memory(device):  # the bound refuses: measure
        width = forward_width(cfg, event_shape, num_classes) or width
    acts = BYTES_PER_WIDTH * rows * width
    check_memory(
        weights + acts,
        f"this spec ({params:,} parameters: {fmt_bytes(weights)} with gradients and optimizer state; "
        f"activations of {rows:,} rows (points x particles): {fmt_bytes(acts)}; {largest})",
        device,
        "make the model smaller (model.latent_dim, model.network.hidden, the prior's size) or lower "
        "elbo.num_particles or train.batch_size",
    )


def check_duration(seconds: float, limit_hours: float, what: str, probe: str, fix: str) -> None:
    """Refuse work estimated to last longer than ``limit_hours`` (0: no limit); ``fix`` says how to proceed."""
    if limit_hours > 0 and seconds > limit_hours * 3600:
        raise SpecError(
            f"{what} would take about {fmt_duration(seconds)} ({probe}), more than the {limit_hours:g} h limit; {fix}"
        )


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} hours"
    if seconds < 3 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365.25 * 86400):,.0f} years"


__all__ = [
    "available_memory",
    "check_duration",
    "check_memory",
    "check_training_fits",
    "check_work",
    "estimate_eval_seconds",
    "fmt_bytes",
    "fmt_duration",
    "forward_width",
    "layer_width",
    "model_size",
    "spec_lower_bound",
]


#: Below this many (point, particle) rows an evaluation is not worth timing first.
PROBE_ABOVE_ROWS = 5_000_000


def estimate_eval_seconds(vae: Any, x: Any, y: Any, num_particles: int, points: int) -> tuple[float, str]:
    """Seconds to score ``points`` points with ``num_particles`` particles, from a short timed probe
    (one chunk of :data:`~pyro_vae.evaluation.ROW_BUDGET` rows, as the evaluation itself runs, after a
    small warm-up), and how the estimate was made."""
    import time

    from .evaluate import ROW_BUDGET, point_terms

    k = min(num_particles, ROW_BUDGET)
    m = max(1, min(len(x), ROW_BUDGET // k))
    xb, yb = x[:m], (None if y is None else y[:m])
    point_terms(vae, x[:1], None if y is None else y[:1], min(k, 64))  # warm-up: first-call costs are not the rate
    t0 = time.perf_counter()
    point_terms(vae, xb, yb, k)
    per_row = (time.perf_counter() - t0) / (m * k)
    total = per_row * points * num_particles
    how = f"{points:,} points x {num_particles:,} particles at {per_row * 1e6:.2f} us each, timed on {m * k:,}"
    return total, how


#: Longest work a command without a time-limit option may be asked for, judged from a lower bound.
MAX_HOURS_WITHOUT_FLAG = 24.0
#: A lower bound on one gradient step through a model and guide (Python and autograd overhead alone).
STEP_SECONDS_AT_LEAST = 1e-4


def check_work(
    what: str,
    device: torch.device | str,
    *,
    width: int,
    rows_per_call: int = 0,
    stored_elements: int = 0,
    seconds_at_least: float = 0.0,
    fix: str,
) -> None:
    """Refuse a command whose largest forward pass (``rows_per_call`` rows of ``width`` activations)
    plus what it keeps (``stored_elements`` float32 values) cannot fit, or whose running time is at
    least :data:`MAX_HOURS_WITHOUT_FLAG` hours."""
    acts = BYTES_PER_WIDTH * rows_per_call * width
    check_memory(
        acts + 4 * stored_elements,
        f"{what} ({rows_per_call:,} rows in one pass: {fmt_bytes(acts)}; {stored_elements:,} values kept: "
        f"{fmt_bytes(4 * stored_elements)})",
        device,
        fix,
    )
    check_duration(seconds_at_least, MAX_HOURS_WITHOUT_FLAG, what, "a lower bound from its number of steps", fix)
