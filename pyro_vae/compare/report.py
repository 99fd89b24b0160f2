"""The comparison's report: ``compare.json`` (every number), ``compare.md`` (the table) and the figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..evaluation.evaluate import Measure
from ..evaluation.gradients import GradientStats, stats_table
from ..rundir.checkpoint import atomic_write_text
from .jobs import CompareOptions, Job, slug
from .plots import figures
from .stats import aggregate


def report_settings(jobs: Sequence[Job], options: CompareOptions, snr_job: Job | None = None) -> dict[str, Any]:
    """What compare.json/compare.md record about how the comparison was run."""
    base = jobs[0].config
    return {
        "name": base["name"].removesuffix("-" + slug(jobs[0].label)),
        "data": base["data"]["name"],
        "epochs": base["train"]["epochs"],
        "batch_size": base["train"]["batch_size"],
        "seeds": list(dict.fromkeys(j.seed for j in jobs)),
        "estimators": list(dict.fromkeys(j.label for j in jobs)),
        "snr_model": "" if snr_job is None else f"{snr_job.label} seed {snr_job.seed}",
        "torch_threads": torch.get_num_threads(),
        **asdict(options),
    }


def _fmt(v: float, nd: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _paired_cell(r: Mapping[str, Any]) -> str:
    d, se = r.get("ll_vs_first", float("nan")), r.get("ll_vs_first_se", float("nan"))
    return "n/a" if math.isnan(d) else f"{d:+.2f} ± {_fmt(se)}"


def markdown(summary: Mapping[str, Any], settings: Mapping[str, Any], gradients: Sequence[GradientStats] = ()) -> str:
    """``compare.md``: settings, one row per estimator, gradient statistics, figures."""
    k = settings["eval_particles"]
    rows = summary["estimators"]
    m = Measure.from_kind(rows[0].get("measure", "log_likelihood") if rows else "log_likelihood")
    bound = m.label("log_likelihood", k) or f"L_{k} (none: point-mass guide)"
    lines = [
        f"# Estimator comparison: {settings['name']}",
        "",
        f"data `{settings['data']}`, {settings['epochs']} epochs budget"
        + (f" (or {settings['budget_seconds']:g} s of training)" if settings.get("budget_seconds") else "")
        + f", seeds {settings['seeds']}; every model evaluated with L_{k} on "
        + (f"the first {settings['eval_points']} test points" if settings["eval_points"] else "the whole test split")
        + ". Nats per data point, higher is better except KL."
        + (f" Note: {m.note()}." if m.note() else ""),
        "",
        (
            f"| estimator | seeds | epochs | test {m.label('elbo')} | {bound} | ± SE (seeds) | ± SE (test points) "
            f"| L_{k} minus first row ± paired SE | {m.label('kl')} | active units | s/epoch |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["estimators"]:
        lines.append(
            f"| {r['estimator']} | {len(r['seeds'])} | {r['epochs']:g} | {_fmt(r['test_elbo'])} | "
            f"{_fmt(r['log_likelihood'])} | {_fmt(r['log_likelihood_se_seeds'])} | "
            f"{_fmt(r['log_likelihood_se_points'])} | {_paired_cell(r)} | {_fmt(r['kl'])} | {r['active_units']:g} | "
            f"{_fmt(r['seconds_per_epoch'], 1)} |"
        )
    lines += ["", "![curves](figures/curves.png)", ""]
    if gradients:
        lines += [
            (
                f"## Gradient statistics ({settings['snr_draws']} draws, batch of {settings['snr_points']} "
                f"test points, at the parameters trained by `{settings['snr_model']}`)"
            ),
            "",
            (
                "SNR = |E g| / std g per coordinate, averaged over the group's coordinates "
                "(encoder: guide parameters; decoder: model parameters)."
            ),
            "",
            stats_table(gradients),
            "![gradient SNR](figures/gradient_snr.png)",
            "",
        ]
    return "\n".join(lines)


def write_report(
    out: str | Path,
    records: Sequence[dict[str, Any]],
    settings: Mapping[str, Any],
    gradients: Sequence[GradientStats] = (),
    claim: Callable[[Path], Path] | None = None,
) -> dict[str, Any]:
    """Aggregate ``records`` and write compare.json, compare.md and the figures into ``out``
    (``claim(path)`` is called on each file before it is written)."""
    out = Path(out)
    mark: Callable[[Path], Path] = claim or (lambda p: p)
    summary = aggregate(records)
    doc = {
        "settings": dict(settings),
        "estimators": summary["estimators"],
        "curves": summary["curves"],
        "gradients": [g.to_dict() for g in gradients],
        "runs": list(records),
    }
    figures(summary, gradients, out / "figures", claim)
    atomic_write_text(mark(out / "compare.json"), json.dumps(doc, indent=2) + "\n")
    atomic_write_text(mark(out / "compare.md"), markdown(summary, settings, gradients))
    return summary


__all__ = ["markdown", "report_settings", "write_report"]
