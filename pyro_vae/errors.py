"""Exceptions users can act on. The CLI turns these into one line on stderr and exit code 2.

:func:`brief` is how every message shows a user's value: a bounded ``repr`` (nested containers and
long strings are cut, with the full length stated), so a 2 MB value gives a readable line, not a
3 MB one, and a message never has to render a huge structure first.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

#: Longest message a :class:`PyroVAEError` prints; longer ones are cut in the middle.
MAX_MESSAGE = 600

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlong = 40


def brief(value: Any, limit: int = 100) -> str:
    """``repr(value)`` cut to about ``limit`` characters (containers show their first items)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 20]) + f"... ({len(value):,} characters)"
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` if short enough, else its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 4) :]
    return f"{head} ...[{len(text) - len(head) - len(tail):,} characters cut]... {tail}"


class PyroVAEError(ValueError):
    """Base class: bad usage, spec, data or run directory (exit code 2)."""

    def __str__(self) -> str:
        # One line whatever the user typed: a key like 'a\nb' is shown escaped, never as a line break.
        s = cut(super().__str__())
        return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class SpecError(PyroVAEError):
    """A spec key, kind or value is invalid; the message names it and the valid choices."""


class DataError(PyroVAEError):
    """Data is missing, malformed, or cannot be scored by the chosen likelihood."""


class RunError(PyroVAEError):
    """A run directory or checkpoint is missing, foreign, truncated or would be overwritten."""


def input_file(path: str | os.PathLike[str], what: str, error: type[PyroVAEError], max_bytes: int = 0) -> Path:
    """``path`` as a :class:`Path` if it is a readable regular file, else ``error`` saying what it is.

    Only ``stat`` is used, never ``open``, so a named pipe cannot block and ``/dev/zero`` is never
    read: a directory, FIFO, device or socket is named as such, not reported as missing.
    ``max_bytes`` > 0 also refuses larger files.
    """
    p = Path(path).expanduser()
    q = brief(str(path), 200)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} {q} does not exist") from None
    except ValueError:  # an embedded NUL byte
        raise error(f"{what} {q} is not a valid path") from None
    except OSError as e:
        raise error(f"{what} {q} cannot be read: {e.strerror or e}") from None
    mode = st.st_mode
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, kind in kinds:
        if test(mode):
            raise error(f"{what} {q} is {kind}, not a file")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {q} is not a regular file")
    if max_bytes and st.st_size > max_bytes:
        raise error(f"{what} {q} is {st.st_size:,} bytes; the limit is {max_bytes:,}")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {q} cannot be read: permission denied")
    return p


__all__ = ["DataError", "PyroVAEError", "RunError", "SpecError", "brief", "cut", "input_file"]
