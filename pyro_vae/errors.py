"""Exceptions users can act on. The CLI turns these into one line on stderr and exit code 2."""


class PyroVAEError(ValueError):
    """Base class: bad usage, spec, data or run directory (exit code 2)."""


class SpecError(PyroVAEError):
    """A spec key, kind or value is invalid; the message names it and the valid choices."""


class DataError(PyroVAEError):
    """Data is missing, malformed, or cannot be scored by the chosen likelihood."""


class RunError(PyroVAEError):
    """A run directory or checkpoint is missing, foreign, truncated or would be overwritten."""
