"""Non-finite values never reach the parameters, a checkpoint or metrics.jsonl.

Three guards, from the inside out:

- a step whose loss or gradient is NaN/inf is skipped (the training step's check, and after
  ``train.max_bad_steps`` such steps in a row :func:`too_many_bad_steps` stops the run); so is a step in
  which a distribution refuses its NaN/inf parameters (Pyro's argument validation raises
  ``ValueError: ... found invalid values``): :class:`InvalidAsNaN` turns that error into a NaN loss;
- after each epoch, :func:`check_record` stops the run if the held-out ELBO is NaN/inf (parameters
  that are finite but so large that the networks overflow), before that epoch is checkpointed;
- :func:`pyro_vae.rundir.checkpoint.save` refuses to write NaN/inf parameters or optimizer state.

Each stop raises :class:`NonFiniteLoss` with the likely causes (learning rate, likelihood scale)
and keeps the last good checkpoint.

A finite blow-up is caught too: :func:`check_divergence` stops the run (:class:`Diverged`) when the
held-out bound (``valid_elbo``, else ``test_elbo``) falls more than
max(:data:`DIVERGENCE_NATS`, :data:`DIVERGENCE_SPREAD` x the standard deviation of the last
:data:`DIVERGENCE_WINDOW` epochs' values) below the best value so far, before that epoch is
checkpointed; ``best.pt`` keeps the best epoch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError


class NonFiniteLoss(RunError):
    """Too many consecutive NaN/inf losses or gradients, or a non-finite held-out ELBO."""


class Diverged(RunError):
    """The held-out bound fell far below its best so far (see :func:`check_divergence`)."""


#: A drop below the best held-out value of more than this many nats per point is a divergence
#: (the default of train.divergence_nats) ...
DIVERGENCE_NATS = 50.0
#: ... or of more than this many standard deviations of the recent epochs' values, whichever is larger.
DIVERGENCE_SPREAD = 10.0
#: Epochs before the current one whose held-out values give that standard deviation.
DIVERGENCE_WINDOW = 5
#: Estimators whose guide gradient includes the path derivative of log q(z|x) (variance grows like 1/sigma).
PATH_DERIVATIVE = ("dreg", "stl", "piwae")


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


def kept(checkpoint_path: Path) -> str:
    """What a stop keeps: the last good checkpoint, when one was written."""
    if Path(checkpoint_path).is_file():
        return f"the last good checkpoint is in {str(checkpoint_path)!r}"
    return "no checkpoint was written"


def too_many_bad_steps(bad_in_row: int, epoch: int, cfg: Mapping[str, Any], checkpoint_path: Path) -> NonFiniteLoss:
    """The error that stops training after ``bad_in_row`` consecutive skipped steps (``train.max_bad_steps``)."""
    return NonFiniteLoss(
        f"{bad_in_row} consecutive steps had a NaN/inf loss or gradient at epoch {epoch} "
        f"(train.max_bad_steps: {cfg['train']['max_bad_steps']}); {causes(cfg)}; {kept(checkpoint_path)}"
    )


def check_record(record: Mapping[str, Any], cfg: Mapping[str, Any], checkpoint_path: Path) -> None:
    """Raise :class:`NonFiniteLoss` if an epoch's held-out numbers are NaN/inf (before it is saved)."""
    bad = [k for k, v in record.items() if k.endswith(("_elbo", "_kl", "_reconstruction")) and not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(
            f"epoch {record['epoch']} ended with a non-finite {bad[0]} ({record[bad[0]]}): the model has blown up; "
            f"{causes(cfg)}; {kept(checkpoint_path)}"
        )


def held_out_key(record: Mapping[str, Any]) -> str | None:
    """The held-out number that selects ``best.pt`` and guards divergence: valid split, else test."""
    return next((k for k in ("valid_elbo", "test_elbo") if k in record), None)


def best_epoch(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the highest finite held-out value (the earliest of ties); None if none."""
    best: Mapping[str, Any] | None = None
    for r in history:
        key = held_out_key(r)
        if key is None or not math.isfinite(r[key]):
            continue
        if best is None or r[key] > best[key]:
            best = r
    return best


def divergence_threshold(history: Sequence[Mapping[str, Any]], key: str, nats: float = DIVERGENCE_NATS) -> float:
    """How far below the best value the held-out bound may fall: max(``nats``, 10 x recent std)."""
    recent = [float(r[key]) for r in history[-DIVERGENCE_WINDOW:] if key in r and math.isfinite(r[key])]
    spread = statistics.stdev(recent) if len(recent) >= 2 else 0.0
    return max(nats, DIVERGENCE_SPREAD * spread)


def check_divergence(
    history: Sequence[Mapping[str, Any]], record: Mapping[str, Any], cfg: Mapping[str, Any], checkpoint_path: Path
) -> None:
    """Raise :class:`Diverged` if ``record``'s held-out bound fell too far below the best of ``history``.

    The rule: value < best - max(``train.divergence_nats`` (default :data:`DIVERGENCE_NATS`),
    :data:`DIVERGENCE_SPREAD` x the standard deviation of the held-out values of the last
    :data:`DIVERGENCE_WINDOW` epochs); ``train.divergence_nats: 0`` turns the guard off. A non-finite
    value is :func:`check_record`'s. The message names the estimator, the KL schedule and the likely cause.
    """
    nats = float(cfg.get("train", {}).get("divergence_nats", DIVERGENCE_NATS))
    key = held_out_key(record)
    best = best_epoch(history)
    if nats <= 0 or key is None or best is None or key not in best or not math.isfinite(record[key]):
        return
    limit = divergence_threshold(history, key, nats)
    drop = float(best[key]) - float(record[key])
    if drop <= limit:
        return
    elbo, train = cfg.get("elbo", {}), cfg.get("train", {})
    kind, schedule = elbo.get("kind", "?"), train.get("kl_schedule", "constant")
    estimator = f"elbo.kind: {kind}" + (f" (num_particles {elbo['num_particles']})" if "num_particles" in elbo else "")
    sched = f"train.kl_schedule: {schedule}" + (
        "" if schedule == "constant" else f" (kl_steps {train.get('kl_steps')})"
    )
    lr = f"lower train.lr ({train.get('lr', float('nan')):g})"
    if kind in PATH_DERIVATIVE:
        warm = schedule != "constant"
        cause = (
            f"likely cause: {kind}'s path-derivative term of log q(z|x) grows like 1/sigma as q's scale collapses"
            + (" while the KL weight is small" if warm else "")
            + f"; use elbo.kind: iwae{' or train.kl_schedule: constant' if warm else ''}, or {lr}"
        )
    else:
        cause = f"likely cause: a learning rate too large ({lr}) or a likelihood scale that collapsed"
    run_dir = Path(checkpoint_path).parent
    kept = (
        f"kept in {str(run_dir)!r}: checkpoint.pt (last good epoch), best.pt (epoch {best['epoch']})"
        if Path(checkpoint_path).is_file()
        else "no checkpoint was written"
    )
    raise Diverged(
        f"epoch {record['epoch']}: held-out {key} {float(record[key]):.4g} fell {drop:.4g} nats below its best "
        f"({float(best[key]):.4g}, epoch {best['epoch']}; limit max(train.divergence_nats {nats:g}, {DIVERGENCE_SPREAD:g} "
        f"x std of the last {DIVERGENCE_WINDOW} epochs) = {limit:.4g}); diverged with {estimator}, {sched}; {cause}; {kept}"
    )


__all__ = [
    "PATH_DERIVATIVE",
    "Diverged",
    "InvalidAsNaN",
    "NonFiniteLoss",
    "best_epoch",
    "causes",
    "check_divergence",
    "check_record",
    "divergence_threshold",
    "held_out_key",
    "is_invalid_values",
    "kept",
    "too_many_bad_steps",
]
