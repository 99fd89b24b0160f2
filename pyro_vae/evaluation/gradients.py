"""Gradient statistics of ELBO estimators: mean, variance and signal-to-noise ratio over draws.

For fixed parameters and a fixed batch, each estimator's gradient is a random vector (the draws of
z); :func:`gradient_stats` repeats it ``draws`` times for each number of particles K and summarizes
it per parameter group: ``encoder`` (the guide's parameters) and ``decoder`` (the model's: decoder,
prior, likelihood). SNR = |E g| / std g per coordinate (Rainforth et al. 2018, "Tighter variational
bounds are not necessarily better"): IWAE's encoder SNR falls like 1/sqrt(K), DReG's does not.
Also exposed as ``pyro_vae.gradient_stats`` and ``pyro-vae gradients RUN_DIR``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .._typing import Tensor
from ..errors import SpecError, brief
from ..models.vae import VAE
from ..registry import REGISTRY
from ..spec import parse_yaml

#: Calls made before measuring, so stateful estimators (score_function's baseline) are warmed up.
WARMUP_DRAWS = 5


@dataclass(frozen=True)
class GradientStats:
    """One estimator, one K, one parameter group. Averages are over gradient coordinates."""

    estimator: str  # label, e.g. "iwae" or "dreg:num_particles=5"
    num_particles: int  # K (per group for miwae/piwae)
    group: str  # "encoder" (guide parameters) or "decoder" (model parameters)
    draws: int  # independent gradient draws
    size: int  # number of gradient coordinates in the group
    mean_abs: float  # mean over coordinates of |E g|
    variance: float  # mean over coordinates of Var g
    snr: float  # mean over coordinates of |E g| / std g (coordinates with std > 0)
    snr_norm: float  # ||E g|| / sqrt(E ||g - E g||^2): one SNR for the whole vector (bias-corrected)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_estimator(item: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"iwae:num_particles=5:beta=0.5"`` -> ``{"kind": "iwae", "num_particles": 5, "beta": 0.5}``.

    Values are parsed as YAML; a mapping is returned as a copy. Nothing is validated here.
    """
    if isinstance(item, Mapping):
        return dict(item)
    kind, *pairs = str(item).strip().split(":")
    raw: dict[str, Any] = {"kind": kind.strip()}
    for pair in pairs:
        if "=" not in pair:
            raise SpecError(f"estimator {item!r}: {pair!r} is not KEY=VALUE (e.g. iwae:num_particles=5)")
        k, v = pair.split("=", 1)
        raw[k.strip()] = parse_yaml(v, f"estimator {brief(item)}: value {brief(v)}")
    return raw


def estimator_spec(item: str | Mapping[str, Any]) -> dict[str, Any]:
    """A validated ``elbo:`` spec (defaults filled) from a name with options or a mapping."""
    from ..spec import resolve_component

    raw = parse_estimator(item)
    return resolve_component("elbo", raw, f"estimator {label(item)!r}")


def label(item: str | Mapping[str, Any]) -> str:
    if isinstance(item, Mapping):
        return ":".join([str(item["kind"])] + [f"{k}={v}" for k, v in item.items() if k != "kind"])
    return str(item).strip()


def _groups(vae: VAE) -> dict[str, list[torch.nn.Parameter]]:
    seen: set[int] = set()
    out: dict[str, list[torch.nn.Parameter]] = {}
    for group, module in (("encoder", vae.guide), ("decoder", vae.model)):
        ps = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in ps)
        out[group] = ps
    return out


def _flat(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    parts = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    return torch.cat([t.reshape(-1) for t in parts]) if parts else torch.zeros(0)


def _summarize(label_: str, k: int, group: str, g: Tensor) -> GradientStats:
    g = g.double()  # (draws, size)
    mean = g.mean(0)
    var = g.var(0) if len(g) > 1 else torch.zeros_like(mean)
    std = var.sqrt()
    ok = std > 0
    snr = float((mean.abs()[ok] / std[ok]).mean()) if ok.any() else float("nan")
    spread = float(var.sum().sqrt())
    # ||mean||^2 overestimates ||E g||^2 by tr(Var)/draws: subtract it (clipped at 0).
    signal = max(float(mean.pow(2).sum()) - float(var.sum()) / len(g), 0.0) ** 0.5
    return GradientStats(
        estimator=label_,
        num_particles=k,
        group=group,
        draws=len(g),
        size=g.shape[1],
        mean_abs=float(mean.abs().mean()) if g.shape[1] else float("nan"),
        variance=float(var.mean()) if g.shape[1] else float("nan"),
        snr=snr,
        snr_norm=signal / spread if spread > 0 else float("nan"),
    )


def gradient_stats(
    vae: VAE,
    x: Tensor,
    estimators: Iterable[str | Mapping[str, Any]],
    particles: Sequence[int] = (1, 10, 100),
    draws: int = 100,
    y: Tensor | None = None,
    seed: int = 0,
) -> list[GradientStats]:
    """Mean, variance and SNR of each estimator's gradient of the batch-mean loss at ``vae``'s parameters.

    ``estimators``: names with options (``"dreg"``, ``"ciwae:mix=0.5"``) or ``elbo:`` mappings; for
    each K in ``particles`` the estimator is built with ``num_particles=K``. The KL weight is the
    model's current one (``vae.set_kl_weight``). Every (estimator, K) starts from the same ``seed``
    (common random numbers); the global RNG state is restored afterwards.
    """
    if draws < 2:
        raise ValueError(f"draws must be >= 2 to estimate a variance, got {draws}")
    if any(int(k) < 1 for k in particles):
        raise ValueError(f"particles must all be >= 1, got {list(particles)}")
    groups = _groups(vae)
    params = [p for ps in groups.values() for p in ps]
    cond = vae.cond(y)
    out: list[GradientStats] = []
    for item in estimators:
        base = estimator_spec(item)
        name = label(item)
        for k in particles:
            spec = {**base, "num_particles": int(k)}
            loss_fn = REGISTRY.build("elbo", spec)(vae.model, vae.guide)
            rows: dict[str, list[Tensor]] = {g: [] for g in groups}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                with torch.no_grad():
                    for _ in range(WARMUP_DRAWS):
                        loss_fn(x, cond)
                for _ in range(draws):
                    loss = loss_fn(x, cond) / len(x)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    i = 0
                    for g, ps in groups.items():
                        rows[g].append(_flat(grads[i : i + len(ps)], ps))
                        i += len(ps)
            for g in groups:
                out.append(_summarize(name, int(k), g, torch.stack(rows[g])))
    return out


def _cell(s: GradientStats | None, field: str) -> str:
    return "n/a" if s is None or math.isnan(getattr(s, field)) else f"{getattr(s, field):.3g}"


def stats_table(stats: Sequence[GradientStats]) -> str:
    """Markdown table: one row per (estimator, K), encoder and decoder SNR and variance side by side."""
    by: dict[tuple[str, int], dict[str, GradientStats]] = {}
    for s in stats:
        by.setdefault((s.estimator, s.num_particles), {})[s.group] = s
    lines = [
        "| estimator | K | encoder SNR | encoder variance | decoder SNR | decoder variance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, k), g in by.items():
        e, d = g.get("encoder"), g.get("decoder")
        lines.append(
            f"| {name} | {k} | {_cell(e, 'snr')} | {_cell(e, 'variance')} | {_cell(d, 'snr')} | {_cell(d, 'variance')} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["GradientStats", "estimator_spec", "gradient_stats", "label", "parse_estimator", "stats_table"]
