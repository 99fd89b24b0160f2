"""The IWAE table (Burda et al. 2015, Table 1, MNIST, one stochastic layer) with pyro-vae compare.

    PYRO_VAE_DATA=/path/to/data python experiments/iwae_mnist/run.py --schedule full --out runs/iwae-full
    PYRO_VAE_DATA=/path/to/data python experiments/iwae_mnist/run.py --schedule cpu  --out runs/iwae-cpu

``full`` is the paper's budget (3,280 epochs, L_5000 on all 10,000 test images); ``cpu`` is what
fits in ~25 CPU-minutes on this project's shared 2-core machine (see experiments/README.md).
The (estimator, seed) jobs of :func:`pyro_vae.compare.plan` run in a pool of ``--workers``
processes (one torch thread each); :func:`pyro_vae.compare.write_report` aggregates them.
``pyro-vae compare`` runs the same jobs one after another in a single process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SPEC = HERE / "iwae_mnist.yaml"
#: Paper rows: VAE (Trace ELBO with k draws) and IWAE at k = 1, 5, 50; plus DReG (same bound as IWAE).
ESTIMATORS = [
    "trace:num_particles=1",
    "trace:num_particles=5",
    "trace:num_particles=50",
    "iwae:num_particles=1",
    "iwae:num_particles=5",
    "iwae:num_particles=50",
    "dreg:num_particles=5",
    "dreg:num_particles=50",
]
SCHEDULES = {
    # the paper's budget; needs a GPU (or days of CPU)
    "full": {
        "epochs": 3280,
        "limit": 0,
        "eval_points": 0,
        "curve_points": 1000,
        "snr_draws": 100,
        "snr_points": 100,
        "workers": 1,
        "skip": (),
    },
    # What fit on 2 CPU cores shared by ~8 jobs (load ~17): one pass over the first 20,000 training
    # images (the last 400 of them held out; 980 steps of 20), L_5000 on the first 100 test images.
    # iwae K=1 is skipped: it is the VAE K=1 objective exactly (same loss and gradient on the same draws).
    "cpu": {
        "epochs": 1,
        "limit": 20000,
        "eval_points": 100,
        "curve_points": 200,
        "snr_draws": 20,
        "snr_points": 20,
        "workers": 2,
        "skip": ("iwae:num_particles=1",),
    },
}


#: Burda et al. (2015), Table 1, MNIST, one stochastic layer, -log p(x) by L_5000 after 3,280 epochs.
PAPER = {("trace", 1): 86.76, ("trace", 5): 86.47, ("trace", 50): 86.35,
         ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}  # fmt: skip
NAMES = {"trace": "VAE", "iwae": "IWAE", "dreg": "IWAE-DReG"}


def _gain(r: dict) -> str:
    d = r.get("ll_vs_first", float("nan"))
    return "n/a" if math.isnan(d) else f"{d:.2f} ± {r['ll_vs_first_se']:.2f}"


def paper_table(doc: dict) -> str:
    """Markdown: our -L_5000 (and active units) beside the paper's, one row per (estimator, K)."""
    rows = [
        (
            "| model | k | paper: -log p(x), 3,280 epochs | ours: -L_5000 ± SE | ours: gain over the first row ± paired SE "
            "| ours: test -ELBO | KL | active units | epochs | images/epoch | s/epoch |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = {r["label"]: r for r in doc["runs"]}
    for r in doc["estimators"]:
        kind, k = r["estimator"].split(":")[0], _cost(r["estimator"])
        paper = PAPER.get((kind, k))
        cfg = yaml.safe_load((Path(runs[r["estimator"]]["run_dir"]) / "config.yaml").read_text())
        ntrain = (cfg["data"]["limit"] or 60000) - int(cfg["data"]["valid_size"])
        rows.append(
            f"| {NAMES.get(kind, kind)} | {k} | {'n/a' if paper is None else f'{paper:.2f}'} | "
            f"{-r['log_likelihood']:.2f} ± {r['log_likelihood_se_points']:.2f} | {_gain(r)} | {-r['test_elbo']:.2f} | "
            f"{r['kl']:.2f} | {r['active_units']:g} | {r['epochs']:g} | {ntrain} | {r['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def _cost(label: str) -> int:
    return int(label.rsplit("=", 1)[-1]) if "num_particles=" in label else 1


def _reevaluate(args: tuple) -> dict:
    rec, options = args
    import torch

    torch.set_num_threads(1)
    from pyro_vae.compare import evaluate_model
    from pyro_vae.rundir import load_run

    run = load_run(rec["run_dir"])
    t0 = time.perf_counter()
    return {**rec, "test": evaluate_model(run.vae, run.data, options), "eval_seconds": time.perf_counter() - t0}


def reevaluate(out: Path, workers: int) -> None:
    """Evaluate the saved runs of OUT again (same settings) and rewrite the report; keeps the gradients."""
    from dataclasses import fields

    from pyro_vae.compare import CompareOptions, write_report
    from pyro_vae.evaluation.gradients import GradientStats

    doc = json.loads((out / "compare.json").read_text())
    st = doc["settings"]
    options = CompareOptions(**{f.name: st[f.name] for f in fields(CompareOptions)})
    options = CompareOptions(**{**options.__dict__, "snr_particles": tuple(options.snr_particles)})
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(_reevaluate, [(r, options) for r in doc["runs"]]))
    write_report(out, runs, st, [GradientStats(**g) for g in doc["gradients"]])
    (out / "paper_table.md").write_text(paper_table(json.loads((out / "compare.json").read_text())))


def _work(args: tuple) -> dict:
    job, options = args
    import torch

    torch.set_num_threads(1)
    from pyro_vae.compare import run_job

    return run_job(job, options, force=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    p.add_argument("--out", default=None, help="output directory (default runs/iwae-mnist-SCHEDULE)")
    p.add_argument("--epochs", type=int, help="override the schedule's epochs")
    p.add_argument("--eval-points", type=int, help="override: first N test points for L_5000 (0: all)")
    p.add_argument("--limit", type=int, help="override: train on the first N training images (0: all)")
    p.add_argument("--workers", type=int, help="parallel training processes")
    p.add_argument("--estimators", help="comma list (default: the paper's rows plus DReG)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--table", metavar="OUT", help="only (re)write OUT/paper_table.md from OUT/compare.json")
    p.add_argument("--reevaluate", metavar="OUT", help="evaluate OUT's saved runs again and rewrite its report")
    a = p.parse_args(argv)
    if a.reevaluate:
        os.environ.setdefault("PYRO_VAE_DATA", str(HERE.parents[2] / "shared" / "data"))
        reevaluate(Path(a.reevaluate), a.workers or 2)
        print((Path(a.reevaluate) / "paper_table.md").read_text(), end="")
        return 0
    if a.table:
        doc = json.loads((Path(a.table) / "compare.json").read_text())
        (Path(a.table) / "paper_table.md").write_text(paper_table(doc))
        print(paper_table(doc), end="")
        return 0
    sched = dict(SCHEDULES[a.schedule])
    epochs = a.epochs if a.epochs is not None else sched["epochs"]
    eval_points = a.eval_points if a.eval_points is not None else sched["eval_points"]
    workers = a.workers or sched["workers"]
    limit = a.limit if a.limit is not None else sched["limit"]
    names = a.estimators.split(",") if a.estimators else [e for e in ESTIMATORS if e not in sched["skip"]]
    out = Path(a.out or f"runs/iwae-mnist-{a.schedule}")
    os.environ.setdefault("PYRO_VAE_DATA", str(HERE.parents[2] / "shared" / "data"))

    import torch

    torch.set_num_threads(1)
    from pyro_vae.compare import CompareOptions, measure_gradients, plan, report_settings, write_report

    options = CompareOptions(
        eval_particles=5000,
        eval_points=eval_points,
        curve_particles=100,
        curve_points=sched["curve_points"],
        snr_particles=(1, 10, 100),
        snr_draws=sched["snr_draws"],
        snr_points=sched["snr_points"],
    )
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = plan(str(SPEC), names, seeds, out, [f"train.epochs={epochs}", f"data.limit={limit}"], options)
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i].label))  # longest first
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    t0 = time.time()
    records: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {i: pool.submit(_work, (jobs[i], options)) for i in order}
        for i in order:
            rec = futures[i].result()
            records[i] = rec
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            t = rec["test"]
            print(
                f"[{time.time() - t0:6.0f}s] {rec['label']} seed {rec['seed']}: {rec['epochs']} epochs, "
                f"{rec['seconds_per_epoch']:.0f} s/epoch, L_5000 {t['log_likelihood']:.2f} "
                f"± {t['log_likelihood_stderr']:.2f} on {t['n']} test points (eval {rec['eval_seconds']:.0f} s)",
                flush=True,
            )
    ordered = [records[i] for i in range(len(jobs))]
    # gradient SNR at the parameters of the first job (VAE, K=1), for the estimator kinds compared
    kinds = list(dict.fromkeys(j.label.split(":")[0] for j in jobs))
    grads = measure_gradients(jobs[0], kinds, options)
    settings = {**report_settings(jobs, options, jobs[0]), "workers": workers}
    write_report(out, ordered, settings, grads)
    (out / "paper_table.md").write_text(paper_table(json.loads((out / "compare.json").read_text())))
    print(f"written: {out / 'compare.md'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.exit(main())
