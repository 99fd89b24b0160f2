"""Compare ELBO estimators on equal footing: ``pyro-vae compare SPEC --estimators a,b,c``.

Every (estimator, seed) pair is one independent :class:`Job`: the same spec with only ``elbo``
(and ``seed``) changed, so jobs with the same seed start from the same initialization (the model is
built right after seeding, before the estimator) and see the same data order (the batch order
generator is seeded from ``seed``), with the same budget (``train.epochs``, optionally a wall-clock
limit). Every trained model is then evaluated with the same IWAE bound L_K on the test split.

The work is split so that it can be spread over processes (``pyro-vae`` distributed, or any pool):
:func:`plan` lists the jobs, :func:`run_job` runs one and returns a JSON-able record, and
:func:`aggregate` / :func:`write_report` are pure functions of the records. :func:`compare` does all
of it in one process.

Outputs in ``OUT``: ``runs/<estimator>-seed<N>/`` (ordinary run directories), ``compare.json``,
``compare.md`` and ``figures/{curves,gradient_snr}.png``.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, interrupt, resources, runlock
from . import spec as spec_mod
from .errors import SpecError
from .evaluate import Measure, point_terms, summarize
from .gradients import GradientStats, gradient_stats, parse_estimator, stats_table
from .gradients import label as estimator_label
from .rundir import load_run, read_metrics


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


@dataclass(frozen=True)
class CompareResult:
    out: Path
    jobs: list[Job]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    gradients: list[GradientStats] = field(default_factory=list)


class _BudgetReached(Exception):
    pass


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace(":", "-").replace("=", "")).strip("_") or "estimator"


def plan(
    spec: Any,
    estimators: Sequence[str | Mapping[str, Any]],
    seeds: Sequence[int] = (0,),
    out: str | Path = "compare",
    overrides: Sequence[str] = (),
    options: CompareOptions = CompareOptions(),
) -> list[Job]:
    """The (estimator, seed) jobs, each a validated spec; raises :class:`SpecError` before any work."""
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
            cfg = spec_mod.resolve({**base, "elbo": elbo, "seed": int(seed), "name": f"{base['name']}-{_slug(lab)}"})
            jobs.append(Job(lab, int(seed), cfg, str(Path(out) / "runs" / f"{_slug(lab)}-seed{seed}")))
    return jobs


def _test_subset(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, y = data.split("test")
    if n > 0:
        x, y = x[:n], (None if y is None else y[:n])
    return x, y


def run_job(job: Job, options: CompareOptions = CompareOptions(), force: bool = False) -> dict[str, Any]:
    """Train one job (an ordinary run directory) and evaluate it; returns a JSON-able record."""
    from .trackers import Tracking
    from .train import fit

    curve: list[dict[str, float]] = []
    spent = [0.0]
    test: list[Any] = []  # (x, y) for the curve, loaded on the first epoch end

    def on_epoch_end(record: dict[str, Any], vae: Any) -> None:
        point = {"epoch": record["epoch"], "test_elbo": record.get("test_elbo", float("nan"))}
        if options.curve_particles > 0:
            if not test:
                from .data import load

                test.extend(_test_subset(load(job.config["data"], next(vae.parameters()).device), options.curve_points))
            terms = point_terms(vae, test[0], test[1], options.curve_particles, means=False)  # L_K only
            point["test_log_likelihood"] = float(terms.log_likelihood.mean())
            vae.train()
        curve.append(point)
        spent[0] += record["seconds"]
        if options.budget_seconds > 0 and spent[0] >= options.budget_seconds:
            raise _BudgetReached

    stopped = False
    try:
        # train.log_to: one tracker run per job in the comparison's experiment, the estimator as a tag
        tracking = Tracking(job.config["name"].removesuffix(f"-{_slug(job.label)}"), {"estimator": job.label, "seed": str(job.seed)})
        done = fit(job.config, out=job.run_dir, force=force, callbacks={"on_epoch_end": [on_epoch_end]}, tracking=tracking)
        vae, data, history = done.vae, done.data, done.history
    except _BudgetReached:  # stopped after an epoch's checkpoint: evaluate what it saved
        stopped = True
        run = load_run(job.run_dir)
        vae, data, history = run.vae, run.data, read_metrics(run.paths.metrics)
    t0 = time.perf_counter()
    test_result = evaluate_model(vae, data, options)
    seconds = [r["seconds"] for r in history]
    return {
        "label": job.label,
        "seed": job.seed,
        "elbo": job.config["elbo"],
        "run_dir": job.run_dir,
        "epochs": len(history),
        "stopped_by_budget": stopped,
        "train_seconds": sum(seconds),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else float("nan"),
        "eval_seconds": time.perf_counter() - t0,
        "test": test_result,
        "curve": curve,
    }


def evaluate_model(vae: Any, data: Any, options: CompareOptions = CompareOptions()) -> dict[str, Any]:
    """The comparison's evaluation of one trained model: L_K etc. on the (first N) test points.

    Besides :class:`~pyro_vae.evaluate.EvalResult`'s fields, ``point_log_likelihoods`` keeps the
    per-point L_K values, so that estimators can be compared point by point (paired differences).
    """
    x, y = _test_subset(data, options.eval_points)
    terms = point_terms(vae, x, y, options.eval_particles)
    out = summarize(terms, "test", options.eval_particles).to_dict()
    out["point_log_likelihoods"] = [round(float(v), 4) for v in terms.log_likelihood]
    return out


def _mean(xs: Sequence[float | None]) -> float:
    vals = [float("nan") if v is None else v for v in xs]  # None: a quantity the model does not have
    return sum(vals) / len(vals) if vals else float("nan")


def _number(test: Mapping[str, Any], q: str) -> float:
    """``elbo`` or ``kl`` of an eval.json-style record; for a point-mass guide the point score or
    prior penalty that stand in their place (see :meth:`pyro_vae.evaluate.Measure.fields`)."""
    v = test.get(q)
    if v is None:
        v = test.get({"elbo": "point_score", "kl": "prior_penalty"}.get(q, q))
    return float("nan") if v is None else float(v)


def _se(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1) / len(xs))


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
                "epochs": _mean([r["epochs"] for r in rs]),
                "measure": rs[0]["test"].get("measure", "log_likelihood"),
                "test_elbo": _mean([_number(r["test"], "elbo") for r in rs]),
                "log_likelihood": _mean(ll),
                "log_likelihood_se_seeds": _se(ll),
                "log_likelihood_se_points": _mean([r["test"]["log_likelihood_stderr"] for r in rs]),
                "kl": _mean([_number(r["test"], "kl") for r in rs]),
                "reconstruction": _mean([r["test"]["reconstruction"] for r in rs]),
                "active_units": _mean([r["test"]["active_units"] for r in rs]),
                "seconds_per_epoch": _mean([r["seconds_per_epoch"] for r in rs]),
                "eval_particles": rs[0]["test"]["num_particles"],
                "eval_points": rs[0]["test"]["n"],
            }
        )
        by_epoch: dict[int, list[dict[str, float]]] = {}
        for r in rs:
            for p in r["curve"]:
                by_epoch.setdefault(int(p["epoch"]), []).append(p)
        curves[lab] = [
            {"epoch": e, **{k: _mean([p[k] for p in ps if k in p]) for k in ps[0] if k != "epoch"}}
            for e, ps in sorted(by_epoch.items())
        ]
    _paired(rows, groups)
    return {"estimators": rows, "curves": curves}


def _paired(rows: list[dict[str, Any]], groups: Mapping[str, list[dict[str, Any]]]) -> None:
    """``ll_vs_first`` ± ``ll_vs_first_se``: L_K minus the first estimator's, test point by test point.

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
        row["ll_vs_first"] = _mean(per_point)
        row["ll_vs_first_se"] = _se(per_point) if lab != labels[0] else 0.0


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


