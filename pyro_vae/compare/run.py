"""Running a comparison: train and evaluate each job, measure gradients, resume an interrupted comparison.

:func:`run_job` runs one job (an ordinary run directory) and returns a JSON-able record; any pool of
processes can run them (:func:`~pyro_vae.compare.parallel.map_jobs` does on one machine).
:func:`compare` does everything in order: plan, refuse evaluations that would take days, run the jobs
(keeping each finished record in ``OUT/jobs/`` for ``--resume``), measure gradients, write the report.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import rundir
from ..errors import SpecError
from ..evaluation import resources
from ..evaluation.evaluate import Measure, point_terms, summarize
from ..evaluation.gradients import GradientStats, gradient_stats
from ..rundir import lock as runlock
from ..training.loop import fit
from ..training.signals import Interrupted, stage
from ..training.trackers import Tracking
from .jobs import CompareOptions, Job, plan, slug, snr_estimators
from .parallel import map_jobs
from .report import report_settings, write_report
from .stats import reported_value


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` did: its jobs, their records, the aggregated summary and gradient statistics."""

    out: Path
    jobs: list[Job]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    gradients: list[GradientStats] = field(default_factory=list)


#: The options a call without ``options`` uses (the dataclass defaults).
DEFAULT_OPTIONS = CompareOptions()


class _BudgetReached(Exception):
    """Raised at an epoch end past ``budget_seconds`` of training: the job stops there."""


def first_test_points(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` test points and their labels (``n`` = 0: the whole test split)."""
    x, y = data.split("test")
    if n > 0:
        x, y = x[:n], (None if y is None else y[:n])
    return x, y


def run_job(job: Job, options: CompareOptions = DEFAULT_OPTIONS, force: bool = False) -> dict[str, Any]:
    """Train one job (an ordinary run directory) and evaluate it; returns a JSON-able record."""
    curve: list[dict[str, float]] = []
    spent = [0.0]
    test: list[Any] = []  # (x, y) for the curve, loaded on the first epoch end

    def on_epoch_end(record: dict[str, Any], vae: Any) -> None:
        point = {"epoch": record["epoch"], "test_elbo": record.get("test_elbo", float("nan"))}
        if options.curve_particles > 0:
            if not test:
                from ..data import load

                test.extend(
                    first_test_points(load(job.config["data"], next(vae.parameters()).device), options.curve_points)
                )
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
        tracking = Tracking(
            job.config["name"].removesuffix(f"-{slug(job.label)}"), {"estimator": job.label, "seed": str(job.seed)}
        )
        done = fit(
            job.config, out=job.run_dir, force=force, callbacks={"on_epoch_end": [on_epoch_end]}, tracking=tracking
        )
        vae, data, history = done.vae, done.data, done.history
    except _BudgetReached:  # stopped after an epoch's checkpoint: evaluate what it saved
        stopped = True
        run = rundir.load_run(job.run_dir)
        vae, data, history = run.vae, run.data, rundir.read_metrics(run.paths.metrics)
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


def evaluate_model(vae: Any, data: Any, options: CompareOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """The comparison's evaluation of one trained model: L_K etc. on the (first N) test points.

    Besides :class:`~pyro_vae.evaluation.EvalResult`'s fields, ``point_log_likelihoods`` keeps the
    per-point L_K values, so that estimators can be compared point by point (paired differences).
    """
    x, y = first_test_points(data, options.eval_points)
    terms = point_terms(vae, x, y, options.eval_particles)
    out = summarize(terms, "test", options.eval_particles).to_dict()
    out["point_log_likelihoods"] = [round(float(v), 4) for v in terms.log_likelihood]
    return out


def measure_gradients(job: Job, estimators: Sequence[str], options: CompareOptions) -> list[GradientStats]:
    """:func:`gradient_stats` at the parameters ``job`` trained, on its first test points."""
    run = rundir.load_run(job.run_dir)
    run.vae.set_kl_weight(job.config["elbo"]["beta"])
    x, y = first_test_points(run.data, options.snr_points)
    return gradient_stats(run.vae, x, estimators, options.snr_particles, options.snr_draws, y=y)


@runlock.releases_locks
def compare(
    spec: Any = None,
    estimators: Sequence[str | Mapping[str, Any]] = ("trace", "iwae", "dreg"),
    *,
    seeds: Sequence[int] = (0,),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    options: CompareOptions = DEFAULT_OPTIONS,
    force: bool = False,
    log: Any = None,
    workers: int = 1,
    resume: bool = False,
) -> CompareResult:
    """Train every (estimator, seed), evaluate each with the same L_K, measure gradients, report.

    ``log``: a callable taking one line of progress (the CLI passes ``print``). ``workers`` > 1
    runs the jobs in that many processes (:func:`~pyro_vae.compare.parallel.map_jobs`; a GPU each when there are several):
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
                f"{rec['seconds_per_epoch']:.1f} s/epoch; test {m.label('elbo')} {reported_value(t, 'elbo'):.3f}{bound}"
            )

    def keep(i: int, job: Job, rec: dict[str, Any]) -> None:  # as each job ends: --resume reuses it
        owner.write_text(_job_record_path(job), json.dumps({"config": job.config, "options": asdict(options),
                                                            "record": rec}) + "\n")  # fmt: skip
        finished[jobs.index(job)] = rec
        progress(jobs.index(job), job, rec)

    todo = [j for i, j in enumerate(jobs) if i not in finished]
    if log is not None and finished:
        log(f"--resume: {len(finished)} of {len(jobs)} jobs already finished in {str(out)!r}; running {len(todo)}")
    try:
        # unfinished jobs of an interrupted comparison start over in their own (tool-made) run directories
        map_jobs(run_job, todo, options, workers=workers, on_result=keep, force=force or resume)
        records = [finished[i] for i in range(len(jobs))]
        with stage("the comparison's gradient statistics and report", _kept_jobs(out, len(jobs), len(jobs))):
            grads = measure_gradients(jobs[0], snr_estimators(jobs), options) if options.snr_particles else []
            settings = report_settings(jobs, options, snr_job=jobs[0])
            summary = write_report(out, records, settings, grads, claim=owner.claim)
    except Interrupted as e:
        name = signal.Signals(e.signum).name if e.signum else "a signal"
        raise Interrupted(
            e.signum, message=f"stopped by {name} during the comparison; {_kept_jobs(out, len(finished), len(jobs))}"
        ) from None
    return CompareResult(out, jobs, records, summary, grads)


def _check_evaluation_time(jobs: Sequence[Job], options: CompareOptions) -> None:
    """Every job's L_K evaluation and per-epoch curve, timed on one chunk of an untrained model first:
    days of evaluation are refused before any training."""
    from ..data import load
    from ..evaluation.evaluate import ROW_BUDGET
    from ..models.vae import build_model

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
    x, y = first_test_points(data, options.eval_points)
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
            continue  # never finished (or not a whole JSON record): run it
        if isinstance(doc, dict) and same(doc.get("config"), job.config) and same(doc.get("options"), asdict(options)):
            done[i] = doc["record"]
    return done


__all__ = [
    "DEFAULT_OPTIONS",
    "CompareResult",
    "compare",
    "evaluate_model",
    "first_test_points",
    "measure_gradients",
    "run_job",
]
