"""The one module that imports ArviZ. Everything else in pyro-vae goes through these functions.

ArviZ is pinned ``<1`` (its 1.0 rewrite changes these APIs); the behaviour relied on was read from
the 0.23 sources:

- ``az.psislw(log_weights)`` takes the *log importance ratios* themselves (``loo`` passes
  ``-log_likelihood``, the LOO ratios), treats the last axis as draws for a NumPy array, and returns
  ``(smoothed normalized log weights, k-hat)``. With a tail of <= 4 distinct draws (e.g. constant
  ratios) it returns ``k = inf``; :func:`psis` maps ratios constant up to rounding (relative 1e-6) to
  ``-inf`` instead (the proposal equals the target up to a constant: the best case, not the worst).
- ``az.rhat`` (rank-normalized split R-hat) and ``az.ess`` (bulk / tail) read ``(chain, draw, ...)``.
- ``arviz.stats.ecdf_utils.ecdf_confidence_band`` gives simultaneous ECDF bands (Saeilynoja et al. 2022).
- ``InferenceData.to_netcdf`` writes one netCDF4 group per InferenceData group (needs ``h5netcdf``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import xarray as xr
from arviz.stats.ecdf_utils import ecdf_confidence_band

ARVIZ_VERSION = az.__version__


def psis(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling of ``(..., S)`` log ratios: (smoothed log weights, k-hat ``(...)``)."""
    lr = np.asarray(log_ratios, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "k-hat > 0.7" warnings: we report k-hat ourselves
        lw, k = az.psislw(lr.copy(), reff=1.0, normalize=True)
    k = np.array(k, dtype=np.float64, ndmin=1).reshape(lr.shape[:-1])
    # constant up to rounding (q = p(z|x) exactly): a GPD fit to rounding noise would be meaningless
    const = np.ptp(lr, axis=-1) <= 1e-6 * np.maximum(1.0, np.abs(lr).max(axis=-1))
    k[const] = -np.inf
    return np.asarray(lw), k


def chain_diagnostics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """R-hat (rank-normalized, split), bulk and tail ESS per coordinate of ``(chain, draw, dim)`` draws."""
    ds = xr.Dataset({"z": (("chain", "draw", "z_dim"), np.asarray(draws, dtype=np.float64))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "rhat": np.asarray(az.rhat(ds)["z"].values),
            "ess_bulk": np.asarray(az.ess(ds, method="bulk")["z"].values),
            "ess_tail": np.asarray(az.ess(ds, method="tail")["z"].values),
        }


def uniform_ecdf_band(n: int, eval_points: np.ndarray, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` band for the ECDF of ``n`` iid Uniform(0, 1) draws at ``eval_points``."""
    pts = np.asarray(eval_points, dtype=np.float64)
    rng = np.random.default_rng(0)  # the "optimized" method is deterministic; seeded for safety
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = ecdf_confidence_band(n, pts, pts, prob=prob, method="optimized", random_state=rng)
    return np.asarray(lo), np.asarray(hi)


def plot_khat(khat: np.ndarray, ax: Any) -> Any:
    """ArviZ's k-hat scatter (one point per data point) with the 0.5 / 0.7 / 1 reference lines."""
    finite = np.where(np.isfinite(khat), khat, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.plot_khat(finite, ax=ax, show_hlines=True, show=False, threshold=None)


Group = Mapping[str, tuple[tuple[str, ...], np.ndarray]]


def inference_data(
    groups: Mapping[str, Group], coords: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None
) -> az.InferenceData:
    """Build InferenceData from ``{group: {var: (dims, array)}}``; non-standard group names are allowed."""
    datasets = {}
    for name, variables in groups.items():
        ds = xr.Dataset(
            {v: (dims, np.asarray(a)) for v, (dims, a) in variables.items()},
            coords={k: c for k, c in (coords or {}).items() if any(k in d for d, _ in variables.values())},
            attrs=dict(attrs or {}),
        )
        datasets[name] = ds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "group X is not defined in the InferenceData scheme"
        return az.InferenceData(**datasets)  # type: ignore[arg-type]


def save(idata: az.InferenceData, path: Path | str) -> None:
    idata.to_netcdf(str(path), engine="h5netcdf")


def load(path: Path | str) -> az.InferenceData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.from_netcdf(str(path), engine="h5netcdf")


__all__ = [
    "ARVIZ_VERSION",
    "chain_diagnostics",
    "inference_data",
    "load",
    "plot_khat",
    "psis",
    "save",
    "uniform_ecdf_band",
]