def figures(
    summary: Mapping[str, Any], gradients: Sequence[GradientStats], out: Path, claim: Callable[[Path], Path] | None = None
) -> list[Path]:
    """``curves.png`` (test log-likelihood and ELBO vs epoch) and ``gradient_snr.png`` (SNR vs K).

    ``claim(path)`` is called on each file before it is written (an output directory records it).
    """
    from matplotlib.ticker import MaxNLocator

    from .plots import plt

    if claim is None:
        out.mkdir(parents=True, exist_ok=True)
        claim = lambda p: p
    paths = []
    curves = summary["curves"]
    has_ll = any("test_log_likelihood" in p for c in curves.values() for p in c)
    fig, axes = plt.subplots(1, 2 if has_ll else 1, figsize=(11 if has_ll else 6, 3.8), squeeze=False)
    rows = summary.get("estimators") or [{}]
    m = Measure.from_kind(rows[0].get("measure", "log_likelihood"))
    panels = ([("test_log_likelihood", f"test {m.label('log_likelihood') or 'L_K (point score)'} (nats)")] if has_ll else []) + [
        ("test_elbo", f"test {m.label('elbo')}, 1 draw (nats)")
    ]
    for ax, (key, title) in zip(axes[0], panels):
        for i, (lab, c) in enumerate(curves.items()):
            pts = [(p["epoch"], p[key]) for p in c if key in p and not math.isnan(p[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=lab, color=f"C{i % 10}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        epochs = {p["epoch"] for c in curves.values() for p in c}
        if len(epochs) == 1:  # one point per estimator: keep the axis readable
            e = next(iter(epochs))
            ax.set_xlim(e - 0.5, e + 0.5)
            ax.set_xticks([e])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "curves.png")
    fig.savefig(claim(paths[-1]), dpi=110)
    plt.close(fig)
    if gradients:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        names = list(dict.fromkeys(g.estimator for g in gradients))
        for ax, group in zip(axes, ("encoder", "decoder")):
            for i, name in enumerate(names):
                pts = sorted(
                    (g.num_particles, g.snr)
                    for g in gradients
                    if g.estimator == name and g.group == group and g.snr > 0
                )
                if pts:  # estimators often share a group's gradient exactly: markers/dashes keep both visible
                    ax.plot(*zip(*pts), marker="osD^v<>ph*"[i % 10], ms=7 - i % 4, ls=("-", "--", ":")[i % 3],
                            label=name, color=f"C{i % 10}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("particles K")
            ax.set_title(f"{group} gradient SNR (|mean| / std)")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "gradient_snr.png")
        fig.savefig(claim(paths[-1]), dpi=110)
        plt.close(fig)
    return paths


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
    checkpoint.atomic_write_text(mark(out / "compare.json"), json.dumps(doc, indent=2) + "\n")
    checkpoint.atomic_write_text(mark(out / "compare.md"), markdown(summary, settings, gradients))
    return summary


def snr_estimators(jobs: Sequence[Job]) -> list[str]:
    """The jobs' estimators without ``num_particles`` (gradient statistics sweep K), deduplicated."""
    out = []
    for j in jobs:
        raw = parse_estimator(j.label)
        raw.pop("num_particles", None)
        out.append(estimator_label(raw))
    return list(dict.fromkeys(out))


def measure_gradients(job: Job, estimators: Sequence[str], options: CompareOptions) -> list[GradientStats]:
    """:func:`gradient_stats` at the parameters ``job`` trained, on its first test points."""
    run = load_run(job.run_dir)
    run.vae.set_kl_weight(job.config["elbo"]["beta"])
    x, y = _test_subset(run.data, options.snr_points)
    return gradient_stats(run.vae, x, estimators, options.snr_particles, options.snr_draws, y=y)


def report_settings(jobs: Sequence[Job], options: CompareOptions, snr_job: Job | None = None) -> dict[str, Any]:
    """What compare.json/compare.md record about how the comparison was run."""
    base = jobs[0].config
    return {
        "name": base["name"].removesuffix("-" + _slug(jobs[0].label)),
        "data": base["data"]["name"],
        "epochs": base["train"]["epochs"],
        "batch_size": base["train"]["batch_size"],
        "seeds": list(dict.fromkeys(j.seed for j in jobs)),
        "estimators": list(dict.fromkeys(j.label for j in jobs)),
        "snr_model": "" if snr_job is None else f"{snr_job.label} seed {snr_job.seed}",
        "torch_threads": torch.get_num_threads(),
        **asdict(options),
    }


@runlock.releases_locks
def compare(
    spec: Any = None,
    estimators: Sequence[str | Mapping[str, Any]] = ("trace", "iwae", "dreg"),
    *,
    seeds: Sequence[int] = (0,),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    options: CompareOptions = CompareOptions(),
    force: bool = False,
    log: Any = None,
    workers: int = 1,
    resume: bool = False,
) -> CompareResult:
    """Train every (estimator, seed), evaluate each with the same L_K, measure gradients, report.

    ``log``: a callable taking one line of progress (the CLI passes ``print``). ``workers`` > 1
    runs the jobs in that many processes (pyro_vae/parallel.py; a GPU each when there are several):
    the records come back in job order, so the report is the sequential one (timings aside).
    Each finished job's record is kept in ``OUT/jobs/``; ``resume=True`` continues an interrupted
    comparison in ``out``, reusing every job whose spec and options are unchanged and running the rest.
    """
    if resume and force:
        raise SpecError("--resume and --force: choose one (--resume keeps finished jobs, --force deletes them)")
    if out is None:
        out = Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out = runlock.check_out_dir(out, what="output directory")  # a file, a device, '' or too long: before any work
    jobs = plan(spec, estimators, seeds, out, overrides, options)
    _check_evaluation_time(jobs, options)
    # locked while the comparison runs; --force deletes what an earlier comparison wrote there, nothing else
    owner = runlock.open_writer(out, force=force, resume=resume, command="compare")
    for job in jobs:
        owner.add_run(Path(job.run_dir).relative_to(out))
    finished = _finished_jobs(out, jobs, options) if resume else {}

    def progress(i: int, job: Job, rec: dict[str, Any]) -> None:
        if log is not None:
            t = rec["test"]
            m = Measure.from_kind(t.get("measure", "log_likelihood"))
            bound = (
                f", {m.label('log_likelihood', t['num_particles'])} {t['log_likelihood']:.3f} ± "
                f"{t['log_likelihood_stderr']:.3f}"
                if t.get("log_likelihood") is not None
                else ""
            )
            log(
                f"[{i + 1}/{len(jobs)}] {job.label} seed {job.seed}: {rec['epochs']} epochs, "
                f"{rec['seconds_per_epoch']:.1f} s/epoch; test {m.label('elbo')} {_number(t, 'elbo'):.3f}{bound}"
            )

    def keep(i: int, job: Job, rec: dict[str, Any]) -> None:  # as each job ends: --resume reuses it
        owner.write_text(_job_record_path(job), json.dumps({"config": job.config, "options": asdict(options),
                                                            "record": rec}) + "\n")  # fmt: skip
        finished[jobs.index(job)] = rec
        progress(jobs.index(job), job, rec)

    from .parallel import map_jobs

    todo = [j for i, j in enumerate(jobs) if i not in finished]
    if log is not None and finished:
        log(f"--resume: {len(finished)} of {len(jobs)} jobs already finished in {str(out)!r}; running {len(todo)}")
    try:
        # unfinished jobs of an interrupted comparison start over in their own (tool-made) run directories
        map_jobs(run_job, todo, options, workers=workers, on_result=keep, force=force or resume)
        records = [finished[i] for i in range(len(jobs))]
        with interrupt.stage("the comparison's gradient statistics and report", _kept_jobs(out, len(jobs), len(jobs))):
            grads = measure_gradients(jobs[0], snr_estimators(jobs), options) if options.snr_particles else []
            settings = report_settings(jobs, options, snr_job=jobs[0])
            summary = write_report(out, records, settings, grads, claim=owner.claim)
    except interrupt.Interrupted as e:
        name = signal.Signals(e.signum).name if e.signum else "a signal"
        raise interrupt.Interrupted(
            e.signum, message=f"stopped by {name} during the comparison; {_kept_jobs(out, len(finished), len(jobs))}"
        ) from None
    return CompareResult(out, jobs, records, summary, grads)


def _check_evaluation_time(jobs: Sequence[Job], options: CompareOptions) -> None:
    """Every job's L_K evaluation and per-epoch curve, timed on one chunk of an untrained model first:
    days of evaluation are refused before any training."""
    from .data import load
    from .evaluate import ROW_BUDGET
    from .models.vae import build_model

    epochs = int(jobs[0].config["train"]["epochs"])
    guess = options.eval_particles * (options.eval_points or 1) + options.curve_particles * epochs
    if guess * len(jobs) <= resources.PROBE_ABOVE_ROWS:
        return
    cfg = jobs[0].config
    data = load(cfg["data"], "cpu")
    n = len(data.x_test) if not options.eval_points else min(options.eval_points, len(data.x_test))
    rows = options.eval_particles * n + options.curve_particles * min(options.curve_points, len(data.x_test)) * epochs
    if rows * len(jobs) <= resources.PROBE_ABOVE_ROWS:
        return
    vae = build_model(cfg, data.event_shape, data.num_classes)
    x, y = _test_subset(data, options.eval_points)
    k = min(options.eval_particles, ROW_BUDGET)
    seconds, _how = resources.estimate_eval_seconds(vae, x, y, k, min(len(x), max(1, ROW_BUDGET // k)))
    per_row = seconds / (k * min(len(x), max(1, ROW_BUDGET // k)))
    resources.check_duration(
        per_row * rows * len(jobs), resources.MAX_HOURS_WITHOUT_FLAG,
        f"the evaluations of {len(jobs)} jobs ({rows:,} rows each: --particles x test points, plus the curve)",
        f"{per_row * 1e6:.2f} us per row, timed on an untrained model",
        "lower --particles, --eval-points, --curve-particles or --curve-points",
    )  # fmt: skip


def _job_record_path(job: Job) -> str:
    return f"jobs/{Path(job.run_dir).name}.json"


def _kept_jobs(out: Path, done: int, total: int) -> str:
    return (
        f"{done} of {total} jobs finished and are kept in {str(out)!r}; the same command with --resume reuses them "
        "and runs the rest"
    )


def _finished_jobs(out: Path, jobs: Sequence[Job], options: CompareOptions) -> dict[int, dict[str, Any]]:
    """Records of jobs an earlier (interrupted) comparison in ``out`` finished with the same spec and options."""
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # tuples read back as lists
    done: dict[int, dict[str, Any]] = {}
    for i, job in enumerate(jobs):
        try:
            doc = json.loads((out / _job_record_path(job)).read_text())
        except (OSError, ValueError):
            continue  # never finished (or a torn file from an older version): run it
        if isinstance(doc, dict) and same(doc.get("config"), job.config) and same(doc.get("options"), asdict(options)):
            done[i] = doc["record"]
    return done


# --------------------------------------------------------------------------- command line


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SpecError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,10,100") from None
    if any(v < 0 for v in vals):
        raise SpecError(f"{flag} {text!r}: values must be >= 0")
    return vals


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise SpecError(f"--estimators {text!r}: give at least one, e.g. trace,iwae,dreg")
    return names


def _cmd_compare(a: Any) -> int:
    snr = () if a.no_snr else _ints(a.snr_particles, "--snr-particles")
    if any(k < 1 for k in snr):
        raise SpecError(f"--snr-particles {a.snr_particles!r}: values must be >= 1")
    opts = CompareOptions(
        eval_particles=a.particles,
        eval_points=a.eval_points,
        curve_particles=a.curve_particles,
        curve_points=a.curve_points,
        budget_seconds=a.budget_seconds,
        train_particles=a.train_particles,
        snr_particles=snr,
        snr_draws=a.snr_draws,
        snr_points=a.snr_points,
    )
    res = compare(
        a.spec,
        _names(a.estimators),
        seeds=_ints(a.seeds, "--seeds"),
        out=a.out,
        overrides=a.set or [],
        options=opts,
        force=a.force,
        log=print,
        workers=a.workers,
        resume=a.resume,
    )
    print((res.out / "compare.md").read_text(), end="")
    print(f"written: {res.out / 'compare.json'}, {res.out / 'compare.md'}, {res.out / 'figures'}")
    return 0


def _cmd_gradients(a: Any) -> int:
    ks = _ints(a.snr_particles, "--particles")
    if not ks or any(k < 1 for k in ks):
        raise SpecError(f"--particles {a.snr_particles!r}: give values >= 1, e.g. 1,10,100")
    if a.draws < 2:
        raise SpecError(f"--draws {a.draws}: must be >= 2")
    if a.out:
        runlock.check_out_file(a.out)  # a folder, a device or an impossible place: before any work
    held = runlock.open_reader(a.run_dir, "gradients")  # no writer may start on the run meanwhile
    run = load_run(a.run_dir, device=a.device)
    run.vae.set_kl_weight(run.config["elbo"]["beta"])
    x, y = run.data.split(a.split)
    x, y = x[: a.points], (None if y is None else y[: a.points])
    names = _names(a.estimators)
    params = sum(p.numel() for p in run.vae.parameters())
    resources.check_work(  # each draw: a forward and backward pass with K particles; every draw's gradient kept
        f"gradients with --particles {a.snr_particles} x --draws {a.draws} x --points {len(x)}",
        next(run.vae.parameters()).device,
        width=resources.layer_width(run.vae, run.data.event_shape),
        rows_per_call=max(ks) * len(x),
        stored_elements=a.draws * params,
        seconds_at_least=a.draws * len(ks) * len(names) * resources.STEP_SECONDS_AT_LEAST,
        fix="lower --particles, --draws or --points",
    )
    stats = gradient_stats(run.vae, x, names, ks, a.draws, y=y)
    print(stats_table(stats), end="")
    out = Path(a.out) if a.out else run.paths.root / "gradients.json"
    if runlock.is_inside(out, run.paths.root):
        held.claim(out)  # recorded in the run's manifest
    used = {"file": run.paths.checkpoint.name, "epoch": run.epoch}  # the parameters these statistics describe
    checkpoint.atomic_write_text(out, json.dumps([{**s.to_dict(), "checkpoint": used} for s in stats], indent=2) + "\n")
    print(f"written: {out}")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``compare`` and ``gradients`` on the ``pyro-vae`` subcommand parser."""
    c = sub.add_parser("compare", help="train several estimators on equal footing and compare them")
    c.add_argument("spec", nargs="?", help="YAML spec; omitted: the built-in default")
    c.add_argument("--estimators", required=True, help="comma list, options with ':', e.g. trace,iwae:num_particles=5")
    c.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    c.add_argument("--particles", type=int, default=5000, help="K of the L_K evaluation bound (default 5000)")
    c.add_argument("--eval-points", type=int, default=0, help="evaluate on the first N test points (0: all)")
    c.add_argument("--train-particles", type=int, default=0, help="num_particles for estimators that set none")
    c.add_argument("--budget-seconds", type=float, default=0.0, help="also stop each run after this training time")
    c.add_argument("--curve-particles", type=int, default=100, help="K of the per-epoch test L_K curve (0: off)")
    c.add_argument("--curve-points", type=int, default=500, help="test points for the per-epoch curve")
    c.add_argument("--snr-particles", default="1,10,100", help="K values for gradient SNR (default 1,10,100)")
    c.add_argument("--snr-draws", type=int, default=50, help="gradient draws per estimator and K")
    c.add_argument("--snr-points", type=int, default=32, help="test points in the measured batch")
    c.add_argument("--no-snr", action="store_true", help="skip gradient statistics")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec value for every run")
    c.add_argument("--out", help="output directory (default runs/compare-TIMESTAMP)")
    c.add_argument("--force", action="store_true", help="overwrite existing run directories")
    c.add_argument("--resume", action="store_true", help="continue an interrupted comparison in --out, reusing finished jobs")
    c.add_argument("--workers", type=int, default=1, help="run the jobs in N processes (default 1: sequential)")
    c.set_defaults(func=_cmd_compare)

    g = sub.add_parser("gradients", help="gradient mean, variance and SNR of estimators for a trained run")
    g.add_argument("run_dir")
    g.add_argument("--estimators", default="iwae,dreg", help="comma list (default iwae,dreg)")
    g.add_argument("--particles", dest="snr_particles", default="1,10,100", help="K values (default 1,10,100)")
    g.add_argument("--draws", type=int, default=100, help="gradient draws per estimator and K (default 100)")
    g.add_argument("--points", type=int, default=32, help="data points in the measured batch (default 32)")
    g.add_argument("--split", choices=("test", "valid", "train"), default="test")
    g.add_argument("--out", help="JSON path (default RUN_DIR/gradients.json)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.set_defaults(func=_cmd_gradients)


__all__ = [
    "CompareOptions",
    "CompareResult",
    "Job",
    "add_cli",
    "aggregate",
    "compare",
    "evaluate_model",
    "markdown",
    "measure_gradients",
    "plan",
    "report_settings",
    "run_job",
    "snr_estimators",
    "write_report",
]
