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
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import yaml

from . import plugins
from ._typing import (
    Binarize,
    Component,
    Interval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from .errors import PyroVAEError, SpecError, brief, cut, input_file
from .registry import REGISTRY, Param, signature_params

#: Longest spec ``name``: it becomes one path component, ``runs/NAME-TIMESTAMP``.
MAX_NAME = 100


def check_run_name(name: str) -> str:
    """A spec's ``name`` becomes one path component of ``runs/NAME-TIMESTAMP``: refuse anything else."""
    shown = repr(name[:40] + ("..." if len(name) > 40 else ""))
    if not name or not name.strip():
        raise SpecError("name: must not be empty; e.g. name: mnist-iwae")
    if len(name) > MAX_NAME:
        raise SpecError(f"name: {shown} is {len(name)} characters; at most {MAX_NAME}")
    if not name.isprintable() or "/" in name or "\\" in name or name in (".", "..") or name.startswith((".", "-")):
        raise SpecError(
            f"name: {shown} is not a plain file name (no '/', '\\', control characters, leading '.' or '-'); "
            "e.g. name: mnist-iwae"
        )
    return name


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` section: the optimization budget and where it runs."""

    epochs: NonNegativeInt = 30  # passes over the training split
    batch_size: PositiveInt = 64  # data points per SVI step
    lr: PositiveFloat = 1e-3  # learning rate of the torch optimizer
    optimizer: Literal["adam", "adamw", "nadam", "sgd"] = "adam"  # nadam: Adam with Nesterov momentum (Dozat 2016)
    weight_decay: NonNegativeFloat = 0.0  # decoupled for adamw, L2 otherwise
    eps: PositiveFloat = 1e-8  # adam, adamw, nadam: the denominator's epsilon (Burda et al. 2015 use 1e-4)
    # learning rate per epoch (pyro_vae/training/schedules.py): constant; burda: stage i = 0, 1, ... lasts 3^i epochs
    # at lr * 10^(-i/7) (Burda et al. 2015); epochs 364 ends after stage 5, 3280 after stage 7
    lr_schedule: Literal["constant", "burda"] = "constant"
    momentum: Annotated[float, Interval(0, 1, high_open=True)] = 0.0  # sgd only
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    eval_particles: PositiveInt = 100  # K of the importance-sampled log-likelihood in summary.json
    progress: bool = True  # tqdm progress bar with the running loss; plain lines when stderr is not a terminal
    progress_seconds: PositiveFloat = 60.0  # plain lines: at most one per this many seconds inside an epoch
    # experiment trackers (optional extras; pyro_vae/training/trackers.py): per-step objective, per-epoch metrics,
    # figures and this spec, to TensorBoard (RUN_DIR/tensorboard) and/or MLflow (mlflow_uri)
    log_to: tuple[Literal["tensorboard", "mlflow"], ...] = ()
    mlflow_uri: str | None = None  # MLflow tracking URI; null: a local file store, file:RUN_DIR/mlruns
    figures: bool = True  # write RUN_DIR/figures/*.png after training
    # KL weight per step = elbo.beta * factor (pyro_vae/training/schedules.py). constant: 1; linear: warm-up
    # 0 -> 1 over kl_steps steps (Bowman et al. 2016); cyclical: cycles of kl_steps steps, each ramping
    # 0 -> 1 over its first kl_ramp fraction, then 1 (Fu et al. 2019). Reported bounds are unweighted.
    kl_schedule: Literal["constant", "linear", "cyclical"] = "constant"
    kl_steps: NonNegativeInt = 1000  # linear: warm-up length; cyclical: cycle length (optimization steps)
    kl_ramp: Annotated[float, Interval(0, 1)] = 0.5  # cyclical: fraction of each cycle spent ramping (R)
    max_bad_steps: PositiveInt = 20  # NaN/inf loss or gradient: skip the step; stop after this many in a row
    # stop when the held-out bound falls more than max(this, 10 x the std of the last 5 epochs) nats
    # below its best so far (pyro_vae/training/nonfinite.py: check_divergence); 0 turns the guard off
    divergence_nats: NonNegativeFloat = 50.0
    # learning curve: every curve_every epochs (and at the last), L_K with K = curve_particles on the first
    # curve_points test points, as curve_ll in metrics.jsonl (its own seeded draws; 0 turns it off)
    curve_every: NonNegativeInt = 0
    curve_points: PositiveInt = 1000
    curve_particles: PositiveInt = 100
    fast_path: bool = (
        True  # same loss as Pyro's traces, computed directly for the standard VAE (pyro_vae/estimators/fast.py)
    )
    # torch.compile the training loss (inductor). Off: on this project's 2-core CPU it paid only for
    # some shapes and costs 10-30 s of compilation (benchmarks/README.md, torch.compile); compiled draws
    # come from inductor's generator, so a run is equal in distribution to an eager one, not draw for draw
    compile: bool = False


@dataclass(frozen=True)
class DataOptions:
    """Settings every dataset accepts, next to ``data.name`` and the dataset's own parameters."""

    binarize: Binarize = "none"  # static: sampled once (seeded); dynamic: resampled every batch
    valid_size: NonNegativeFloat = 0.1  # < 1: fraction of the training split held out; >= 1: a count
    limit: NonNegativeInt = 0  # > 0: keep only the first N training points (quick trials)
    # Stream the training split through a torch DataLoader instead of holding it on the training device
    # (pyro_vae/data/streaming.py; same numbers either way). auto: when it exceeds memory_budget_gb.
    stream: Literal["auto"] | bool = "auto"
    memory_budget_gb: PositiveFloat | None = None  # null: half the memory available on the training device
    stream_workers: NonNegativeInt | None = None  # DataLoader worker processes when streaming; null: min(4, CPUs - 1)


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

_TOP = ("name", "seed", "plugins", "data", "model", "guide", "elbo", "train")
_SECTIONS: dict[str, Any] = {"train": TrainConfig}


def load(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a YAML spec (or return a copy of :data:`DEFAULT_SPEC` when ``path`` is None).

    Sections missing from the file fall back to the default spec's; a section present in the file
    replaces the default's whole (its omitted keys take the component's or ``TrainConfig``'s own
    defaults, never the default job's): a file with only ``elbo: {kind: iwae}`` trains the default
    model with IWAE. The file is read by :func:`read_yaml` (YAML 1.2 scalars, no duplicate keys,
    bounded aliases).
    """
    spec = copy.deepcopy(DEFAULT_SPEC)
    if path is None:
        return spec
    raw = read_yaml(path, "spec file")
    if raw is None:
        return spec
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {brief(str(path), 200)} must hold a mapping of sections ({', '.join(_TOP)})")
    spec.update(raw)
    return spec


# --------------------------------------------------------------------------- YAML

#: Most nodes a YAML document may expand to once its aliases are followed (a spec has a few dozen).
MAX_YAML_NODES = 10_000
#: Largest spec or config.yaml read (a spec is a few hundred bytes).
MAX_YAML_BYTES = 1 << 20

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution): ``010`` is 10, ``0o10`` is
# 8, ``1:30`` and ``yes`` are strings, ``1e-3`` is a number; no timestamps, no ``<<`` merge keys.
_CORE_12: list[tuple[str, str, str]] = [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", "~nN"),
]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core-schema scalars, no duplicate keys and bounded aliases."""

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {}

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node, MAX_YAML_NODES)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class names it
                    break
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {brief(key)} (line {key_node.start_mark.line + 1})", None
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. ``!!int abc``, a 5000-digit integer
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {brief(node.value if isinstance(node.value, str) else '...')}: {e}",
                node.start_mark,
            ) from None


def _construct_int(loader: yaml.SafeLoader, node: Any) -> int:
    text = str(loader.construct_scalar(node))
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    if digits[:2] in ("0o", "0x"):
        return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
    return sign * int(digits, 10)  # int("010") == 10: no YAML 1.1 octal


_TAG = "tag:yaml.org,2002:"
for _kind, _regexp, _first in _CORE_12:
    _Loader.add_implicit_resolver(_TAG + _kind, re.compile(_regexp), list(_first))
_Loader.add_implicit_resolver(_TAG + "null", re.compile(_CORE_12[3][1]), [""])
_Loader.add_constructor(_TAG + "int", _construct_int)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 *or* 1.2 would read as something else (``yes``, ``1e3``, ``0o7``)."""

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()
    }


for _first_char, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _Dumper.yaml_implicit_resolvers.setdefault(_first_char, []).extend(_resolvers)


def _check_expansion(root: Any, limit: int) -> None:
    """Refuse a document whose aliases expand to more than ``limit`` nodes, or refer to themselves.

    Counted on the composed node graph (aliases are shared nodes there), so a "billion laughs"
    bomb is refused before anything is expanded or copied.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to its own anchor (a recursive structure)", node.start_mark
            )
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        active.discard(key)
        if n > limit:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases expand to more than {limit:,} values (an alias bomb?); write the values out",
                node.start_mark,
            )
        sizes[key] = n
        return n

    if root is not None:
        size(root)


def parse_yaml(text: str, what: str, error: type[PyroVAEError] = SpecError) -> Any:
    """Parse ``text`` (YAML 1.2 scalars, no duplicate keys, bounded aliases); ``what`` names it in errors."""
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters here
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise error(f"{what} is not valid YAML: {cut(_one_line(e), 300)}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str, error: type[PyroVAEError] = SpecError) -> Any:
    """Read and parse a YAML file; a directory, FIFO, device, huge or non-UTF-8 file is one clear error."""
    p = input_file(path, what, error, max_bytes=MAX_YAML_BYTES)
    q = brief(str(p), 200)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{what} {q} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {q} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return parse_yaml(text, f"{what} {q}", error)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def apply_overrides(spec: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``[1, 2]``, ``true``, ``1e-3``)."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise SpecError(f"--set {brief(item)}: expected KEY=VALUE, e.g. --set train.epochs=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise SpecError(f"--set {brief(item)}: empty key segment in {key!r}")
        value = parse_yaml(text, f"--set {key}: value {brief(text)}") if text.strip() else None
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
                raise SpecError(f"{key}: {brief(value)} is out of range; must be {m.describe()}")
        return out
    if origin is Literal:
        choices = typing.get_args(ann)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
            raise SpecError(f"{key}: {brief(value)} is not valid; valid choices: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arm in typing.get_args(ann):
            try:
                return check_value(key, value, arm)
            except SpecError as e:
                errors.append(e)
        if len(errors) == 1 or all("out of range" not in str(e) for e in errors):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected {_describe(ann)}")
        raise next(e for e in errors if "out of range" in str(e))
    if origin in (list, tuple) or origin is typing.Sequence:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected {_describe(ann)}")
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return [check_value(f"{key}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
    if ann is type(None):
        if value is not None:
            raise SpecError(f"{key}: {brief(value)} is not valid; expected null")
        return None
    if ann is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected true or false")
        return value
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise SpecError(f"{key}: {brief(value)} is not valid; expected an integer")
        return value
    if ann is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected a number")
        if not math.isfinite(value):  # NaN or +-inf
            raise SpecError(f"{key}: {brief(value)} is not valid; expected a finite number")
        return float(value)
    if ann is str:
        if not isinstance(value, str):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected a string")
        return value
    if ann is Any:
        return copy.deepcopy(value)
    if origin in (dict, typing.Mapping) or ann in (dict, typing.Mapping):
        if not isinstance(value, dict):
            raise SpecError(f"{key}: {brief(value)} is not valid; expected a mapping")
        return copy.deepcopy(value)
    raise TypeError(f"{key}: unsupported annotation {ann!r}")  # a programming error, not user input


def _resolve_params(
    key: str, raw: Mapping[str, Any], params: dict[str, Param], skip: tuple[str, ...]
) -> dict[str, Any]:
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
        raise SpecError(f"{key}: expected a mapping with '{kind_key}', got {brief(raw)}")
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
    # the name becomes a file name (runs/NAME-TIMESTAMP): one plain path component
    out["name"] = check_run_name(check_value("name", spec.get("name", DEFAULT_SPEC["name"]), str))
    # numpy (seeded by pyro.set_rng_seed) takes seeds below 2**32
    out["seed"] = check_value("seed", spec.get("seed", 0), typing.Annotated[int, Interval(0, 2**32 - 1)])
    # plugin modules (pyro_vae/plugins.py) register their components before any kind is looked up;
    # recorded only when there are some, so a spec without plugins resolves to the same config.yaml as before
    mods = plugins.resolve(spec.get("plugins"))
    if mods:
        out["plugins"] = mods
    for section in ("data", "model", "guide", "elbo"):
        raw = spec.get(section)
        if section == "guide":
            raw = _guide_section(out["model"], raw)
        if raw is None and section not in spec:
            raise SpecError(f"{section}: section is missing")
        out[section] = resolve_component(section, raw, section)
    train = spec.get("train", {}) or {}
    if not isinstance(train, Mapping):
        raise SpecError(f"train: expected a mapping, got {brief(train)}")
    out["train"] = _resolve_params("train", train, signature_params(TrainConfig), skip=())
    _check_pairing(out)
    return out


def _guide_section(model: Mapping[str, Any], raw: Any) -> Any:
    """The guide of a model that brings its own (``brings_guide``: ``model.kind: pyro``, whose program
    has a guide) is ``{kind: program}``; the default spec's guide is taken to mean it, any other is refused.
    ``guide.kind: program`` with any other model is refused too."""
    kind = raw.get("kind") if isinstance(raw, Mapping) else raw
    if getattr(REGISTRY.get("model", model["kind"]).factory, "brings_guide", False):
        if raw is None or kind == "program" or raw == DEFAULT_SPEC["guide"]:
            return {"kind": "program"}
        raise SpecError(
            f"guide.kind: {brief(kind)}: model.kind: {model['kind']} brings its own guide (the program's); "
            "remove the guide section or write guide: {kind: program}"
        )
    if kind == "program":
        raise SpecError(
            f"guide.kind: program is the guide of a Pyro program (model.kind: pyro), not of model.kind: {model['kind']}"
        )
    return raw


def _check_pairing(out: Mapping[str, Any]) -> None:
    """Rules across sections that components declare: an estimator whose guide gradient needs log q(z|x)
    (``needs_density``: dreg, score_function) refuses a point-mass guide (``is_point_mass``: delta)."""
    elbo, guide = out["elbo"]["kind"], out["guide"]["kind"]
    if getattr(REGISTRY.get("elbo", elbo).factory, "needs_density", False) and getattr(
        REGISTRY.get("guide", guide).factory, "is_point_mass", False
    ):
        raise SpecError(
            f"elbo.kind: {elbo} needs a guide with a density, but guide.kind: {guide} is a point mass; "
            "use elbo.kind: trace or iwae"
        )


def train_config(resolved: Mapping[str, Any]) -> TrainConfig:
    return TrainConfig(**resolved["train"])


def to_yaml(resolved: Mapping[str, Any]) -> str:
    """``config.yaml`` text; strings that YAML 1.1 or 1.2 would read as non-strings are quoted."""
    return yaml.dump(dict(resolved), Dumper=_Dumper, sort_keys=False, default_flow_style=None)


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
    "parse_yaml",
    "read_yaml",
    "resolve",
    "resolve_component",
    "to_yaml",
]
