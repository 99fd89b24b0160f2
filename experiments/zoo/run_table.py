"""Regenerate the component-zoo table of experiments/README.md.

Trains experiments/zoo/mnist_zoo.yaml once per prior (diagonal guide) and once per guide (standard
normal prior) with the same seed, network and schedule, then evaluates each on the same test points:
ELBO, L_K (importance-weighted log-likelihood bound) and active units.

    PYRO_VAE_DATA=/work/shared/data python experiments/zoo/run_table.py [--limit 20000] [--epochs 10] \
        [--test-points 2000] [--particles 1000] [--out runs/zoo]

Results go to OUT/results.json and a markdown table to OUT/table.md (and stdout). Runs that already
have a result are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pyro_vae import evaluate, fit
from pyro_vae.data import Dataset

HERE = Path(__file__).resolve().parent
SPEC = HERE / "mnist_zoo.yaml"

#: (row label, overrides): each changes one component of the base spec.
VARIANTS: list[tuple[str, list[str]]] = [
    ("prior standard_normal", []),
    ("prior learned_normal", ["model.prior={kind: learned_normal}"]),
    ("prior mixture (K=100)", ["model.prior={kind: mixture, num_components: 100}"]),
    ("prior vamp (K=100)", ["model.prior={kind: vamp, num_components: 100}"]),
    ("prior flow (2x affine AR)", ["model.prior={kind: flow, num_flows: 2, hidden: [100]}"]),
    # The same VampPrior with a linear KL warm-up over the first 1,000 of the 2,000 steps (Bowman et al.).
    ("prior vamp (K=100) + KL warm-up", ["model.prior={kind: vamp, num_components: 100}", "train.kl_schedule=linear"]),
    # The collapse is the tanh network's: the same pair with ReLU hidden units (everything else unchanged).
    ("relu prior standard_normal", ["model.network.activation=relu"]),
    ("relu prior vamp (K=100)", ["model.prior={kind: vamp, num_components: 100}", "model.network.activation=relu"]),
    ("guide full_rank", ["guide={kind: full_rank}"]),
    ("guide low_rank (r=2)", ["guide={kind: low_rank, rank: 2}"]),
    ("guide flow (2x cond. IAF)", ["guide={kind: flow, num_flows: 2, hidden: [100]}"]),
    ("guide delta (autoencoder)", ["guide={kind: delta}"]),
]


def _subset(ds: Dataset, n: int) -> Dataset:
    from dataclasses import replace

    return replace(ds, x_test=ds.x_test[:n], y_test=None if ds.y_test is None else ds.y_test[:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--limit", type=int, default=20000, help="training images (0: all 60,000)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--test-points", type=int, default=2000, help="first N test images for the evaluation")
    ap.add_argument("--particles", type=int, default=1000, help="K of the importance-weighted bound L_K")
    ap.add_argument("--out", default="runs/zoo")
    ap.add_argument("--only", default="", help="comma-separated row labels to run (default: all)")
    ap.add_argument("--render", nargs="+", metavar="RESULTS_JSON", help="only merge these results files into a table")
    a = ap.parse_args(argv)
    if a.render:  # sweeps split over processes (--only) write separate results.json files
        merged: dict[str, dict] = {}
        for f in a.render:
            merged.update(json.loads(Path(f).read_text()))
        print(render(merged), end="")
        return 0
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results: dict[str, dict] = json.loads(res_path.read_text()) if res_path.is_file() else {}
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    for label, overrides in VARIANTS:
        if label in results or (only and label not in only):
            continue
        sets = [*overrides, f"data.limit={a.limit}", f"train.epochs={a.epochs}", "train.progress=false"]
        t0 = time.perf_counter()
        run = fit(str(SPEC), overrides=sets, out=out / label.split(" (")[0].replace(" ", "_"), force=True)
        train_s = time.perf_counter() - t0
        torch.manual_seed(0)
        t1 = time.perf_counter()
        ev = evaluate(run.vae, _subset(run.data, a.test_points), "test", a.particles)
        results[label] = {
            "overrides": overrides,
            "test_elbo": ev.elbo,
            "log_likelihood": ev.log_likelihood,
            "log_likelihood_stderr": ev.log_likelihood_stderr,
            "kl": ev.kl,
            "reconstruction": ev.reconstruction,
            "active_units": ev.active_units,
            "particles": a.particles,
            "test_points": ev.n,
            "train_images": len(run.data.x_train),
            "epochs": a.epochs,
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(time.perf_counter() - t1, 1),
        }
        res_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{label}: {json.dumps(results[label])}", flush=True)
    table = render(results)
    (out / "table.md").write_text(table)
    print(table)
    return 0


def render(results: dict[str, dict]) -> str:
    rows = [
        "| variant | test ELBO | log p(x) >= L_K (± s.e.) | E[log p(x|z)] | KL | active units |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, _ in VARIANTS:
        r = results.get(label)
        if r is None:
            continue
        star = " *" if label.startswith("guide delta") else ""  # a point mass: not a bound
        rows.append(
            f"| {label} | {r['test_elbo']:.2f}{star} | {r['log_likelihood']:.2f} ± {r['log_likelihood_stderr']:.2f}{star}"
            f" | {r['reconstruction']:.2f} | {r['kl']:.2f}{star} | {r['active_units']} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
