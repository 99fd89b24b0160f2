"""The ``pyro-vae`` argument parser: one sub-command per task, each bound to its handler.

``compare`` and ``gradients`` are registered by :func:`pyro_vae.compare.add_cli`, beside the code they run.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import plugins
from ..registry import GROUPS
from .commands import components, diagnose, evaluate, sample, train


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)  # stays one line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    t.set_defaults(func=train)

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
    e.set_defaults(func=evaluate)

    s = sub.add_parser("sample", help="draw samples from a trained run into a PNG")
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--label", type=int, default=None, help="class label (conditional models)")
    s.add_argument("--out", help="PNG path (default RUN_DIR/figures/samples_cli.png)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--checkpoint", choices=("last", "best"), default="last", help=_CHECKPOINT_HELP)
    s.set_defaults(func=sample)

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
    g.set_defaults(func=diagnose)

    c = sub.add_parser("components", help="list registered components and their parameters")
    c.add_argument("group", nargs="?", choices=list(GROUPS), metavar="KIND", help=f"one of: {', '.join(GROUPS)}")
    c.set_defaults(func=components)

    from ..compare import add_cli  # compare, gradients

    add_cli(sub)
    plugins.add_argument(sub)  # --plugin MODULE (repeatable) on every command
    return p
