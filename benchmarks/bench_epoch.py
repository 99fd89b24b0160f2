"""Epoch time: one MNIST epoch (60,000 images less the validation split) of the MLP VAE 784-400-50 at batch 128.

Runs the real ``pyro_vae.training.loop.fit`` (spec below, ``train.epochs: 1``) with the fast path on and off,
alternating, ``--repeats`` times each, and reports the training seconds ``fit`` records per epoch
(``metrics.jsonl`` ``seconds``: the optimization steps only, not the per-epoch test ELBO).
On a GPU (``--device cuda``) the data live on the device and the running loss is read once per
epoch (``train.progress: false``). Run: ``python benchmarks/bench_epoch.py --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST_ROOT, machine, write

from pyro_vae.training.loop import fit


def spec(device: str, batch: int, elbo: str) -> dict[str, Any]:
    return {
        "name": "bench-epoch",
        "seed": 0,
        "data": {"name": "mnist", "root": MNIST_ROOT, "binarize": "dynamic"},
        "model": {"kind": "vae", "latent_dim": 50, "network": {"kind": "mlp", "hidden": [400], "activation": "relu"},
                  "prior": {"kind": "standard_normal"}, "likelihood": {"kind": "bernoulli"}},
        "guide": {"kind": "diagonal_normal"},
        "elbo": {"kind": elbo},
        "train": {"epochs": 1, "batch_size": batch, "lr": 1e-3, "device": device, "progress": False,
                  "figures": False, "eval_particles": 1},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--elbo", default="trace")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    runs: dict[str, list[dict[str, Any]]] = {"fast_path": [], "pyro_path": []}
    setup_cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fit(
            spec(args.device, args.batch, args.elbo), overrides=["train.epochs=0"], out=Path(tmp) / "warm-up"
        )  # first-call costs
        for name, on in (("fast_path", True), ("pyro_path", False)):  # the same run without its epoch
            c0 = time.process_time()
            fit(spec(args.device, args.batch, args.elbo), overrides=[f"train.fast_path={str(on).lower()}", "train.epochs=0"],
                out=Path(tmp) / f"{name}-setup")  # fmt: skip
            setup_cpu[name] = time.process_time() - c0
        for r in range(args.repeats):
            for name, on in (("fast_path", True), ("pyro_path", False)):
                c0 = time.process_time()
                res = fit(spec(args.device, args.batch, args.elbo), overrides=[f"train.fast_path={str(on).lower()}"],
                          out=Path(tmp) / f"{name}-{r}")  # fmt: skip
                cpu = time.process_time() - c0 - setup_cpu[name]
                rec = res.history[-1]
                steps = -(-len(res.data.x_train) // args.batch)
                runs[name].append({"seconds": rec["seconds"], "cpu_seconds": cpu, "train_loss": rec["train_loss"], "test_elbo": rec["test_elbo"],
                                   "images": len(res.data.x_train), "steps": steps})  # fmt: skip
                print(name, runs[name][-1], flush=True)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in runs.items()}
    n = runs["fast_path"][0]
    md = (
        f"One epoch = {n['images']} training images (MNIST train less the 10% validation split), "
        f"{n['steps']} steps of batch {args.batch}, elbo {args.elbo}, dynamic binarization, device {args.device}.\n\n"
        f"| path | epoch wall seconds (median of {args.repeats}) | epoch CPU seconds | steps per CPU-s | train loss | test ELBO |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {k} | {med[k]:.2f} | {med_cpu[k]:.2f} | {n['steps'] / med_cpu[k]:.1f} | {v[-1]['train_loss']:.2f} | {v[-1]['test_elbo']:.2f} |"
            for k, v in runs.items()
        )
        + f"\n\nfast path / Pyro path: {med_cpu['fast_path'] / med_cpu['pyro_path']:.3f} (CPU), "
        f"{med['fast_path'] / med['pyro_path']:.3f} (wall). Wall seconds are fit's own epoch timer (``metrics.jsonl``); "
        "CPU seconds are this process's CPU time for the whole fit minus that of the same fit with ``train.epochs: 0`` "
        "(so they include the epoch's 1-particle test/valid ELBO, about 16,000 encoder+decoder passes without gradients).\n"
    )
    write(args.out, f"epoch_{args.device}", {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                             "runs": runs, "setup_cpu_seconds": setup_cpu, "median_seconds": med,
                                             "median_cpu_seconds": med_cpu}, md)  # fmt: skip


if __name__ == "__main__":
    main()
