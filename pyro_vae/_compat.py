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
    "pyro_vae.fastpath": "pyro_vae.estimators.fastpath",
    "pyro_vae.free_bits": "pyro_vae.estimators.free_bits",
    "pyro_vae.divergences": "pyro_vae.estimators.divergences",
    # training/
    "pyro_vae.train": "pyro_vae.training.loop",
    "pyro_vae.schedules": "pyro_vae.training.schedules",
    "pyro_vae.nonfinite": "pyro_vae.training.nonfinite",
    "pyro_vae.interrupt": "pyro_vae.training.signals",
    "pyro_vae.distributed": "pyro_vae.training.distributed",
    "pyro_vae.progress": "pyro_vae.training.progress",
    "pyro_vae.trackers": "pyro_vae.training.trackers",
    # rundir/
    "pyro_vae.runlock": "pyro_vae.rundir.lock",
    "pyro_vae.checkpoint": "pyro_vae.rundir.checkpoint",
    # data/
    "pyro_vae.celeba": "pyro_vae.data.celeba",
    "pyro_vae.hf_data": "pyro_vae.data.hf",
    "pyro_vae.image_cache": "pyro_vae.data.image_cache",
    "pyro_vae.image_folder": "pyro_vae.data.image_folder",
    "pyro_vae.streaming": "pyro_vae.data.streaming",
    # evaluation/
    "pyro_vae.evaluate": "pyro_vae.evaluation.evaluate",
    "pyro_vae.gradients": "pyro_vae.evaluation.gradients",
    "pyro_vae.resources": "pyro_vae.evaluation.resources",
    # compare/, diagnostics/, plots/, cli/
    "pyro_vae.parallel": "pyro_vae.compare.parallel",
    "pyro_vae._arviz": "pyro_vae.diagnostics._arviz",
    "pyro_vae.plots_diagnostics": "pyro_vae.diagnostics.plots",
    # models/
    "pyro_vae.nets": "pyro_vae.models.nets",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds each old name of :data:`MOVED` and loads it as the module at the new name."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
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


class Package(ModuleType):
    """The class of the top-level package: importing an old path never replaces a function of the same name.

    After a submodule is imported, the import system binds it as an attribute of its parent. For an old
    path of :data:`MOVED` whose name is also a top-level function (``pyro_vae.evaluate``), that would turn
    ``pyro_vae.evaluate`` from the function into a module for everyone; this class keeps the function.
    """

    def __setattr__(self, name: str, value: object) -> None:
        current = self.__dict__.get(name)
        moved = f"{self.__name__}.{name}" in MOVED
        if moved and isinstance(value, ModuleType) and current is not None and not isinstance(current, ModuleType):
            return
        super().__setattr__(name, value)


class CallableModule(ModuleType):
    """A module that, for one release, can still be called as the function its name used to be.

    ``pyro_vae.compare`` was a function and is now the subpackage; ``pyro_vae.compare(...)`` warns with a
    ``DeprecationWarning`` and calls ``pyro_vae.compare.compare(...)``.
    """

    def __call__(self, *args: object, **kwargs: object) -> object:
        name = self.__name__.rpartition(".")[2]
        warnings.warn(f"calling the module {self.__name__} is deprecated; call {self.__name__}.{name}(...) "
                      f"(from {self.__name__} import {name})", DeprecationWarning, stacklevel=2)  # fmt: skip
        return getattr(self, name)(*args, **kwargs)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``pyro_vae/__init__.py``)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


__all__ = ["MOVED", "CallableModule", "Package", "install"]
