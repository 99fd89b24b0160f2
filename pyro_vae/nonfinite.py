"""Non-finite values never reach the parameters, a checkpoint or metrics.jsonl.

Three guards, from the inside out:

- a step whose loss or gradient is NaN/inf is skipped (the training loop's check); so is a step in
  which a distribution refuses its NaN/inf parameters (Pyro's argument validation raises
  ``ValueError: ... found invalid values``): :class:`InvalidAsNaN` turns that error into a NaN loss;
- after each epoch, :func:`check_record` stops the run if the held-out ELBO is NaN/inf (parameters
  that are finite but so large that the networks overflow), before that epoch is checkpointed;
- :func:`pyro_vae.checkpoint.save` refuses to write NaN/inf parameters or optimizer state.

Each stop raises :class:`NonFiniteLoss` with the likely causes (learning rate, likelihood scale)
and keeps the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import RunError


class NonFiniteLoss(RunError):
    """Too many consecutive NaN/inf losses or gradients, or a non-finite held-out ELBO."""


def is_invalid_values(e: BaseException) -> bool:
    """True for torch/Pyro argument validation rejecting NaN/inf distribution parameters."""
    return isinstance(e, ValueError) and "invalid values" in str(e)


class InvalidAsNaN(nn.Module):
    """Wraps a loss module: a NaN/inf-parameter validation error becomes a NaN loss (a skipped step)."""

    def __init__(self, loss_fn: Any) -> None:
        super().__init__()
        self.inner = loss_fn

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            return self.inner(*args, **kwargs)  # type: ignore[no-any-return]
        except ValueError as e:
            if not is_invalid_values(e):
                raise
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            device = x.device if x is not None else None
            return torch.full((), math.nan, device=device, requires_grad=True)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def causes(cfg: Mapping[str, Any]) -> str:
    """The likely causes, with the spec keys and their current values."""
    lik = cfg.get("model", {}).get("likelihood", {})
    kind = lik.get("kind", "?") if isinstance(lik, Mapping) else "?"
    return (
        f"likely causes: a learning rate too large (train.lr: {cfg['train']['lr']:g}) or a likelihood scale "
        f"that collapsed or exploded (model.likelihood: {kind})"
    )


def check_record(record: Mapping[str, Any], cfg: Mapping[str, Any], checkpoint_path: Path) -> None:
    """Raise :class:`NonFiniteLoss` if an epoch's held-out numbers are NaN/inf (before it is saved)."""
    bad = [k for k, v in record.items() if k.endswith(("_elbo", "_kl", "_reconstruction")) and not math.isfinite(v)]
    if bad:
        last = (
            f"the last good checkpoint is in {str(checkpoint_path)!r}"
            if Path(checkpoint_path).is_file()
            else "no checkpoint was written"
        )
        raise NonFiniteLoss(
            f"epoch {record['epoch']} ended with a non-finite {bad[0]} ({record[bad[0]]}): the model has blown up; "
            f"{causes(cfg)}; {last}"
        )


__all__ = ["InvalidAsNaN", "NonFiniteLoss", "causes", "check_record", "is_invalid_values"]
