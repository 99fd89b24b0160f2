"""Figures of ``pyro-vae compare``: test bounds per epoch, and gradient SNR against the number of particles."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from ..evaluation.evaluate import Measure
from ..evaluation.gradients import GradientStats
from ..plots.images import plt, save_figure


def figures(
    summary: Mapping[str, Any],
    gradients: Sequence[GradientStats],
    out: Path,
    claim: Callable[[Path], Path] | None = None,
) -> list[Path]:
    """``curves.png`` (test log-likelihood and ELBO vs epoch) and ``gradient_snr.png`` (SNR vs K).

    ``claim(path)`` is called on each file before it is written (an output directory records it).
    """
    if claim is None:
        out.mkdir(parents=True, exist_ok=True)
        claim = lambda p: p
    paths = []
    curves = summary["curves"]
    has_ll = any("test_log_likelihood" in p for c in curves.values() for p in c)
    fig, axes = plt.subplots(1, 2 if has_ll else 1, figsize=(11 if has_ll else 6, 3.8), squeeze=False)
    rows = summary.get("estimators") or [{}]
    m = Measure.from_kind(rows[0].get("measure", "log_likelihood"))
    panels = (
        [("test_log_likelihood", f"test {m.label('log_likelihood') or 'L_K (point score)'} (nats)")] if has_ll else []
    ) + [("test_elbo", f"test {m.label('elbo')}, 1 draw (nats)")]
    for ax, (key, title) in zip(axes[0], panels):
        for i, (lab, c) in enumerate(curves.items()):
            pts = [(p["epoch"], p[key]) for p in c if key in p and not math.isnan(p[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=lab, color=f"C{i % 10}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        epochs = {p["epoch"] for c in curves.values() for p in c}
        if len(epochs) == 1:  # one point per estimator: keep the axis readable
            e = next(iter(epochs))
            ax.set_xlim(e - 0.5, e + 0.5)
            ax.set_xticks([e])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    paths.append(out / "curves.png")
    save_figure(fig, claim(paths[-1]))
    if gradients:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        names = list(dict.fromkeys(g.estimator for g in gradients))
        for ax, group in zip(axes, ("encoder", "decoder")):
            for i, name in enumerate(names):
                pts = sorted(
                    (g.num_particles, g.snr)
                    for g in gradients
                    if g.estimator == name and g.group == group and g.snr > 0
                )
                if pts:  # estimators often share a group's gradient exactly: markers/dashes keep both visible
                    ax.plot(*zip(*pts), marker="osD^v<>ph*"[i % 10], ms=7 - i % 4, ls=("-", "--", ":")[i % 3],
                            label=name, color=f"C{i % 10}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("particles K")
            ax.set_title(f"{group} gradient SNR (|mean| / std)")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        paths.append(out / "gradient_snr.png")
        save_figure(fig, claim(paths[-1]))
    return paths


__all__ = ["figures"]
