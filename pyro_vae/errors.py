"""Exceptions users can act on. The CLI turns these into one line on stderr and exit code 2."""


class PyroVAEError(ValueError):
    """Base class: bad usage, spec, data or run directory (exit code 2)."""

    def __str__(self) -> str:
        # One line whatever the user typed: a key like 'a\nb' is shown escaped, never as a line break.
        s = super().__str__()
        return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class SpecError(PyroVAEError):
    """A spec key, kind or value is invalid; the message names it and the valid choices."""


class DataError(PyroVAEError):
    """Data is missing, malformed, or cannot be scored by the chosen likelihood."""


class RunError(PyroVAEError):
    """A run directory or checkpoint is missing, foreign, truncated or would be overwritten."""
