"""Checkpoints: tensors and plain containers only, written atomically, loaded with weights_only.

A checkpoint never holds pickled objects: loading uses ``torch.load(weights_only=True)``, which
refuses any payload that would execute code. The spec travels as YAML text.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import RunError

FORMAT = "pyro-vae-checkpoint"
VERSION = 1


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save(path: Path, state: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))
    except OSError as e:
        raise RunError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}; the previous checkpoint is intact") from None


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a truncated, foreign or code-carrying file raises :class:`RunError`."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for foreign payloads, RuntimeError/EOFError when truncated
        reason = " ".join(str(e).split())[:200]
        raise RunError(f"checkpoint {str(path)!r} is unreadable or unsafe ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(f"{str(path)!r} is not a pyro-vae checkpoint")
    if state.get("version") != VERSION:
        raise RunError(f"checkpoint {str(path)!r} has version {state.get('version')}; this pyro-vae reads {VERSION}")
    return state
