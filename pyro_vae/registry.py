"""One registry: ``group -> name -> factory`` behind every ``kind:`` in the spec.

A factory is any callable whose keyword parameters are the component's settings. Their annotations
(with constraints from :mod:`pyro_vae._typing`) and defaults are the schema: the spec validator, the
resolved ``config.yaml`` and ``pyro-vae components`` are all generated from the signature, so the
documentation cannot drift from the code. Parameters listed in ``context`` are supplied by the
builder (shapes, sibling modules), never by the user.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError

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

# Modules whose import registers the built-in components.
_BUILTIN_MODULES = (
    "pyro_vae.data",
    "pyro_vae.nets",
    "pyro_vae.models",
    "pyro_vae.guides",
    "pyro_vae.estimators",
)

_MISSING = inspect.Parameter.empty


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

    def build(self, cfg: Mapping[str, Any], **context: Any) -> Any:
        kwargs = {k: v for k, v in cfg.items() if k in self.params}
        kwargs.update({k: v for k, v in context.items() if k in self.context})
        return self.factory(**kwargs)


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


class Registry:
    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Entry]] = {g: {} for g in GROUPS}
        self._common: dict[str, dict[str, Param]] = {}
        self._loaded = False

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
        """
        if group not in self._tables:
            raise KeyError(f"unknown registry group {group!r}; groups: {', '.join(GROUPS)}")

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            doc = description or (inspect.getdoc(factory) or "").strip().split("\n")[0]
            entry = Entry(group, name, factory, doc, context, signature_params(factory, context), check)
            self._tables[group][name] = entry
            return factory

        return deco

    def set_common(self, group: str, schema: Callable[..., Any]) -> None:
        """Settings every component of ``group`` accepts (e.g. ``elbo.beta``), from a dataclass."""
        self._common[group] = signature_params(schema)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in _BUILTIN_MODULES:
                importlib.import_module(mod)

    def common(self, group: str) -> dict[str, Param]:
        self._load()
        return self._common.get(group, {})

    def names(self, group: str) -> list[str]:
        self._load()
        return sorted(self._tables[group])

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
