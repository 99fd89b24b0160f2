"""Handlers of the ``train``, ``evaluate``, ``sample``, ``diagnose`` and ``components`` commands: each takes
the parsed arguments, does the work through the library's public functions and returns the exit code."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..evaluation import resources
from ..rundir import lock as runlock


def train(a: argparse.Namespace) -> int:
    from ..training import fit

    res = fit(a.spec, overrides=a.set or [], out=a.out, resume=a.resume, force=a.force)
    s = res.summary
    from ..training.distributed import is_main

    if is_main():  # under torchrun, rank 0 alone reports
        print(train_report(s) + f"\nrun directory: {res.run_dir}")
    return 0


def train_report(s: Mapping[str, Any]) -> str:
    """The summary line, each number named as summary.json's ``labels`` name it (what it is)."""
    from ..evaluation.evaluate import Measure

    note = Measure.from_kind(s.get("measure", "log_likelihood")).note()
    labels: Mapping[str, str] = s.get("labels") or {"test_elbo": "ELBO", "test_log_likelihood": "log p(x) >= L_K"}
    keys = ("test_elbo", "test_point_score", "test_log_likelihood")
    shown = [f"test {labels[k]} {s[k]:.3f}" for k in keys if k in labels and s.get(k) is not None]
    return (
        f"done: {s['epochs']} epochs in {s['train_seconds']:.1f}s; {', '.join(shown)} (K={s['eval_particles']}) "
        "nats/point" + (f"\nnote: {note}" if note else "")
    )


def evaluate(a: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate
    from ..rundir import load_run

    held = runlock.open_reader(a.run_dir, "evaluate")  # no writer may start on the run until eval.json is written
    run = load_run(a.run_dir, device=a.device, which=a.checkpoint)
    x, y = run.data.split(a.split)
    n = min(a.points or len(x), len(x))
    if n * a.particles > resources.PROBE_ABOVE_ROWS:  # hours of work are announced, not started
        seconds, how = resources.estimate_eval_seconds(run.vae, x, y, a.particles, n)
        resources.check_duration(seconds, a.max_hours, f"evaluate --particles {a.particles}", how,
                                 "ask for fewer particles or points, or give --max-hours 0 to run it anyway")  # fmt: skip
        print(f"evaluating: about {resources.fmt_duration(seconds)} ({how})", flush=True)
    res = evaluate(run.vae, run.data, a.split, a.particles, points=a.points or 0, seed=a.seed)
    assert run.checkpoint_path is not None
    res = replace(res, checkpoint={"file": run.checkpoint_path.name, "epoch": run.epoch})
    res.save(held.claim(run.paths.eval))
    print(res.table())
    print(f"written: {run.paths.eval}")
    return 0


def sample(a: argparse.Namespace) -> int:
    import torch

    from ..errors import SpecError
    from ..plots import as_images, save_grid
    from ..plots.images import is_own_png
    from ..rundir import load_run

    if a.out is not None:
        # a folder, a device, an impossible place or a file it did not write: before any work
        runlock.check_out_file(a.out, own=is_own_png, run_dir=a.run_dir)
    held = runlock.open_reader(a.run_dir, "sample")
    run = load_run(a.run_dir, device=a.device, which=a.checkpoint)
    y = None
    if a.label is not None:
        if not run.data.num_classes or not getattr(run.vae, "num_classes", 0):  # a label-conditioned CVAE
            raise SpecError(f"--label {a.label}: this model is not conditional on a class label")
        if not 0 <= a.label < run.data.num_classes:
            raise SpecError(f"--label {a.label}: out of range; valid labels 0..{run.data.num_classes - 1}")
        y = torch.full((a.num,), a.label, dtype=torch.long, device=next(run.vae.parameters()).device)
    elif getattr(run.vae, "conditional", False) and not getattr(run.vae, "num_classes", 0):
        raise SpecError(
            "this CVAE is conditioned on a tensor (model.condition: tensor); sample it in Python: vae.sample(n, y)"
        )
    imgs = as_images(run.vae.sample(a.num, y), run.data.event_shape)
    if imgs is None:
        raise SpecError(f"data of shape {run.data.event_shape} cannot be drawn as images")
    out = Path(a.out or run.paths.figures / "samples_cli.png")
    if runlock.is_inside(out, run.paths.root):
        held.claim(out)  # recorded in the run's manifest
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    cols = min(a.num, 10)
    title = f"{a.num} samples" + ("" if y is None else f", label {a.label}") + f" (checkpoint epoch {run.epoch})"
    save_grid(imgs, -(-a.num // cols), cols, out, title=title)
    print(f"written: {out}")
    return 0


def diagnose(a: argparse.Namespace) -> int:
    from ..diagnostics import DiagnoseOptions, diagnose

    opts = DiagnoseOptions(
        points=a.points,
        samples=a.samples,
        nuts=a.nuts,
        chains=a.chains,
        warmup=a.warmup,
        draws=a.draws,
        gap_points=a.gap_points,
        sbc=a.sbc,
        split=a.split,
        seed=a.seed,
    )
    d, paths = diagnose(a.run_dir, opts, out=a.out, device=a.device, log=lambda s: print(s, flush=True))
    print(d.verdict())
    print(f"written: {paths['json']}, {paths['netcdf']}, figures in {paths['khat_png'].parent}")
    return 0


def components(a: argparse.Namespace) -> int:
    from ..components import listing

    print(listing(a.group), end="")
    return 0
