"""The files of a diagnosis: ``diagnostics.json`` (every number), ``posterior.nc`` (ArviZ) and ``figures/``.

In the JSON, non-finite numbers are ``null``: k-hat is ``-inf`` when the log ratios are constant up to
rounding (q equals the posterior up to a constant) and ``inf`` when ArviZ cannot fit the tail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._typing import Tensor
from . import _arviz
from .plots import all_figures
from .report import Diagnosis


def _plain(v: Any) -> Any:
    """JSON-safe: arrays to lists, non-finite floats to null."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, torch.Tensor):
        return _plain(v.detach().cpu().tolist())
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def inference_data(d: Diagnosis, x_nuts: np.ndarray | None = None) -> Any:
    """ArviZ InferenceData of a diagnosis.

    - ``posterior``: guide draws ``z`` (chain=1, draw=S, nuts_point, z_dim) of the NUTS points; these are
      the draws behind their ``log_ratio`` values.
    - ``sample_stats``: ``log_ratio`` (chain=1, draw=S, point) for every scored point, ``khat``, ``elbo``,
      ``iwae`` (point); the ``point`` coordinate is the position in the split.
    - ``nuts_posterior``: NUTS draws ``z`` (chain, draw, nuts_point, z_dim); ``nuts_sample_stats``: gate
      results per NUTS point (``gate_passed`` false: do not use those draws).
    """
    s, _, dz = d.guide_draws.shape
    coords = {
        "point": d.index,
        "nuts_point": np.array([p["index"] for p in d.nuts_points], dtype=int),
        "z_dim": np.arange(dz),
        "chain": np.arange(1),
        "draw": np.arange(s),
    }
    groups: dict[str, Any] = {
        "posterior": {"z": (("chain", "draw", "nuts_point", "z_dim"), d.guide_draws[None])},
        "sample_stats": {
            "log_ratio": (("chain", "draw", "point"), d.log_ratios.T[None]),
            "khat": (("point",), d.psis["khat"]),
            "elbo": (("point",), d.psis["elbo"]),
            "iwae": (("point",), d.psis["iwae"]),
        },
    }
    if d.nuts_draws is not None:
        nd = np.transpose(d.nuts_draws, (1, 2, 0, 3))  # (C, T, M, D)
        groups["nuts_posterior"] = {"z": (("nuts_chain", "nuts_draw", "nuts_point", "z_dim"), nd)}
        groups["nuts_sample_stats"] = {
            "gate_passed": (("nuts_point",), np.array([p["gate_passed"] for p in d.nuts_points])),
            "divergences": (("nuts_point",), np.array([p["divergences"] for p in d.nuts_points])),
            "rhat": (("nuts_point", "z_dim"), np.stack([p["rhat"] for p in d.nuts_points])),
            "ess_bulk": (("nuts_point", "z_dim"), np.stack([p["ess_bulk"] for p in d.nuts_points])),
        }
        coords.update({"nuts_chain": np.arange(nd.shape[0]), "nuts_draw": np.arange(nd.shape[1])})
        if x_nuts is not None:
            groups["observed_data"] = {"x": (("nuts_point", "feature"), x_nuts.reshape(len(x_nuts), -1))}
    return _arviz.inference_data(groups, coords, attrs={"created_by": "pyro-vae diagnose"})


def write_outputs(
    d: Diagnosis,
    out: Path,
    x: Tensor,
    event_shape: tuple[int, ...],
    vae: Any = None,
    y: Tensor | None = None,
    claim: Callable[[Path], Path] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """diagnostics.json, posterior.nc and figures/ in ``out``; ``x`` are the points of the split.

    ``claim(path)`` is called on each file before it is written (an output directory records it);
    ``extra`` entries are added to diagnostics.json (e.g. the checkpoint the model came from).
    """
    fig_dir = out / "figures"
    if claim is None:
        fig_dir.mkdir(parents=True, exist_ok=True)
        claim = lambda p: p
    paths = {"json": out / "diagnostics.json", "netcdf": out / "posterior.nc"}
    x_nuts = None
    if d.nuts_points:
        x_nuts = x[torch.tensor([p["index"] for p in d.nuts_points], device=x.device)].detach().cpu().numpy()
    _arviz.save(inference_data(d, x_nuts), claim(paths["netcdf"]))
    paths.update(all_figures(d, fig_dir, x, event_shape, vae, y, claim=claim))
    report = {**(extra or {}), **d.report()}
    report["files"] = {k: str(v) for k, v in paths.items()}
    with open(claim(paths["json"]), "w") as f:
        json.dump(_plain(report), f, indent=1)
    return paths


__all__ = ["inference_data", "write_outputs"]
