"""``pyro-vae components``: the registry rendered as text, generated from factory signatures.

Components of plugins (:mod:`pyro_vae.plugins`) are listed with the built-ins, each marked with where it
comes from (``[from module mypkg (--plugin): mypkg:StudentT]``, ``[from entry point ...]``).
"""

from __future__ import annotations

from .registry import BUILTIN, GROUPS, REGISTRY, Param
from .spec import _describe


def _param_line(p: Param) -> str:
    default = (
        "required" if p.required else f"default {p.default!r}".replace("(", "[").replace(",)", "]").replace(")", "]")
    )
    return f"      {p.name}: {_describe(p.annotation)} ({default})"


def listing(group: str | None = None) -> str:
    """Every registered component of ``group`` (or of all groups) with parameters and defaults."""
    groups = [group] if group else list(GROUPS)
    lines: list[str] = []
    for g in groups:
        lines.append(f"{g}: {GROUPS[g]}")
        common = REGISTRY.common(g)
        if common:
            lines.append("  common to every " + g + ":")
            lines += [_param_line(p) for p in common.values()]
        for e in REGISTRY.entries(g):
            where = "" if e.source == BUILTIN else f" [from {e.source}: {e.origin}]"
            lines.append(f"  {e.name} - {e.description.replace('``', '`')}{where}")
            lines += [_param_line(p) for p in e.params.values()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
