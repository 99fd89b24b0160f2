"""The ``pyro-vae`` command line: :func:`main` is the console script (``pyro_vae.cli:main``).

- :mod:`~pyro_vae.cli.parser`: the argument parser (:func:`build_parser`);
- :mod:`~pyro_vae.cli.checks`: every argument checked before any work starts (:func:`check_args`);
- :mod:`~pyro_vae.cli.commands`: the handlers of ``train``, ``evaluate``, ``sample``, ``diagnose``, ``components``
  (``compare`` and ``gradients`` are :mod:`pyro_vae.compare`'s);
- :mod:`~pyro_vae.cli.entry`: :func:`main`, exit codes and signal handling.
"""

from .checks import MAX_SAMPLE_GRID, check_args
from .entry import main
from .parser import build_parser

__all__ = ["MAX_SAMPLE_GRID", "build_parser", "check_args", "main"]
