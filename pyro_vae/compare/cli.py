"""The ``pyro-vae compare`` and ``pyro-vae gradients`` commands: their arguments and what they print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import SpecError
from ..evaluation import resources
from ..evaluation.gradients import gradient_stats, stats_table
from ..rundir import lock as runlock
from ..rundir.checkpoint import atomic_write_text
from .jobs import CompareOptions
from .run import compare


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


#: Largest file read to recognise an earlier ``gradients --out`` (its JSON is a few KB).
_OWN_JSON_BYTES = 1 << 20


def _is_gradients_json(path: Path) -> bool:
    """Whether ``path`` holds what ``pyro-vae gradients`` writes: a JSON list of gradient statistics."""
    try:
        if path.stat().st_size > _OWN_JSON_BYTES:
            return False
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    keys = {"estimator", "num_particles", "group", "snr", "checkpoint"}
    return isinstance(doc, list) and bool(doc) and all(isinstance(r, dict) and keys <= r.keys() for r in doc)


def _cmd_gradients(a: Any) -> int:
    ks = _ints(a.snr_particles, "--particles")
    if not ks or any(k < 1 for k in ks):
        raise SpecError(f"--particles {a.snr_particles!r}: give values >= 1, e.g. 1,10,100")
    if a.draws < 2:
        raise SpecError(f"--draws {a.draws}: must be >= 2")
    if a.out:
        # a folder, a device, an impossible place or a file it did not write: before any work
        runlock.check_out_file(a.out, own=_is_gradients_json, run_dir=a.run_dir)
    held = runlock.open_reader(a.run_dir, "gradients")  # no writer may start on the run meanwhile
    run = rundir.load_run(a.run_dir, device=a.device)
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
    atomic_write_text(out, json.dumps([{**s.to_dict(), "checkpoint": used} for s in stats], indent=2) + "\n")
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
    c.add_argument(
        "--resume", action="store_true", help="continue an interrupted comparison in --out, reusing finished jobs"
    )
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


__all__ = ["add_cli"]
