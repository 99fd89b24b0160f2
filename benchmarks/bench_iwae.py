"""IWAE scaling and evaluation throughput: time and peak memory, vectorized vs looped particles.

1. Training step (the ``fit`` path: fast-path IWAE + ``train_step``) at K = 1, 5, 50, 500, batch 20
   (Burda et al.'s batch size): ``vectorized`` draws all K particles in one (K, B) pass; ``looped`` runs K
   one-particle passes and takes the log-sum-exp of the stacked log-weights (same estimator).
2. Evaluation of L_K at K = 5000 (``evaluate.point_terms``, chunked to ``ROW_BUDGET`` decoder rows per
   pass) vs a loop over 5000 one-particle passes with a running log-sum-exp.
3. Throughput of L_5000 on MNIST test images, measured on ``--eval-points`` images and extrapolated
   linearly to the 10,000-image test set (labelled as such).

Every measurement runs in its own subprocess (reading a small MNIST slice the parent saved) so that its
peak resident memory (``VmHWM`` minus the resident size before the first step) is its own. The networks are freshly initialized (timing and
memory do not depend on the weights). Run: ``python benchmarks/bench_iwae.py --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST_ROOT, machine, write


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


def _peak_mb() -> float:
    """VmHWM: this process's peak resident size since exec or the last :func:`_reset_peak` (ru_maxrss
    would carry the parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return kb / 1024


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def child(args: argparse.Namespace) -> dict[str, Any]:
    from pyro_vae.estimators import fastpath, iwae_bound, log_terms
    from pyro_vae.evaluation import point_terms

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_step import spec

    from pyro_vae import spec as spec_mod
    from pyro_vae.models.vae import build_model
    from pyro_vae.registry import REGISTRY
    from pyro_vae.training.loop import make_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = spec({"kind": "iwae", "num_particles": args.K}, args.batch)
    vae = build_model(cfg, (1, 28, 28))
    data = torch.load(args.data, weights_only=True)  # a small MNIST slice saved by the parent
    if args.task == "train":
        xs = [data["train"][i : i + args.batch] for i in range(0, len(data["train"]), args.batch)]
        params = list(vae.parameters())
        opt = make_optimizer(params, spec_mod.train_config(cfg))
        fast = fastpath.accelerate(REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide))
        if args.mode == "vectorized":
            loss_fn = fast
        else:

            def loss_fn(x: torch.Tensor, cond: Any) -> torch.Tensor:
                lw = []
                for _ in range(args.K):
                    t = fastpath.particle_terms(vae.model, vae.guide, x, cond, 1)
                    lw.append(t.obs + t.latent)
                return -iwae_bound(torch.cat(lw, 0)).sum()

        _reset_peak()
        rss0 = _rss_mb()
        times, cpu = [], []
        for i in range(args.steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            fastpath.train_step(loss_fn, opt, params, xs[i % len(xs)], None, args.batch)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {"median_s": statistics.median(times[1:]), "median_cpu_s": statistics.median(cpu[1:]), "times_s": times,
                "peak_mb": _peak_mb() - rss0}  # fmt: skip
    x = data["test"][: args.points]
    vae.eval()
    point_terms(vae, x[:1], None, 2)  # warm-up: first-call initialization stays out of the timing
    log_terms(vae.model, vae.guide, (x[:1], None), {}, 1, scaled=False)
    _reset_peak()
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.mode == "vectorized":
        ll = point_terms(vae, x, None, args.K).log_likelihood
    else:
        with torch.no_grad():
            lse = torch.full((len(x),), -math.inf)
            for _ in range(args.K):
                lse = torch.logaddexp(
                    lse, log_terms(vae.model, vae.guide, (x, None), {}, 1, scaled=False).log_weight[0]
                )
            ll = lse - math.log(args.K)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": secs, "cpu_seconds": cpu, "seconds_per_point": secs / len(x), "peak_mb": _peak_mb() - rss0,
            "mean_L": float(ll.mean())}  # fmt: skip


