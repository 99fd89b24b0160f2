"""Import paths of modules that moved into subpackages.

``import pyro_vae.OLD`` (and ``from pyro_vae.OLD import name``) still works for one release: the finder
below answers the old dotted name with the module at its new place (the same module object, so classes
and registrations are shared) and warns once with a ``DeprecationWarning`` naming the new path.
Nothing inside the package imports an old path (tests/test_layout.py checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old dotted name -> new dotted name (the module users imported before the subpackages existed)
MOVED: dict[str, str] = {
    # estimators/
    # training/
    # rundir/
    # data/
    # evaluation/
    # compare/, diagnostics/, plots/, cli/
    # models/
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds each old name of :data:`MOVED` and loads it as the module at the new name."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; the old import path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import system overwrites __spec__ with the old name's; restored below
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the module keeps its own identity (name, origin) for reload and pickling


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``pyro_vae/__init__.py``)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


__all__ = ["MOVED", "install"]
