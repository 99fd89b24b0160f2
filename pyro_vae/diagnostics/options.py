"""Settings of ``pyro-vae diagnose`` (:class:`DiagnoseOptions`), checked before any work."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..evaluation.evaluate import ROW_BUDGET


@dataclass(frozen=True)
class DiagnoseOptions:
    """Settings of ``pyro-vae diagnose`` (command-line flags in brackets)."""

    points: int = 500  # [--points] data points scored by PSIS (a seeded subset of the split; all if fewer)
    samples: int = 1000  # [--samples] S draws from q(z|x) per point for PSIS
    nuts: int = 3  # [--nuts] M points with a NUTS reference posterior (0: skip)
    chains: int = 4  # [--chains] NUTS chains per point
    warmup: int = 500  # [--warmup] NUTS warm-up iterations
    draws: int = 500  # [--draws] NUTS draws kept per chain
    max_rhat: float = 1.01  # gate: rank-normalized split R-hat of every coordinate
    min_ess: float = 400.0  # gate: bulk ESS (all chains together) of every coordinate
    gap_points: int = 20  # [--gap-points] points for the amortization gap (the NUTS points first; 0: skip)
    gap_steps: int = 500  # Adam steps of each per-point guide
    gap_lr: float = 0.02  # Adam, cosine-decayed to 1% over gap_steps
    gap_train_particles: int = 16
    gap_particles: int = 5000  # K of the IWAE-K log p(x) and of the final ELBO estimates
    sbc: int = 500  # [--sbc] simulations for calibration (0: skip)
    sbc_draws: int = 99  # L draws from q per simulation: ranks 0..L
    alpha: float = 0.01  # family-wise level of the uniformity and symmetry tests
    split: str = "test"  # [--split]
    seed: int = 0  # [--seed]
    row_budget: int = ROW_BUDGET  # decoder evaluations per forward pass (memory bound)

    def check(self) -> None:
        positive = (
            "points",
            "samples",
            "chains",
            "warmup",
            "draws",
            "gap_steps",
            "gap_train_particles",
            "gap_particles",
            "sbc_draws",
            "row_budget",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        for name in ("nuts", "gap_points", "sbc"):
            if getattr(self, name) < 0:
                raise SpecError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.samples < 20:
            raise SpecError(f"--samples {self.samples}: PSIS needs at least 20 draws per point (use >= 200)")
        if self.draws < 4:
            raise SpecError(f"--draws {self.draws}: R-hat needs at least 4 draws per chain")
        if self.split not in ("train", "valid", "test"):
            raise SpecError(f"--split {self.split!r}: valid choices: train, valid, test")


__all__ = ["DiagnoseOptions"]
