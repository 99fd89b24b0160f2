"""Components from outside the package: a user's own prior, guide, likelihood, network, estimator or dataset.

A plugin is a Python module whose import registers components with the public decorator, exactly as
the built-ins do::

    # mypkg/priors.py
    import pyro.distributions as dist, torch
    from pyro_vae import register
    from pyro_vae.models import Prior

    @register("prior", "laplace", context=("latent_dim",))
    class LaplacePrior(Prior):
        def __init__(self, *, latent_dim: int, scale: float = 1.0) -> None:
            super().__init__()
            self.register_buffer("scale", torch.full((latent_dim,), scale))

        def forward(self):
            return dist.Laplace(torch.zeros_like(self.scale), self.scale).to_event(1)

Three ways to bring it in, all imported before a spec's components are resolved:

- the spec's ``plugins: [mypkg.priors]`` (kept in the run's ``config.yaml``, so ``evaluate``, ``train
  --resume``, ``compare`` and ``diagnose`` import it again);
- ``--plugin mypkg.priors`` on any command (repeatable; recorded in every spec the command resolves);
- an installed distribution's entry point in the group ``pyro_vae.components``
  (:data:`~pyro_vae.registry.ENTRY_POINT_GROUP`), found with :func:`importlib.metadata.entry_points`
  at the registry's first lookup, once. Its value names a module (imported) or a function (called
  with no arguments)::

      [project.entry-points."pyro_vae.components"]
      mypkg = "mypkg.priors"

A module is imported by name from ``sys.path``, with the current directory searched last (the
``pyro-vae`` console script's own path lacks it). A plugin that fails to import is one
:class:`PluginError` line (exit code 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from .errors import SpecError, brief
from .registry import ENTRY_POINT_GROUP, REGISTRY, PluginError

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")

#: Modules named by ``--plugin`` in this process, in order: every spec resolved here records them.
_requested: list[str] = []


def check_names(value: Any, key: str = "plugins") -> list[str]:
    """``value`` as a list of dotted module names, or :class:`~pyro_vae.errors.SpecError` naming the bad one."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"{key}: {brief(value)} is not valid; expected a list of module names (e.g. [mypkg.priors])")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise SpecError(f"{key}[{i}]: {brief(name)} is not a module name (dotted identifiers, e.g. mypkg.priors)")
    return list(dict.fromkeys(value))  # each once, first mention first


def import_module(name: str, how: str) -> ModuleType:
    """Import ``name`` (the working directory searched last); any failure is one :class:`PluginError` line."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # the console script's sys.path[0] is its bin folder, not the working directory
    try:
        with REGISTRY.source(f"module {name} ({how})"):  # what `pyro-vae components` shows
            return importlib.import_module(name)
    except PluginError:
        raise
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise PluginError(
                f"{how}: no module {name!r} on the Python path; install it, or run from its folder or add that "
                "folder to PYTHONPATH"
            ) from None
        raise PluginError(f"{how}: module {name!r} failed to import: {type(e).__name__}: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001  # anything its import raised (SyntaxError, a duplicate name, its own errors)
        raise PluginError(f"{how}: module {name!r} failed to import: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def load(names: Iterable[str], how: str = "plugins") -> list[str]:
    """Import each plugin module (after the built-ins); returns the names. ``how`` says who asked
    (``plugins``: the spec's key; ``--plugin``), in errors and in ``pyro-vae components``."""
    mods = check_names(list(names), how)
    REGISTRY._load()  # built-ins and entry points first: a clash then names the plugin's definition second
    for name in mods:
        import_module(name, how)
    return mods


def load_requested(names: Iterable[str] | None) -> None:
    """A command's ``--plugin`` modules: imported now and recorded in every spec it resolves (they
    replace an earlier command's, when :func:`pyro_vae.cli.main` runs several in one process)."""
    _requested.clear()
    _requested[:] = load(names or [], "--plugin")


def requested() -> list[str]:
    """Modules named by ``--plugin`` in this process."""
    return list(_requested)


def resolve(spec_plugins: Any) -> list[str]:
    """The ``plugins`` of a resolved spec: the spec's own, then this process's ``--plugin`` modules;
    each imported before the spec's components are looked up."""
    mods = load(check_names(spec_plugins))
    return mods + [m for m in _requested if m not in mods]


def add_argument(subparsers: argparse._SubParsersAction[Any]) -> None:  # type: ignore[name-defined]
    """``--plugin MODULE`` (repeatable) on every command of ``subparsers``."""
    for parser in dict.fromkeys(subparsers.choices.values()):
        parser.add_argument(
            "--plugin", action="append", default=None, metavar="MODULE",
            help="import MODULE first: its @pyro_vae.register components become usable (repeatable)",
        )  # fmt: skip


def load_args(args: argparse.Namespace) -> None:
    """Import the ``--plugin`` modules a parsed command line names."""
    load_requested(getattr(args, "plugin", None))


__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "add_argument",
    "check_names",
    "import_module",
    "load",
    "load_args",
    "requested",
    "resolve",
]
