"""The ``pyro-vae`` command. Exit codes: 0 success, 2 bad usage/spec/data/run, 1 anything unexpected."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from . import interrupt, resources, runlock
from .errors import PyroVAEError, brief
from .interrupt import Interrupted
from .registry import GROUPS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)  # stays one line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _train(a: argparse.Namespace) -> int:
    from .train import fit

    res = fit(a.spec, overrides=a.set or [], out=a.out, resume=a.resume, force=a.force)
    s = res.summary
    from .distributed import is_main

    if is_main():  # under torchrun, rank 0 alone reports
        print(_train_report(s) + f"\nrun directory: {res.run_dir}")
    return 0


def _train_report(s: Mapping[str, Any]) -> str:
    """The summary line, each number named as summary.json's ``labels`` name it (what it is)."""
    from .evaluate import Measure

    note = Measure.from_kind(s.get("measure", "log_likelihood")).note()
    labels: Mapping[str, str] = s.get("labels") or {"test_elbo": "ELBO", "test_log_likelihood": "log p(x) >= L_K"}
    keys = ("test_elbo", "test_point_score", "test_log_likelihood")
    shown = [f"test {labels[k]} {s[k]:.3f}" for k in keys if k in labels and s.get(k) is not None]
    return (
        f"done: {s['epochs']} epochs in {s['train_seconds']:.1f}s; {', '.join(shown)} (K={s['eval_particles']}) "
        "nats/point" + (f"\nnote: {note}" if note else "")
    )


def _evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .rundir import load_run

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


def _sample(a: argparse.Namespace) -> int:
    import torch

    from .errors import SpecError
    from .plots import as_images, save_grid
    from .rundir import load_run

    if a.out is not None:
        runlock.check_out_file(a.out)  # a folder, a device or an impossible place: before any work
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
        raise SpecError("this CVAE is conditioned on a tensor (model.condition: tensor); sample it in Python: vae.sample(n, y)")
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


def _diagnose(a: argparse.Namespace) -> int:
    from .diagnostics import DiagnoseOptions, diagnose

    opts = DiagnoseOptions(
        points=a.points, samples=a.samples, nuts=a.nuts, chains=a.chains, warmup=a.warmup, draws=a.draws,
        gap_points=a.gap_points, sbc=a.sbc, split=a.split, seed=a.seed,
    )
    d, paths = diagnose(a.run_dir, opts, out=a.out, device=a.device, log=lambda s: print(s, flush=True))
    print(d.verdict())
    print(f"written: {paths['json']}, {paths['netcdf']}, figures in {paths['khat_png'].parent}")
    return 0


def _components(a: argparse.Namespace) -> int:
    from .components import listing

    print(listing(a.group), end="")
    return 0


_CHECKPOINT_HELP = "last: checkpoint.pt (the last epoch, default); best: best.pt (the best held-out bound)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyro-vae", description="Variational autoencoders as Pyro model/guide pairs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from a spec (default: the embedded digits VAE)")
    t.add_argument("spec", nargs="?", help="YAML spec; omitted: the built-in default")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec value (repeatable)")
    t.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="ELBO, L_K log-likelihood, KL, active units of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--particles", type=int, default=5000, help="K importance samples (default 5000)")
    e.add_argument("--split", choices=("test", "valid", "train"), default="test")
    e.add_argument("--points", type=int, default=None, help="score a random subset of N points (default: all)")
    e.add_argument("--seed", type=int, default=0, help="seeds the subset and the importance samples (default 0)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last", help=_CHECKPOINT_HELP)
    e.add_argument("--max-hours", type=float, default=1.0,
                   help="refuse when a timed probe estimates a longer run (default 1; 0: no limit)")  # fmt: skip
    e.set_defaults(func=_evaluate)

    s = sub.add_parser("sample", help="draw samples from a trained run into a PNG")
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--label", type=int, default=None, help="class label (conditional models)")
    s.add_argument("--out", help="PNG path (default RUN_DIR/figures/samples_cli.png)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--checkpoint", choices=("last", "best"), default="last", help=_CHECKPOINT_HELP)
    s.set_defaults(func=_sample)

    g = sub.add_parser("diagnose", help="posterior diagnostics: PSIS k-hat, NUTS reference, gaps, SBC (ArviZ)")
    g.add_argument("run_dir")
    g.add_argument("--points", type=int, default=500, help="data points scored by PSIS (default 500)")
    g.add_argument("--samples", type=int, default=1000, help="S draws from q(z|x) per point (default 1000)")
    g.add_argument("--nuts", type=int, default=3, help="M points with a NUTS reference posterior (default 3)")
    g.add_argument("--chains", type=int, default=4, help="NUTS chains per point (default 4)")
    g.add_argument("--warmup", type=int, default=500, help="NUTS warm-up iterations (default 500)")
    g.add_argument("--draws", type=int, default=500, help="NUTS draws per chain (default 500)")
    g.add_argument("--gap-points", type=int, default=20, help="points for the amortization gap (default 20)")
    g.add_argument("--sbc", type=int, default=500, help="calibration simulations (default 500; 0 skips)")
    g.add_argument("--split", choices=("test", "valid", "train"), default="test")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="output folder (default RUN_DIR/diagnostics)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    g.set_defaults(func=_diagnose)

    c = sub.add_parser("components", help="list registered components and their parameters")
    c.add_argument("group", nargs="?", choices=list(GROUPS), metavar="KIND", help=f"one of: {', '.join(GROUPS)}")
    c.set_defaults(func=_components)

    from .compare import add_cli  # compare, gradients

    add_cli(sub)
    return p


