"""The one adapter for the private Pyro and torch APIs pyro-vae relies on.

Every use of a name that Pyro or torch do not document (an underscore attribute, a module-level
private function) goes through a function here, and tests/test_internals.py asserts that each
still exists and behaves as assumed, so an upgrade that changes one fails there, loudly, rather than
as a wrong number or a silent slowdown elsewhere. The private hooks that our estimator classes
override (``ELBO._get_trace``, ``TraceMeanField_ELBO._differentiable_loss_particle``,
``TraceGraph_ELBO._loss_and_surrogate_loss``) are listed in :data:`OVERRIDDEN_HOOKS` and checked too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from ._typing import Tensor

#: Private methods of Pyro's ELBO classes that pyro-vae's estimators override or call: (class path, name).
OVERRIDDEN_HOOKS: tuple[tuple[str, str], ...] = (
    ("pyro.infer.elbo.ELBO", "_get_trace"),
    ("pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO", "_differentiable_loss_particle"),
    ("pyro.infer.tracegraph_elbo.TraceGraph_ELBO", "_loss_and_surrogate_loss"),
)


def pyro_handlers() -> Sequence[Any]:
    """Pyro's active effect handlers, innermost last (``pyro.poutine.runtime._PYRO_STACK``; read only)."""
    return _PYRO_STACK


def noise_source() -> Any:
    """The innermost active Pyro handler (the noise source when :func:`pyro_handlers` holds only those)."""
    return _PYRO_STACK[-1] if _PYRO_STACK else None


def has_noise_draw(handler: Any) -> bool:
    """Whether ``handler`` offers ``_draw(shape, dim, dtype, device)`` (pyro_vae's ``StepNoise``)."""
    return callable(getattr(handler, "_draw", None))


def noise_draw(handler: Any, shape: tuple[int, ...], dim: int | None, dtype: Any, device: Any) -> Tensor:
    """The standard normal noise ``handler`` hands a sample site of ``shape`` (data dim ``dim``)."""
    return handler._draw(shape, dim, dtype, device)  # type: ignore[no-any-return]


@contextmanager
def detached_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``module`` is its detached value (same numbers, no gradient).

    Swaps the entries of each submodule's ``Module._parameters`` (what attribute access returns) and
    puts them back afterwards, also on error.
    """
    saved = [(owner, name, p) for owner in module.modules() for name, p in owner._parameters.items() if p is not None]
    try:
        for owner, name, p in saved:
            owner._parameters[name] = p.detach()  # type: ignore[assignment]
        yield
    finally:
        for owner, name, p in saved:
            owner._parameters[name] = p


def non_finite_check(grads: list[Tensor], found: Tensor, one: Tensor) -> bool:
    """Add 1 to ``found`` if any element of ``grads`` (one device and dtype) is NaN or inf.

    AMP's fused kernel (``torch._amp_foreach_non_finite_check_and_unscale_``, with inverse scale
    ``one``: the gradients are multiplied by 1). False where this build lacks it (nothing done).
    """
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True


def takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` attribute (``_step_supports_amp_scaling``: the
    fused Adam/AdamW/SGD kernels skip the update, moments and step count where it is nonzero)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless_found_inf(optimizer: torch.optim.Optimizer, found_inf: Tensor) -> None:
    """``optimizer.step()`` with ``found_inf`` (a 0-dim float tensor) set as ``GradScaler`` sets it."""
    optimizer.found_inf = found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def fused_devices() -> set[str]:
    """Device types with fused optimizer kernels (``torch.optim.optimizer._get_fused_kernels_supported_devices``)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - a torch without fused kernels
        return set()
    return set(_get_fused_kernels_supported_devices())


def tracegraph_loss_and_surrogate(elbo: Any, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """``(ELBO, surrogate ELBO)`` of one ``TraceGraph_ELBO`` evaluation (``TraceGraph_ELBO._loss_and_surrogate_loss``):
    the value, and the Rao-Blackwellized score-function surrogate whose gradient is the estimator's."""
    return elbo._loss_and_surrogate_loss(model, guide, args, kwargs)  # type: ignore[no-any-return]


#: torch modules whose Gaussian samplers draw through a module-level ``_standard_normal``.
NORMAL_MODULES = (
    "torch.distributions.normal",
    "torch.distributions.multivariate_normal",
    "torch.distributions.lowrank_multivariate_normal",
    "torch.distributions.studentT",
)


@contextmanager
def patched_standard_normal(fn: Callable[..., Tensor]) -> Iterator[None]:
    """Within the block, torch's Gaussian ``rsample`` draws its noise from ``fn(shape, dtype=, device=)``
    (replaces ``_standard_normal`` in :data:`NORMAL_MODULES`)."""
    mods = [importlib.import_module(m) for m in NORMAL_MODULES]
    saved = [m._standard_normal for m in mods]  # type: ignore[attr-defined]
    for m in mods:
        m._standard_normal = fn  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m._standard_normal = f  # type: ignore[attr-defined]


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule has forward (pre-)hooks, or torch has global module hooks
    (``Module._forward_hooks``, ``_forward_pre_hooks``, ``torch.nn.modules.module._global_forward_hooks``):
    code that calls a network's layers' functions directly instead of the modules must not then."""
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def queue_after_backward(callback: Callable[[], None]) -> None:
    """Run ``callback`` once autograd has accumulated every leaf gradient of the backward in progress
    (the engine's ``queue_callback``, the hook DistributedDataParallel's reducer uses)."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


def tensorboard_event_file(writer: Any) -> str:
    """The path of the event file a ``torch.utils.tensorboard.SummaryWriter`` writes."""
    return str(writer._get_file_writer().event_writer._file_name)


def validate_sample(d: Any, value: Tensor) -> None:
    """A distribution's own support/shape check of ``value`` when it validates its arguments
    (``Distribution._validate_args`` / ``_validate_sample``), for subclasses that override ``log_prob``."""
    if d._validate_args:
        d._validate_sample(value)


def checked_instance(d: Any, cls: type, instance: Any = None) -> Any:
    """``Distribution._get_checked_instance``: the new object a subclass's ``expand`` fills in."""
    return d._get_checked_instance(cls, instance)


__all__ = [
    "NORMAL_MODULES",
    "OVERRIDDEN_HOOKS",
    "checked_instance",
    "detached_parameters",
    "fused_devices",
    "has_hooks",
    "has_noise_draw",
    "noise_draw",
    "noise_source",
    "non_finite_check",
    "patched_standard_normal",
    "pyro_handlers",
    "queue_after_backward",
    "step_unless_found_inf",
    "takes_found_inf",
    "tensorboard_event_file",
    "validate_sample",
]
