"""One registry: ``group -> name -> factory`` behind every ``kind:`` in the spec.

A factory is any callable whose keyword parameters are the component's settings. Their annotations
(with constraints from :mod:`pyro_vae._typing`) and defaults are the schema: the spec validator, the
resolved ``config.yaml`` and ``pyro-vae components`` are all generated from the signature, so the
documentation cannot drift from the code. Parameters listed in ``context`` are supplied by the
builder (shapes, sibling modules), never by the user.

Rules (as torchvision's ``register_model``: a registry refuses surprises):

- A name is defined once per group. Registering it again from another definition raises
  :class:`DuplicateComponentError` naming both (``module:qualname``); the same definition executed
  again (a module re-imported after a failed import, ``importlib.reload``) replaces its own entry.
- Built-in components are found, not listed: the first lookup imports every module of the
  ``pyro_vae`` package whose source registers something (:func:`builtin_modules` reads the files,
  it does not import the rest), so a new module cannot be silently invisible.
- Components from outside the package arrive through :mod:`pyro_vae.plugins` (the spec's
  ``plugins:``, ``--plugin MODULE`` and the ``pyro_vae.components`` entry-point group); each entry
  remembers where it came from (:attr:`Entry.source`), which ``pyro-vae components`` shows.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import PyroVAEError, SpecError

#: Groups in the order ``pyro-vae components`` lists them, with a one-line meaning.
GROUPS: dict[str, str] = {
    "data": "datasets (`data.name`)",
    "model": "generative models (`model.kind`)",
    "prior": "priors p(z) (`model.prior.kind`)",
    "likelihood": "likelihoods p(x|z) (`model.likelihood.kind`)",
    "network": "encoder/decoder networks (`model.network.kind`)",
    "guide": "guides q(z|x) (`guide.kind`)",
    "elbo": "ELBO estimators (`elbo.kind`)",
}

#: A line of package source that registers a component: the decorator (``@register(...)``,
#: ``@REGISTRY.register(...)``) or a group's common settings (``REGISTRY.set_common(...)``).
_REGISTERS = re.compile(r"^\s*(?:@(?:\w+\.)*register\(|(?:\w+\.)*set_common\()", re.MULTILINE)

#: Where built-in components come from (:attr:`Entry.source`).
BUILTIN = "pyro_vae"

_MISSING = inspect.Parameter.empty


#: Entry-point group through which installed distributions add components (see :mod:`pyro_vae.plugins`).
ENTRY_POINT_GROUP = "pyro_vae.components"


class DuplicateComponentError(PyroVAEError):
    """A component name registered twice in one group by two different definitions."""


class PluginError(SpecError):
    """A plugin cannot be found or imported, or its registrations are refused."""


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass(frozen=True)
class Entry:
    """A registered factory and what the schema knows about it."""

    group: str
    name: str
    factory: Callable[..., Any]
    description: str
    context: tuple[str, ...] = ()
    params: dict[str, Param] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None  # cross-field validation, raises SpecError
    source: str = BUILTIN  # "pyro_vae", or where a plugin's entry came from ("module mypkg", "entry point ...")

    @property
    def origin(self) -> str:
        """``module:qualname`` of the factory: the definition this entry names."""
        return definition(self.factory)

    def build(self, cfg: Mapping[str, Any], **context: Any) -> Any:
        kwargs = {k: v for k, v in cfg.items() if k in self.params}
        kwargs.update({k: v for k, v in context.items() if k in self.context})
        return self.factory(**kwargs)


def definition(obj: Any) -> str:
    """``module:qualname`` of a function or class (how errors and listings name a definition)."""
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}:{getattr(obj, '__qualname__', None) or type(obj).__qualname__}"


def signature_params(factory: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Param]:
    """The user-settable parameters of ``factory`` (keyword parameters with annotations)."""
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    hints = typing.get_type_hints(target, include_extras=True)
    out: dict[str, Param] = {}
    for p in inspect.signature(factory).parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise TypeError(f"{factory!r}: parameter {p.name!r} needs a type annotation")
        out[p.name] = Param(p.name, hints[p.name], p.default)
    return out


def builtin_modules(root: Path | None = None, package: str = "pyro_vae") -> list[str]:
    """Dotted names of the modules under ``root`` (the ``pyro_vae`` package) that register components.

    Found by reading each ``.py`` file for a registering line (:data:`_REGISTERS`), without importing
    the others (plots, diagnostics, ... stay unimported until used). Sorted, so the import order is fixed.
    """
    root = Path(__file__).resolve().parent if root is None else root
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        if rel.parts[-1] == "__main__" or "__pycache__" in rel.parts or path.name == "registry.py":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if _REGISTERS.search(text):
            parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
            found.append(".".join((package, *parts)))
    return found


def _module_source(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", None) or "?"
    return BUILTIN if module == BUILTIN or module.startswith(BUILTIN + ".") else f"module {module}"


class Registry:
    def __init__(self, modules: Callable[[], list[str]] = builtin_modules, entry_points: bool = True) -> None:
        self._tables: dict[str, dict[str, Entry]] = {g: {} for g in GROUPS}
        self._common: dict[str, dict[str, Param]] = {}
        self._modules = modules  # the built-in modules to import at the first lookup
        self.entry_points = entry_points  # then the installed plugins (group ENTRY_POINT_GROUP)
        self._loaded = False
        self._source: str | None = None  # set by :meth:`source` while a plugin loads

    def register(
        self,
        group: str,
        name: str,
        *,
        context: tuple[str, ...] = (),
        description: str | None = None,
        check: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@register("prior", "standard_normal", context=("latent_dim",))``.

        ``check(params)`` validates combinations of values at spec-resolution time (before any work).
        A name another definition already holds in ``group`` is refused (:class:`DuplicateComponentError`).
        """
        if group not in self._tables:
            raise KeyError(f"unknown registry group {group!r}; groups: {', '.join(GROUPS)}")

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            doc = description or (inspect.getdoc(factory) or "").strip().split("\n")[0]
            source = self._source or _module_source(factory)
            entry = Entry(group, name, factory, doc, context, signature_params(factory, context), check, source)
            old = self._tables[group].get(name)
            if old is not None and old.origin != entry.origin:
                raise DuplicateComponentError(
                    f"{group} {name!r} is registered twice: by {old.origin} ({old.source}) and by {entry.origin} "
                    f"({entry.source}); rename one of them"
                )
            self._tables[group][name] = entry
            return factory

        return deco

    @contextlib.contextmanager
    def source(self, text: str | None) -> Iterator[None]:
        """Entries registered inside the block record ``text`` as where they come from."""
        previous, self._source = self._source, text
        try:
            yield
        finally:
            self._source = previous

    def set_common(self, group: str, schema: Callable[..., Any]) -> None:
        """Settings every component of ``group`` accepts (e.g. ``elbo.beta``), from a dataclass."""
        self._common[group] = signature_params(schema)

    def _load(self) -> None:
        """Import the built-in modules, then the installed plugins (entry points), once."""
        if not self._loaded:
            self._loaded = True
            for mod in self._modules():
                importlib.import_module(mod)
            if self.entry_points:
                self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Import the components of installed distributions (group :data:`ENTRY_POINT_GROUP`).

        Each entry point names a module (imported: its decorators register) or a function (called with
        no arguments). One that fails is one :class:`PluginError` line naming it and its distribution.
        """
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (e.name, e.value)):
            dist = getattr(ep, "dist", None)
            where = f"entry point {ep.name} = {ep.value} of {dist.name if dist is not None else 'an installed package'}"
            try:
                with self.source(where):
                    obj = ep.load()
                    if callable(obj) and not isinstance(obj, ModuleType):
                        obj()
            except Exception as e:  # noqa: BLE001  # whatever its import raised: one line, not the plugin traceback
                raise PluginError(f"{where} failed to load: {type(e).__name__}: {' '.join(str(e).split())}") from None

    def common(self, group: str) -> dict[str, Param]:
        self._load()
        return self._common.get(group, {})

    def names(self, group: str) -> list[str]:
        self._load()
        return sorted(self._tables[group])

    def entries(self, group: str) -> list[Entry]:
        """Every entry of ``group``, sorted by name."""
        self._load()
        return [self._tables[group][n] for n in sorted(self._tables[group])]

    def get(self, group: str, name: Any, key: str | None = None) -> Entry:
        self._load()
        table = self._tables[group]
        if not isinstance(name, str) or name not in table:
            where = key or f"{group}.kind"
            raise SpecError(f"{where}: unknown {group} {name!r}; valid choices: {', '.join(sorted(table))}")
        return table[name]

    def build(self, group: str, cfg: Mapping[str, Any], **context: Any) -> Any:
        """Build a component from a *resolved* spec mapping (``kind`` plus parameters)."""
        key = "name" if group == "data" else "kind"
        return self.get(group, cfg.get(key)).build(cfg, **context)


REGISTRY = Registry()
register = REGISTRY.register
