"""Checkpoints: tensors and plain containers only, written atomically, loaded with weights_only.

A checkpoint never holds pickled objects: loading uses ``torch.load(weights_only=True)``, which
refuses any payload that would execute code. The spec travels as YAML text.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import RunError, brief

FORMAT = "pyro-vae-checkpoint"
VERSION = 1
#: Test hook only: seconds to sleep inside every write of :func:`atomic_write_bytes`, so that a test
#: can kill the process mid-write. Unset (the default) in normal use.
SLOW_WRITE_ENV = "PYRO_VAE_TEST_SLOW_WRITE"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide runs from others


class _Writer:
    """File wrapper that keeps the first exception of a write (torch.save reports a disk error, or the
    exception a signal handler raised inside the write, as a vague RuntimeError) and, under the
    :data:`SLOW_WRITE_ENV` test hook, sleeps in each write."""

    def __init__(self, f: Any, delay: float) -> None:
        self._f, self._delay = f, delay
        self.error: BaseException | None = None

    def write(self, b: Any) -> int:
        try:
            n = self._f.write(b)
            if self._delay:
                time.sleep(self._delay)
        except BaseException as e:  # OSError, or a stop (SIGINT/SIGTERM) raised by pyro_vae.training.signals
            self.error = self.error or e
            raise
        return n  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files that a killed :func:`atomic_write_bytes` left behind in ``directory``."""
    for p in Path(directory).glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            w = _Writer(f, float(os.environ.get(SLOW_WRITE_ENV) or 0))
            try:
                write(w)
            except Exception as e:
                if w.error is not None and not isinstance(e, OSError):
                    raise w.error from None  # the disk's reason (or the stop), not the serializer's
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write ``text``; a failing write raises :class:`RunError` and leaves the old file."""
    try:
        atomic_write_bytes(path, lambda f: f.write(text.encode()))
    except OSError as e:
        raise RunError(f"cannot write {str(path)!r}: {e.strerror or e}; the previous version is intact") from None


def check_finite(state: dict[str, Any], sections: tuple[str, ...] = ("model", "optimizer")) -> None:
    """Raise :class:`RunError` naming the first NaN/inf floating tensor in ``state[section]``."""

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                raise RunError(
                    f"refusing to checkpoint NaN/inf values in {where}; the previous checkpoint is intact; "
                    "lower train.lr or check the likelihood scale"
                )
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    for section in sections:
        if section in state:
            walk(state[section], section)


def save(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint; refuses non-finite parameters or optimizer state."""
    check_finite(state)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a failing write as RuntimeError
        reason = getattr(e, "strerror", None) or " ".join(str(e).split())[:200]
        raise RunError(f"cannot write checkpoint {str(path)!r}: {reason}; the previous checkpoint is intact") from None


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a truncated, foreign or code-carrying file raises :class:`RunError`."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {str(path)!r}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: it could run code when loaded
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        what = f"refused: {found.group(1)}" if found else "not a torch zip checkpoint of tensors"
        raise RunError(
            f"checkpoint {str(path)!r} is unreadable or unsafe: it holds pickled objects, which are never loaded "
            f"because they could run code (only tensors and plain containers are allowed; {what})"
        ) from None
    except Exception as e:  # noqa: BLE001 - RuntimeError/EOFError/zip errors when truncated or foreign
        reason = " ".join(str(e).split())[:200]
        raise RunError(f"checkpoint {str(path)!r} is unreadable or unsafe ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("format"), str) or state["format"] != FORMAT:
        raise RunError(f"{str(path)!r} is not a pyro-vae checkpoint")
    version = state.get("version")
    if type(version) is not int or version != VERSION:  # a tensor or a bool here is damage, not a version
        raise RunError(f"checkpoint {str(path)!r} has version {brief(version)}; this pyro-vae reads {VERSION}")
    problem = layout_problem(state)
    if problem:
        raise RunError(f"checkpoint {str(path)!r} does not match the pyro-vae checkpoint layout: {problem}")
    return state


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Entries of ``partial`` (where a signal stopped inside an epoch) and what each must be.
_PARTIAL: dict[str, tuple[str, Any]] = {
    "epoch": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "steps": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "count": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "skipped": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "bad_in_row": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "seconds": ("a number", _is_number),
    "total": ("a 0-d floating tensor", lambda v: isinstance(v, torch.Tensor) and v.ndim == 0 and v.is_floating_point()),
}


def _record_problem(record: dict[str, Any], epoch: int) -> str | None:
    """What is wrong with one per-epoch record (None when it is what training writes to metrics.jsonl)."""
    if record.get("epoch") != epoch or not _is_int(record.get("epoch")):
        return f"must have 'epoch': {epoch}"
    for key in ("seconds", "test_elbo"):
        if not _is_number(record.get(key)):
            return f"lacks the number {key!r}"
    if not _is_int(record.get("skipped_steps")):
        return "lacks the integer 'skipped_steps'"
    if not any(_is_number(record.get(k)) for k in ("train_objective", "train_loss")):
        return "lacks the number 'train_objective'"
    for k, v in record.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str))):
            return f"holds {k!r}, which is not a plain number or text"
    return None


