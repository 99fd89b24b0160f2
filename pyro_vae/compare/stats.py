"""Statistics of a comparison's records: per-estimator means over seeds, standard errors, paired differences.

Pure functions of the JSON-able records :func:`pyro_vae.compare.run.run_job` returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def mean(xs: Sequence[float | None]) -> float:
    """The average; ``None`` (a quantity the model does not have) and an empty list give NaN."""
    vals = [float("nan") if v is None else v for v in xs]
    return sum(vals) / len(vals) if vals else float("nan")


def standard_error(xs: Sequence[float]) -> float:
    """Standard error of the mean, ``sd / sqrt(n)`` with the n - 1 sample variance; NaN below 2 values."""
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1) / len(xs))


def reported_value(test: Mapping[str, Any], q: str) -> float:
    """``elbo`` or ``kl`` of an eval.json-style record; for a point-mass guide the point score or
    prior penalty that stand in their place (see :meth:`pyro_vae.evaluation.Measure.fields`)."""
    v = test.get(q)
    if v is None:
        v = test.get({"elbo": "point_score", "kl": "prior_penalty"}.get(q, q))
    return float("nan") if v is None else float(v)


def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-estimator means over seeds (in first-appearance order) and mean curves; pure."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["label"], []).append(r)
    rows, curves = [], {}
    for lab, rs in groups.items():
        ll = [r["test"]["log_likelihood"] for r in rs]
        rows.append(
            {
                "estimator": lab,
                "seeds": [r["seed"] for r in rs],
                "epochs": mean([r["epochs"] for r in rs]),
                "measure": rs[0]["test"].get("measure", "log_likelihood"),
                "test_elbo": mean([reported_value(r["test"], "elbo") for r in rs]),
                "log_likelihood": mean(ll),
                "log_likelihood_se_seeds": standard_error(ll),
                "log_likelihood_se_points": mean([r["test"]["log_likelihood_stderr"] for r in rs]),
                "kl": mean([reported_value(r["test"], "kl") for r in rs]),
                "reconstruction": mean([r["test"]["reconstruction"] for r in rs]),
                "active_units": mean([r["test"]["active_units"] for r in rs]),
                "seconds_per_epoch": mean([r["seconds_per_epoch"] for r in rs]),
                "eval_particles": rs[0]["test"]["num_particles"],
                "eval_points": rs[0]["test"]["n"],
            }
        )
        by_epoch: dict[int, list[dict[str, float]]] = {}
        for r in rs:
            for p in r["curve"]:
                by_epoch.setdefault(int(p["epoch"]), []).append(p)
        curves[lab] = [
            {"epoch": e, **{k: mean([p[k] for p in ps if k in p]) for k in ps[0] if k != "epoch"}}
            for e, ps in sorted(by_epoch.items())
        ]
    paired_differences(rows, groups)
    return {"estimators": rows, "curves": curves}


def paired_differences(rows: list[dict[str, Any]], groups: Mapping[str, list[dict[str, Any]]]) -> None:
    """Set ``ll_vs_first`` ± ``ll_vs_first_se`` in each row: L_K minus the first estimator's, point by point.

    Every estimator is scored on the same test points, so most of the across-point spread is common to
    all rows; the per-point differences (averaged over the seeds both have) have a much smaller SE.
    """
    labels = list(groups)
    ref = {r["seed"]: r["test"].get("point_log_likelihoods") for r in groups[labels[0]]}
    for row, lab in zip(rows, labels):
        diffs: list[list[float]] = []
        for r in groups[lab]:
            a, b = r["test"].get("point_log_likelihoods"), ref.get(r["seed"])
            if a is not None and b is not None and len(a) == len(b):
                diffs.append([u - v for u, v in zip(a, b)])
        if not diffs or len({len(d) for d in diffs}) != 1:
            row["ll_vs_first"] = row["ll_vs_first_se"] = float("nan")
            continue
        per_point = [sum(col) / len(col) for col in zip(*diffs)]  # mean over seeds, per test point
        row["ll_vs_first"] = mean(per_point)
        row["ll_vs_first_se"] = standard_error(per_point) if lab != labels[0] else 0.0


__all__ = ["aggregate", "mean", "paired_differences", "reported_value", "standard_error"]
