"""The console script ``pyro-vae`` (``pyro_vae.cli:main``). Exit codes: 0 success, 2 bad usage/spec/data/run,
1 anything unexpected, 130/143 interrupted by SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import plugins
from ..errors import PyroVAEError
from ..rundir import lock as runlock
from ..training import signals
from ..training.signals import Interrupted
from .checks import check_args
from .parser import build_parser

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
        signals.exit_at_once_on_second_signal()
    func: Callable[[argparse.Namespace], int] = a.func
    try:
        # a signal stops any stage within a second or two and says what was kept (pyro_vae/training/signals.py);
        # training and comparisons install their own, more specific guards inside this one
        with signals.stage(f"pyro-vae {a.command}", _KEPT_ON_SIGNAL.get(a.command, "nothing was written")):
            plugins.load_args(a)  # --plugin modules register their components before anything is resolved
            check_args(a)
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