#: Integer options and their valid ranges (inclusive; None: unbounded), checked for every command that has them.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "particles": (1, None), "num": (1, None), "points": (1, None), "samples": (1, None), "chains": (1, None),
    "draws": (1, None), "nuts": (0, None), "warmup": (0, None), "gap_points": (0, None), "sbc": (0, None),
    "seed": (0, 2**32 - 1), "label": (0, None), "workers": (1, None), "eval_points": (0, None),
    "train_particles": (0, None), "curve_particles": (0, None), "curve_points": (1, None),
    "snr_draws": (2, None), "snr_points": (1, None),
}  # fmt: skip
#: Most samples drawn into one PNG grid (10 a row): matplotlib draws at most 2**16 pixels a side.
MAX_SAMPLE_GRID = 5000
#: Image formats ``sample --out`` can write (matplotlib's raster and vector formats).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff", ".webp", ".eps", ".ps", ".gif")


def _check_args(a: argparse.Namespace) -> None:
    """Every argument a command was given, checked in one place before any work starts: integer
    ranges, output paths (a file, a device, a missing or unwritable parent, a name too long) and
    output formats. Raises :class:`~pyro_vae.errors.SpecError` (exit 2, one line)."""
    import math

    from .errors import SpecError

    for name, (lo, hi) in _INT_RANGES.items():
        v = getattr(a, name, None)
        if isinstance(v, int) and not (lo <= v and (hi is None or v <= hi)):
            flag = "--" + name.replace("_", "-")
            raise SpecError(f"{flag} {v}: must be >= {lo}" if hi is None else f"{flag} {v}: must be in [{lo}, {hi}]")
    budget = getattr(a, "budget_seconds", None)
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise SpecError(f"--budget-seconds {budget}: must be a finite number >= 0")
    hours = getattr(a, "max_hours", None)
    if hours is not None and not (math.isfinite(hours) and hours >= 0):
        raise SpecError(f"--max-hours {hours}: must be a finite number >= 0 (0: no limit)")
    out = getattr(a, "out", None)
    if a.command == "sample":
        if a.num > MAX_SAMPLE_GRID:
            raise SpecError(
                f"--num {a.num}: at most {MAX_SAMPLE_GRID:,} samples fit in one image grid (matplotlib draws at "
                "most 65,536 pixels a side); draw them in Python with vae.sample(n) for more"
            )
        if out is not None and Path(out).suffix.lower() not in _IMAGE_SUFFIXES:
            raise SpecError(
                f"--out {brief(out)}: the file name must end in an image format ({', '.join(_IMAGE_SUFFIXES)})"
            )
    if a.command in ("sample", "gradients") and out is not None:
        if len(os.fsencode(Path(out).name)) > 255:  # before any stat of it, which would fail with ENAMETOOLONG
            raise SpecError(f"--out {brief(out)}: the file name is longer than 255 bytes")
        parent = runlock.check_out_file(out).parent
        if not runlock.is_inside(parent, a.run_dir):  # the run's own folders are made and recorded by the command
            try:  # the folder the user named, made now: a place where nothing can be created fails before any work
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SpecError(f"--out {brief(out)}: cannot create {brief(str(parent))}: {e.strerror or e}") from None
    elif a.command in ("train", "compare", "diagnose") and out is not None:
        runlock.check_out_dir(out)


#: What a signal leaves behind when it stops a command outside its own, more specific stages.
_KEPT_ON_SIGNAL = {
    "evaluate": "nothing was written; an earlier eval.json is unchanged",
    "diagnose": "no diagnostics were written",
    "gradients": "nothing was written; an earlier gradients.json is unchanged",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if argv is None:  # the command line itself (not a call from Python): a second signal ends the process
        interrupt.exit_at_once_on_second_signal()
    func: Callable[[argparse.Namespace], int] = a.func
    try:
        # a signal stops any stage within a second or two and says what was kept (pyro_vae/interrupt.py);
        # training and comparisons install their own, more specific guards inside this one
        with interrupt.stage(f"pyro-vae {a.command}", _KEPT_ON_SIGNAL.get(a.command, "nothing was written")):
            _check_args(a)
            return runlock.releases_locks(func)(a)  # run directory locks end with the command, however it ends
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM: 130 / 143, with what was kept and how to continue
        print(f"pyro-vae: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if not getattr(e, "announced", False):  # a second Ctrl-C has already said so
            print("pyro-vae: interrupted", file=sys.stderr)
        return 130




if __name__ == "__main__":
    from .distributed import exit_process  # under torchrun: leaves without the process group's C++ teardown

    exit_process(main())