def layout_problem(state: dict[str, Any]) -> str | None:
    """What is missing or mistyped in a loaded checkpoint (None when it has the layout :func:`save` writes).

    Required: ``epoch`` (int >= 0), ``model`` (a state dict: names to tensors), ``optimizer`` (a
    mapping), ``rng`` (``torch`` and ``data`` generator states as uint8 tensors), ``history`` (a list of
    per-epoch records, one per epoch), ``config`` (the resolved spec as YAML text); optional:
    ``partial`` (a mapping with the entries of :data:`_PARTIAL`) and ``data_fingerprint`` (a string).
    """

    def missing_or(key: str, ok: bool, want: str) -> str | None:
        if key not in state:
            return f"entry {key!r} is missing"
        return None if ok else f"entry {key!r} must be {want}, not {type(state[key]).__name__}"

    epoch = state.get("epoch")
    model, rng, history = state.get("model"), state.get("rng"), state.get("history")
    checks = [
        missing_or("epoch", isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0, "an integer >= 0"),
        missing_or("model", isinstance(model, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()), "a mapping of names to tensors"),
        missing_or("optimizer", isinstance(state.get("optimizer"), dict), "a mapping"),
        missing_or("rng", isinstance(rng, dict) and all(
            isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("torch", "data")),
            "a mapping with uint8 tensors 'torch' and 'data'"),
        missing_or("history", isinstance(history, list) and all(isinstance(r, dict) for r in history),
                   "a list of per-epoch mappings"),
        missing_or("config", isinstance(state.get("config"), str), "the spec as YAML text"),
    ]  # fmt: skip
    for c in checks:
        if c:
            return c
    assert isinstance(history, list) and _is_int(epoch)
    if len(history) != epoch:
        return f"entry 'history' holds {len(history)} epochs but 'epoch' is {epoch}"
    for i, record in enumerate(history):
        problem = _record_problem(record, i + 1)
        if problem:
            return f"entry 'history[{i}]' {problem}"
    if "data_fingerprint" in state and not isinstance(state["data_fingerprint"], str):
        return "entry 'data_fingerprint' must be a string"
    partial = state.get("partial")
    if partial is None:
        return None
    if not isinstance(partial, dict):
        return f"entry 'partial' must be a mapping, not {type(partial).__name__}"
    for key, (want, ok) in _PARTIAL.items():
        if key not in partial:
            return f"entry 'partial' lacks {key!r}"
        if not ok(partial[key]):
            return f"entry 'partial.{key}' must be {want}"
    if partial["epoch"] != epoch + 1:
        return f"entry 'partial.epoch' is {partial['epoch']} but a partial epoch follows epoch {epoch}"
    return None


def load_model_state(module: torch.nn.Module, state: Any, where: str) -> None:
    """``module.load_state_dict(state)``; a mismatch raises :class:`RunError` naming the first
    missing or unexpected key, or the first tensor whose shape differs, with both shapes."""
    own = module.state_dict()
    if not isinstance(state, dict):
        raise RunError(f"{where}: entry 'model' is not a mapping of tensors")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    more = lambda ks: f" (and {len(ks) - 1} more)" if len(ks) > 1 else ""
    if missing:
        k = missing[0]
        raise RunError(
            f"{where} does not match its config: it lacks {k!r} (shape {tuple(own[k].shape)}){more(missing)}"
        )
    if unexpected:
        k = unexpected[0]
        shape = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
        raise RunError(
            f"{where} does not match its config: it holds {k!r} ({shape}), which the model lacks{more(unexpected)}"
        )
    for k, v in own.items():
        got = state[k]
        if not isinstance(got, torch.Tensor) or got.shape != v.shape:
            was = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise RunError(
                f"{where} does not match its config: {k!r} has shape {was}; the model needs {tuple(v.shape)}"
            )
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. a dtype that cannot be copied
        raise RunError(f"{where} does not match its config: {' '.join(str(e).split())[:200]}") from None
