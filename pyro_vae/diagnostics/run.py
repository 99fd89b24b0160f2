"""Running the checks: :func:`run_diagnostics` on points of a model, :func:`diagnose` on a run directory.

The checks run in a fixed order on one seeded stream (``opts.seed``): scored subset, PSIS, NUTS
points, amortization-gap points, calibration; the same options give the same numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from .. import rundir
from .._typing import Tensor
from ..evaluation import resources
from ..evaluation.evaluate import measure_of
from ..rundir import lock as runlock
from ..training.signals import stage
from .density import check_guide, frozen
from .gap import amortization_gap, gap_positions
from .nuts import compare_draws, nuts_reference, over_dispersed_start
from .options import DiagnoseOptions
from .outputs import write_outputs
from .psis import guide_log_ratios, psis_summary, select_points
from .report import Diagnosis
from .sbc import run_sbc

#: The options a call without ``opts`` uses (the dataclass defaults).
DEFAULT_OPTIONS = DiagnoseOptions()


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """``seconds[key]``: the wall-clock time of the block."""
    t0 = time.perf_counter()
    yield
    seconds[key] = time.perf_counter() - t0


def run_diagnostics(
    vae: Any,
    x: Tensor,
    y: Tensor | None,
    opts: DiagnoseOptions = DEFAULT_OPTIONS,
    log: Callable[[str], None] = lambda s: None,
) -> Diagnosis:
    """All four checks on the points ``x`` (labels ``y`` for conditional models) of a trained ``vae``.

    ``vae`` needs ``.model`` (Pyro program ``model(x, cond)`` with sites ``z``, ``x``), ``.guide``
    (Pyro program with ``.dist(x, cond)``) and ``.cond(y)``, as :class:`pyro_vae.models.vae.VAE` has.
    """
    opts.check()
    pyro.set_rng_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    was_training = vae.training
    vae.eval()
    notes: list[str] = []
    seconds: dict[str, float] = {}
    n_all = len(x)
    if opts.points < n_all:
        index = torch.randperm(n_all, generator=gen)[: opts.points].sort().values
    else:
        index = torch.arange(n_all)
    xs = x[index.to(x.device)]
    ys = None if y is None else y[index.to(x.device)]
    check_guide(vae, xs, vae.cond(ys))
    measure = measure_of(vae, xs)  # what "ELBO" and "log p(x)" below are for this likelihood and data
    if measure.note():
        notes.append(f"bounds: {measure.note()}; 'ELBO', 'L_S' and 'log p(x)' here are that quantity")
    try:
        with frozen(vae):
            with _timed(seconds, "psis"):
                lr, draws = guide_log_ratios(vae, xs, ys, opts.samples, opts.row_budget)
                ps = psis_summary(lr)
            log(f"PSIS: {len(xs)} points x {opts.samples} draws in {seconds['psis']:.1f}s")

            chosen = select_points(ps["khat"], min(opts.nuts, len(xs)), gen)
            sel = [i for i, _ in chosen]
            nuts_points: list[dict[str, Any]] = []
            nuts_draws = []
            with _timed(seconds, "nuts"):
                for pos, why in chosen:
                    x1 = xs[pos : pos + 1]
                    c1 = vae.cond(None if ys is None else ys[pos : pos + 1])
                    g = draws[:, pos, :].double()
                    init = over_dispersed_start(g, opts.chains, gen).to(dtype=x1.dtype, device=x1.device)
                    res = nuts_reference(vae.model, x1, c1, init, opts.warmup, opts.draws, opts.max_rhat, opts.min_ess)
                    entry: dict[str, Any] = {
                        "index": int(index[pos]),
                        "position": pos,
                        "reason": why,
                        "khat": float(ps["khat"][pos]),
                        **res.summary(),
                    }
                    ref = res.draws.reshape(-1, res.draws.shape[-1])
                    entry["comparison"] = compare_draws(g.numpy(), ref) if res.passed else None
                    nuts_points.append(entry)
                    nuts_draws.append(res.draws)
                    log(
                        f"NUTS point #{entry['index']} ({why}, k-hat {entry['khat']:.2f}): {res.seconds:.1f}s, "
                        f"gate {'passed' if res.passed else 'FAILED: ' + '; '.join(res.gate_failures)}"
                    )

            gap = None
            gap_pos: list[int] = []
            if opts.gap_points > 0:
                gap_pos = gap_positions(sel, len(xs), opts.gap_points, gen)
                with _timed(seconds, "amortization_gap"):
                    gp = torch.tensor(gap_pos, device=xs.device)
                    yg = None if ys is None else ys[gp]
                    gap = amortization_gap(vae, xs[gp], yg, opts, draws[:, gap_pos, :].to(xs.device))
                if gap["local_family_note"] != "same family":
                    notes.append(f"amortization gap: {gap['local_family_note']}")
                log(f"amortization gap: {len(gap_pos)} points in {seconds['amortization_gap']:.1f}s")

            cal, pit = None, None
            if opts.sbc > 0:
                with _timed(seconds, "calibration"):
                    pit, cal = run_sbc(vae, xs, ys, opts.sbc, opts.sbc_draws, opts.alpha, gen)
                log(f"calibration: {opts.sbc} simulations in {seconds['calibration']:.1f}s")
    finally:
        vae.train(was_training)
    sel_np = np.array(sel, dtype=int)
    return Diagnosis(
        options=opts,
        index=index.numpy(),
        psis=ps,
        log_ratios=lr.numpy(),
        guide_draws=draws[:, sel_np, :].numpy() if len(sel) else np.zeros((opts.samples, 0, draws.shape[-1])),
        nuts_points=nuts_points,
        nuts_draws=np.stack(nuts_draws) if nuts_draws else None,
        gap=gap,
        gap_index=index.numpy()[np.array(gap_pos, dtype=int)] if gap_pos else np.zeros(0, dtype=int),
        calibration=cal,
        pit=pit,
        seconds=seconds,
        notes=notes,
        measure=measure.kind,
    )


@runlock.releases_locks
def _check_work(vae: Any, x: Tensor, opts: DiagnoseOptions, device: str) -> None:
    """Memory and time that the options ask for, refused up front when they cannot be had."""
    points = min(opts.points, len(x))
    latent = int(getattr(vae, "latent_dim", 0) or 1)
    event = int(np.prod(x.shape[1:]))
    resources.check_work(
        f"diagnose with --points {opts.points} --samples {opts.samples} --sbc {opts.sbc} --nuts {opts.nuts}",
        device,
        width=resources.layer_width(vae, tuple(x.shape[1:])),
        rows_per_call=max(opts.samples, min(opts.row_budget, points * opts.samples)),
        # PSIS draws and log ratios; simulated data and their q draws for calibration
        stored_elements=opts.samples * points * (latent + 1) + opts.sbc * (event + opts.sbc_draws * latent),
        seconds_at_least=min(opts.nuts, points)
        * opts.chains
        * (opts.warmup + opts.draws)
        * resources.STEP_SECONDS_AT_LEAST,
        fix="lower --samples, --points, --sbc, or --nuts/--chains/--warmup/--draws",
    )


def diagnose(
    run_dir: str | Path,
    opts: DiagnoseOptions = DEFAULT_OPTIONS,
    out: str | Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[Diagnosis, dict[str, Path]]:
    """``pyro-vae diagnose``: load a run, run every check, write the outputs, return (diagnosis, paths)."""
    opts.check()
    if out is not None:
        runlock.check_out_dir(
            out, what="output directory"
        )  # a file, a device, '' or too long: refused before any computing
    held = runlock.open_reader(run_dir, "diagnose")  # no writer may start on the run meanwhile
    run = rundir.load_run(run_dir, device=device)
    out_dir = Path(out) if out is not None else run.paths.root / "diagnostics"
    if runlock.is_inside(out_dir, run.paths.root):  # recorded in the run's own manifest
        owner, under = held, Path(os.path.relpath(os.path.realpath(out_dir), os.path.realpath(run.paths.root)))
    else:  # a folder of its own: new, empty or an earlier diagnosis; locked while this one runs
        owner, under = runlock.open_writer(out_dir, force=True, resume=False, command="diagnose"), Path()
    x, y = run.data.split(opts.split)
    _check_work(run.vae, x, opts, device)
    d = run_diagnostics(run.vae, x, y, opts, log=log)
    kept = (
        f"the files already written in {str(out_dir)!r} are whole (atomic writes); run diagnose again for all of them"
    )
    with stage("writing the diagnostics", kept):  # a signal while computing: nothing written (the CLI's stage)
        if under.as_posix() != ".":
            owner.clear(under=under.as_posix())  # the previous diagnosis written there (stale pair plots too)
        paths = write_outputs(d, out_dir, x, run.data.event_shape, run.vae, y, claim=owner.claim,
                              extra={"checkpoint": {"file": run.paths.checkpoint.name, "epoch": run.epoch}})  # fmt: skip
    return d, paths


__all__ = ["DEFAULT_OPTIONS", "diagnose", "run_diagnostics"]
