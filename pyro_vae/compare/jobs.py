"""The jobs of a comparison: one fully resolved spec per (estimator, seed), validated before any work."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import spec as spec_mod
from ..errors import SpecError
from ..evaluation.gradients import label as estimator_label
from ..evaluation.gradients import parse_estimator


@dataclass(frozen=True)
class CompareOptions:
    """How runs are evaluated and measured (the training budget lives in the spec's ``train:``)."""

    eval_particles: int = 5000  # K of the L_K bound every model is evaluated with (Burda et al.: 5000)
    eval_points: int = 0  # 0: the whole test split; N > 0: its first N points (cost is points * K)
    curve_particles: int = 100  # K of the per-epoch test log-likelihood curve; 0: test ELBO only
    curve_points: int = 500  # test points for that curve (first N)
    budget_seconds: float = 0.0  # > 0: also stop each run at the first epoch end past this training time
    train_particles: int = 0  # > 0: num_particles for every estimator that does not set its own
    snr_particles: tuple[int, ...] = (1, 10, 100)  # K values for gradient SNR; empty: skip
    snr_draws: int = 50  # gradient draws per (estimator, K)
    snr_points: int = 32  # test points in the batch whose gradient is measured


@dataclass(frozen=True)
class Job:
    """One training run of a comparison: a fully resolved spec and where it goes."""

    label: str  # the estimator as the user wrote it, e.g. "iwae:num_particles=5"
    seed: int
    config: dict[str, Any]  # resolved spec (elbo and seed set)
    run_dir: str


def slug(text: str) -> str:
    """``text`` as a file-name part: ``iwae:num_particles=5`` -> ``iwae-num_particles5``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace(":", "-").replace("=", "")).strip("_") or "estimator"


def plan(
    spec: Any,
    estimators: Sequence[str | Mapping[str, Any]],
    seeds: Sequence[int] = (0,),
    out: str | Path = "compare",
    overrides: Sequence[str] = (),
    options: CompareOptions = CompareOptions(),
) -> list[Job]:
    """The (estimator, seed) jobs, each a validated spec; raises :class:`SpecError` before any work.

    Jobs differ only in ``elbo``, ``seed`` and ``name``: the same seed gives the same initialization
    (the model is built right after seeding, before the estimator) and the same data order.
    """
    if not estimators:
        raise SpecError("--estimators: give at least one estimator, e.g. --estimators trace,iwae,dreg")
    if not seeds:
        raise SpecError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    if spec is None or isinstance(spec, (str, Path)):
        base = spec_mod.from_args(None if spec is None else str(spec), list(overrides))
    else:
        base = spec_mod.resolve(spec_mod.apply_overrides(dict(spec), list(overrides)))
    labels = [estimator_label(e) for e in estimators]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise SpecError(f"--estimators: {dupes[0]!r} is listed twice")
    if "mlflow" in base["train"]["log_to"] and base["train"]["mlflow_uri"] is None:  # one MLflow store for all jobs
        base = {**base, "train": {**base["train"], "mlflow_uri": (Path(out).resolve() / "mlruns").as_uri()}}
    jobs = []
    for item, lab in zip(estimators, labels):
        raw = parse_estimator(item)
        raw.setdefault("beta", base["elbo"]["beta"])  # the spec's KL weight, unless the estimator sets one
        if options.train_particles:
            raw.setdefault("num_particles", options.train_particles)
        elbo = spec_mod.resolve_component("elbo", raw, f"estimator {lab!r}")
        for seed in seeds:
            cfg = spec_mod.resolve({**base, "elbo": elbo, "seed": int(seed), "name": f"{base['name']}-{slug(lab)}"})
            jobs.append(Job(lab, int(seed), cfg, str(Path(out) / "runs" / f"{slug(lab)}-seed{seed}")))
    return jobs


def snr_estimators(jobs: Sequence[Job]) -> list[str]:
    """The jobs' estimators without ``num_particles`` (gradient statistics sweep K), deduplicated."""
    out = []
    for j in jobs:
        raw = parse_estimator(j.label)
        raw.pop("num_particles", None)
        out.append(estimator_label(raw))
    return list(dict.fromkeys(out))


__all__ = ["CompareOptions", "Job", "plan", "slug", "snr_estimators"]
