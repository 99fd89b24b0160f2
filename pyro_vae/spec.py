"""The declarative experiment spec: load, override, validate, resolve defaults.

A spec is plain data (YAML). :func:`resolve` checks every key and value against the registry's
factory signatures and the small config dataclasses below, fills in every default, and returns plain
dicts/lists/scalars, which is what ``config.yaml`` in a run directory holds. Nothing is built here and
validation has no side effects.
"""

from __future__ import annotations

import copy
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from ._typing import (
    Binarize,
    Component,
    Interval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from .errors import SpecError
from .registry import REGISTRY, Param, signature_params


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` section: the optimization budget and where it runs."""

    epochs: NonNegativeInt = 30  # passes over the training split
    batch_size: PositiveInt = 64  # data points per SVI step
    lr: PositiveFloat = 1e-3  # learning rate of the torch optimizer
    optimizer: Literal["adam", "adamw", "nadam", "sgd"] = "adam"  # nadam: seed 002's choice
    weight_decay: NonNegativeFloat = 0.0  # decoupled for adamw, L2 otherwise
    momentum: Annotated[float, Interval(0, 1, high_open=True)] = 0.0  # sgd only
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    eval_particles: PositiveInt = 100  # K of the importance-sampled log-likelihood in summary.json
    progress: bool = True  # tqdm progress bar with the running loss
    figures: bool = True  # write RUN_DIR/figures/*.png after training
    # KL weight per step = elbo.beta * factor (pyro_vae/schedules.py). constant: 1; linear: warm-up
    # 0 -> 1 over kl_steps steps (Bowman et al. 2016); cyclical: cycles of kl_steps steps, each ramping
    # 0 -> 1 over its first kl_ramp fraction, then 1 (Fu et al. 2019). Reported bounds are unweighted.
    kl_schedule: Literal["constant", "linear", "cyclical"] = "constant"
    kl_steps: NonNegativeInt = 1000  # linear: warm-up length; cyclical: cycle length (optimization steps)
    kl_ramp: Annotated[float, Interval(0, 1)] = 0.5  # cyclical: fraction of each cycle spent ramping (R)
    max_bad_steps: PositiveInt = 20  # NaN/inf loss or gradient: skip the step; stop after this many in a row
    fast_path: bool = True  # same loss as Pyro's traces, computed directly for the standard VAE (pyro_vae/fastpath.py)


@dataclass(frozen=True)
class DataOptions:
    """Settings every dataset accepts, next to ``data.name`` and the dataset's own parameters."""

    binarize: Binarize = "none"  # static: sampled once (seeded); dynamic: resampled every batch
    valid_size: NonNegativeFloat = 0.1  # < 1: fraction of the training split held out; >= 1: a count
    limit: NonNegativeInt = 0  # > 0: keep only the first N training points (quick trials)


@dataclass(frozen=True)
class ElboOptions:
    """Settings every estimator accepts, next to ``elbo.kind``."""

    beta: PositiveFloat = 1.0  # KL weight: scales log p(z) - log q(z|x) only (beta-VAE); > 0 (poutine.scale)


DEFAULT_SPEC: dict[str, Any] = {
    "name": "digits-vae",
    "seed": 0,
    "data": {"name": "digits"},
    "model": {
        "kind": "vae",
        "latent_dim": 2,
        "network": {"kind": "mlp", "hidden": [256, 128], "activation": "relu"},
        "prior": {"kind": "standard_normal"},
        "likelihood": {"kind": "bernoulli"},
    },
    "guide": {"kind": "diagonal_normal"},
    "elbo": {"kind": "trace"},
    "train": {"epochs": 200, "batch_size": 32, "lr": 2e-3, "kl_schedule": "linear", "kl_steps": 3000},
}

_TOP = ("name", "seed", "data", "model", "guide", "elbo", "train")
_SECTIONS: dict[str, Any] = {"train": TrainConfig}


def load(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a YAML spec (or return a copy of :data:`DEFAULT_SPEC` when ``path`` is None).

    Sections missing from the file fall back to the default spec's; a section present in the file
    replaces the default's whole (its omitted keys take the component's or ``TrainConfig``'s own
    defaults, never the default job's): a file with only ``elbo: {kind: iwae}`` trains the default
    model with IWAE.
    """
    spec = copy.deepcopy(DEFAULT_SPEC)
    if path is None:
        return spec
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {str(p)!r} is not valid YAML: {_one_line(e)}") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec file {str(p)!r} is not a text file") from None
    if raw is None:
        return spec
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping of sections ({', '.join(_TOP)})")
    spec.update(raw)
    return spec


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def apply_overrides(spec: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``[1, 2]``, ``true``, ``1e-3``)."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise SpecError(f"--set {item!r}: empty key segment in {key!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise SpecError(f"--set {key}: value {text!r} is not valid YAML: {_one_line(e)}") from None
        node: Any = spec
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                if isinstance(node, dict) and part in node and node[part] is not None:
                    raise SpecError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
                nxt = {}
                node[part] = nxt
            node = nxt
        if parts[-1] in ("kind", "name") and len(parts) > 1 and node.get(parts[-1]) not in (None, value):
            _drop_foreign_keys(node, parts[-2], value)
        node[parts[-1]] = value
    return spec


def _drop_foreign_keys(node: dict[str, Any], group: str, new_kind: Any) -> None:
    """Switching a component's kind: drop the old kind's parameters that the new kind lacks.

    Options common to the group (``data.binarize``, ``elbo.beta``, ...) and parameters both kinds
    share are kept, so ``--set data.name=mnist`` keeps ``data.valid_size``.
    """
    try:
        entry = REGISTRY.get(group, new_kind)
    except (KeyError, SpecError):
        node.clear()  # unknown group or kind: validation will name the problem
        return
    keep = set(entry.params) | set(REGISTRY.common(group))
    for k in [k for k in node if k not in keep]:
        del node[k]


# --------------------------------------------------------------------------- validation


def _describe(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        extra = [m.describe() for m in meta if isinstance(m, Interval)]
        comp = [f"a {m.group} spec" for m in meta if isinstance(m, Component)]
        if comp:
            return comp[0]
        return _describe(base) + (f" {extra[0]}" if extra else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    if origin in (list, tuple) or origin is typing.Sequence:
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return f"a list of {_describe(args[0])}" if args else "a list"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def check_value(key: str, value: Any, ann: Any) -> Any:
    """Return ``value`` coerced to ``ann`` (int -> float, tuple -> list) or raise :class:`SpecError`."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        for m in meta:
            if isinstance(m, Component):
                return resolve_component(m.group, value, key)
        out = check_value(key, value, base)
        for m in meta:
            if isinstance(m, Interval) and isinstance(out, (int, float)) and not m.contains(out):
                raise SpecError(f"{key}: {value!r} is out of range; must be {m.describe()}")
        return out
    if origin is Literal:
        choices = typing.get_args(ann)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
            raise SpecError(f"{key}: {value!r} is not valid; valid choices: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arm in typing.get_args(ann):
            try:
                return check_value(key, value, arm)
            except SpecError as e:
                errors.append(e)
        if len(errors) == 1 or all("out of range" not in str(e) for e in errors):
            raise SpecError(f"{key}: {value!r} is not valid; expected {_describe(ann)}")
        raise next(e for e in errors if "out of range" in str(e))
    if origin in (list, tuple) or origin is typing.Sequence:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{key}: {value!r} is not valid; expected {_describe(ann)}")
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return [check_value(f"{key}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
    if ann is type(None):
        if value is not None:
            raise SpecError(f"{key}: {value!r} is not valid; expected null")
        return None
    if ann is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{key}: {value!r} is not valid; expected true or false")
        return value
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise SpecError(f"{key}: {value!r} is not valid; expected an integer")
        return value
    if ann is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{key}: {value!r} is not valid; expected a number")
        if not math.isfinite(value):  # NaN or +-inf
            raise SpecError(f"{key}: {value!r} is not valid; expected a finite number")
        return float(value)
    if ann is str:
        if not isinstance(value, str):
            raise SpecError(f"{key}: {value!r} is not valid; expected a string")
        return value
    if ann is Any:
        return copy.deepcopy(value)
    if origin in (dict, typing.Mapping) or ann in (dict, typing.Mapping):
        if not isinstance(value, dict):
            raise SpecError(f"{key}: {value!r} is not valid; expected a mapping")
        return copy.deepcopy(value)
    raise TypeError(f"{key}: unsupported annotation {ann!r}")  # a programming error, not user input


def _resolve_params(key: str, raw: Mapping[str, Any], params: dict[str, Param], skip: tuple[str, ...]) -> dict[str, Any]:
    unknown = [k for k in raw if k not in params and k not in skip]
    if unknown:
        valid = ", ".join(sorted(params)) or "none"
        raise SpecError(f"{key}.{unknown[0]}: unknown key; valid keys: {valid}")
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name in raw:
            value = raw[name]
        elif p.required:
            raise SpecError(f"{key}.{name}: required key is missing ({_describe(p.annotation)})")
        else:
            value = p.default
            if value is None:
                out[name] = None
                continue
        out[name] = check_value(f"{key}.{name}", _plain(value), p.annotation)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolve_component(group: str, raw: Any, key: str) -> dict[str, Any]:
    """Validate one ``{kind: NAME, ...}`` mapping (a bare string is shorthand for ``{kind: NAME}``)."""
    kind_key = "name" if group == "data" else "kind"
    if isinstance(raw, str):
        raw = {kind_key: raw}
    if not isinstance(raw, dict):
        raise SpecError(f"{key}: expected a mapping with '{kind_key}', got {raw!r}")
    if kind_key not in raw:
        raise SpecError(f"{key}.{kind_key}: required; valid choices: {', '.join(REGISTRY.names(group))}")
    entry = REGISTRY.get(group, raw[kind_key], key=f"{key}.{kind_key}")
    params = {**REGISTRY.common(group), **entry.params}
    out = {kind_key: entry.name}
    out.update(_resolve_params(key, raw, params, skip=(kind_key,)))
    if entry.check is not None:
        try:
            entry.check(out)
        except SpecError as e:
            raise SpecError(f"{key}.{e}") from None
    return out


def resolve(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a whole spec and fill in every default; raises :class:`SpecError` on the first problem."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be a mapping of sections ({', '.join(_TOP)})")
    unknown = [k for k in spec if k not in _TOP]
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown top-level key; valid keys: {', '.join(_TOP)}")
    out: dict[str, Any] = {}
    out["name"] = check_value("name", spec.get("name", DEFAULT_SPEC["name"]), str)
    # numpy (seeded by pyro.set_rng_seed) takes seeds below 2**32
    out["seed"] = check_value("seed", spec.get("seed", 0), typing.Annotated[int, Interval(0, 2**32 - 1)])
    for section in ("data", "model", "guide", "elbo"):
        if section not in spec:
            raise SpecError(f"{section}: section is missing")
        out[section] = resolve_component(section, spec[section], section)
    train = spec.get("train", {}) or {}
    if not isinstance(train, Mapping):
        raise SpecError(f"train: expected a mapping, got {train!r}")
    out["train"] = _resolve_params("train", train, signature_params(TrainConfig), skip=())
    return out


def train_config(resolved: Mapping[str, Any]) -> TrainConfig:
    return TrainConfig(**resolved["train"])


def to_yaml(resolved: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(resolved), sort_keys=False, default_flow_style=None)


def from_args(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load, override and resolve: the one call the CLI and :func:`pyro_vae.fit` make."""
    return resolve(apply_overrides(load(path), list(overrides)))


REGISTRY.set_common("data", DataOptions)
REGISTRY.set_common("elbo", ElboOptions)

__all__ = [
    "DEFAULT_SPEC",
    "DataOptions",
    "ElboOptions",
    "TrainConfig",
    "apply_overrides",
    "check_value",
    "from_args",
    "load",
    "resolve",
    "resolve_component",
    "to_yaml",
]
