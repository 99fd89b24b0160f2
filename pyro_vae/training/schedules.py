"""KL-weight schedules: the factor multiplying ``elbo.beta`` at each optimization step.

The training loop calls ``vae.set_kl_weight(beta * kl_factor(...))`` before every step, so a schedule
acts exactly where beta does: on log p(z) - log q(z|x) inside each particle's log-weight.

- ``constant``: factor 1 (plain beta-VAE / ELBO).
- ``linear``: KL annealing / warm-up (Bowman et al. 2016; Sonderby et al. 2016): the factor grows
  linearly from 0 to 1 over ``kl_steps`` steps, then stays at 1.
- ``cyclical`` (Fu et al. 2019): the step axis is cut into cycles of ``kl_steps`` steps; in each
  cycle the factor grows linearly from 0 to 1 over the first ``kl_ramp`` fraction and stays at 1 for
  the rest (their R = 0.5 default).

Reported bounds never use the factor: evaluation uses unscaled log-densities.

Learning-rate schedules (``train.lr_schedule``), a function of the 1-based epoch only, so a resumed
run sets the same rate without optimizer-scheduler state:

- ``constant``: ``train.lr`` throughout.
- ``burda`` (Burda, Grosse & Salakhutdinov 2015, section 5): stage i = 0, 1, 2, ... lasts 3^i epochs at
  ``train.lr * 10^(-i/7)``. Their 3,280 epochs are stages 0..7; 364 epochs are stages 0..5.
"""

from __future__ import annotations

from typing import Literal

KLSchedule = Literal["constant", "linear", "cyclical"]
LRSchedule = Literal["constant", "burda"]


def kl_factor(schedule: str, step: int, steps: int, ramp: float = 0.5) -> float:
    """The KL-weight factor in (0, 1] at 0-based optimization ``step``."""
    if schedule == "constant" or steps <= 0:
        return 1.0
    # Counted from step + 1: the first step already has a small positive weight (Pyro's
    # poutine.scale needs scale > 0), and step ``steps - 1`` of a warm-up reaches 1.
    if schedule == "linear":
        return min(1.0, (step + 1) / steps)
    if schedule == "cyclical":
        pos = step % steps + 1  # 1..steps within the current cycle
        return 1.0 if ramp <= 0 else min(1.0, pos / (ramp * steps))
    raise ValueError(f"train.kl_schedule: unknown schedule {schedule!r}; valid: constant, linear, cyclical")


def burda_stage(epoch: int) -> int:
    """The 0-based stage i of 1-based ``epoch`` in Burda et al.'s schedule (stage i lasts 3^i epochs)."""
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1, got {epoch}")
    stage, end = 0, 1  # stage 0 covers epoch 1; stage i ends at epoch (3^(i+1) - 1) / 2
    while epoch > end:
        stage += 1
        end += 3**stage
    return stage


def lr_factor(schedule: str, epoch: int) -> float:
    """The factor multiplying ``train.lr`` during 1-based ``epoch``."""
    if schedule == "constant":
        return 1.0
    if schedule == "burda":
        return 10.0 ** (-burda_stage(epoch) / 7.0)
    raise ValueError(f"train.lr_schedule: unknown schedule {schedule!r}; valid: constant, burda")


__all__ = ["KLSchedule", "LRSchedule", "burda_stage", "kl_factor", "lr_factor"]