def spawn(**kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(kw, {k: v for k, v in res.items() if k != "times_s"}, flush=True)
    return res


def markdown(args: Any, train: list[dict[str, Any]], ev: dict[str, Any], throughput: dict[str, Any]) -> str:
    tp = throughput
    md = [f"### IWAE training step, batch {args.batch} (median of {args.steps} steps; {max(2, args.steps // 2)} at K=500)\n",
          "| K | vectorized s/step (CPU s) | looped s/step (CPU s) | looped / vectorized (CPU) | vectorized peak MB | looped peak MB |",
          "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in train:
        v, lo = r["vectorized"], r["looped"]
        md.append(f"| {r['K']} | {v['median_s']:.4f} ({v['median_cpu_s']:.4f}) | {lo['median_s']:.4f} ({lo['median_cpu_s']:.4f}) | {lo['median_cpu_s'] / v['median_cpu_s']:.2f} | "
                  f"{v['peak_mb']:.0f} | {lo['peak_mb']:.0f} |")  # fmt: skip
    v, lo = ev["vectorized"], ev["looped"]
    md += ["", f"### Evaluation L_{args.eval_K} on {args.eval_compare_points} MNIST test images (no gradients)\n",
           "| particles | seconds | CPU seconds | s / image | peak MB |", "|---|---:|---:|---:|---:|",
           f"| vectorized, chunked (evaluate.point_terms) | {v['seconds']:.2f} | {v['cpu_seconds']:.2f} | {v['seconds_per_point']:.3f} | {v['peak_mb']:.0f} |",
           f"| looped (one particle per pass) | {lo['seconds']:.2f} | {lo['cpu_seconds']:.2f} | {lo['seconds_per_point']:.3f} | {lo['peak_mb']:.0f} |",
           "", f"### L_{args.eval_K} throughput\n",
           (f"Measured: {args.eval_points} MNIST test images in {tp['seconds']:.1f} s ({tp['seconds_per_point']:.3f} s/image). "
            f"(CPU time {tp['cpu_seconds']:.1f} s). **Extrapolated** (linear in images) to the 10,000 test images: "
            f"{throughput['extrapolated_10000_s']:.0f} s wall on this shared machine, "
            f"{throughput['extrapolated_10000_cpu_s']:.0f} CPU seconds, with {args.threads} thread(s).")]  # fmt: skip
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--task", default="train")
    ap.add_argument("--mode", default="vectorized")
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--Ks", default="1,5,50,500")
    ap.add_argument("--eval-K", type=int, default=5000)
    ap.add_argument("--eval-compare-points", type=int, default=20)
    ap.add_argument("--eval-points", type=int, default=200)
    ap.add_argument("--data", default="")
    ap.add_argument("--render", type=Path, help="re-write the markdown of an earlier JSON result (no timing)")
    args = ap.parse_args()
    if args.render:
        payload = json.loads(args.render.read_text())
        saved = argparse.Namespace(**payload["args"])
        md = markdown(saved, payload["train"], payload["eval"], payload["throughput"])
        write(args.render.parent, args.render.stem, payload, md, keep_load=True)
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    info = machine(args.threads)
    from pyro_vae import data as data_mod

    ds = data_mod.load({"name": "mnist", "root": MNIST_ROOT, "binarize": "static", "valid_size": 0}, "cpu")
    n_test = max(args.eval_points, args.eval_compare_points)
    data_file = args.out / "_mnist_slice.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"train": ds.x_train[:1024].clone(), "test": ds.x_test[:n_test].clone()}, data_file)
    args.data = str(data_file)
    train = []
    for K in (int(k) for k in args.Ks.split(",")):
        row: dict[str, Any] = {"K": K, "batch": args.batch}
        for mode in ("vectorized", "looped"):
            steps = args.steps if K < 500 else max(2, args.steps // 2)
            row[mode] = spawn(
                task="train", mode=mode, K=K, batch=args.batch, steps=steps, threads=args.threads, data=args.data
            )
        train.append(row)
    ev = {"K": args.eval_K, "points": args.eval_compare_points}
    for mode in ("vectorized", "looped"):
        ev[mode] = spawn(
            task="eval", mode=mode, K=args.eval_K, points=args.eval_compare_points, threads=args.threads, data=args.data
        )
    tp = spawn(
        task="eval", mode="vectorized", K=args.eval_K, points=args.eval_points, threads=args.threads, data=args.data
    )
    data_file.unlink()
    throughput = {"K": args.eval_K, "measured_points": args.eval_points, **tp,
                  "extrapolated_10000_s": tp["seconds_per_point"] * 10000,
                  "extrapolated_10000_cpu_s": tp["cpu_seconds"] / args.eval_points * 10000}  # fmt: skip
    write(args.out, "iwae", {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                             "train": train, "eval": ev, "throughput": throughput}, markdown(args, train, ev, throughput))  # fmt: skip


if __name__ == "__main__":
    main()
