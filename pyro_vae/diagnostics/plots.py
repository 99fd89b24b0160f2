"""Figures of ``pyro-vae diagnose``: k-hat, worst points, guide-vs-NUTS pair plots, gaps, SBC ECDF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._typing import Tensor
from ..evaluation.evaluate import Measure
from ..plots.images import as_images, plt, save_figure
from . import _arviz
from .report import Diagnosis


def _names(d: Diagnosis) -> tuple[str, str]:
    """Short names of the ELBO and of log p(x) for axis labels (evaluate.Measure decides which)."""
    m = Measure.from_kind(getattr(d, "measure", "log_likelihood"))
    return ("ELBO", "log p(x)") if m.normalized else ("CE bound", "CE L_K")


def _note(d: Diagnosis, fig: Any) -> None:
    """A footnote on figures whose bounds are Bernoulli cross-entropy bounds, not log-likelihoods."""
    if _names(d)[0] != "ELBO":
        fig.text(0.01, 0.005, "CE: Bernoulli cross-entropy bound (the data are not binary): not a log-likelihood",
                 fontsize=7, color="0.3")  # fmt: skip


def khat_figure(d: Diagnosis, path: Path) -> None:
    """k-hat per point (ArviZ's plot), its histogram, and the importance-weighting gain against it."""
    k = d.psis["khat"]
    kf = np.where(np.isfinite(k), k, np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    _arviz.plot_khat(k, axes[0])
    axes[0].set_title(f"PSIS k-hat per point ({len(k)} points, S={d.log_ratios.shape[1]})")
    axes[0].set_xlabel("data point (position in the scored subset)")
    axes[1].hist(kf[np.isfinite(kf)], bins=40, color="C0")
    for v, c in ((0.5, "C1"), (0.7, "C3")):
        axes[1].axvline(v, color=c, ls="--", lw=1)
    axes[1].set_title("distribution of k-hat (lines: 0.5, 0.7)")
    axes[1].set_xlabel("k-hat")
    axes[2].scatter(kf, d.psis["gap"], s=6, alpha=0.6)
    axes[2].set_xlabel("k-hat")
    axes[2].set_ylabel(f"L_S - {_names(d)[0]} (nats), S={d.log_ratios.shape[1]}")
    _note(d, fig)
    axes[2].set_yscale("symlog", linthresh=0.1)
    axes[2].set_title("importance-weighting gain vs k-hat")
    save_figure(fig, path, dpi=100)


def worst_points_figure(
    d: Diagnosis, path: Path, x: Tensor, event_shape: tuple[int, ...], vae: Any, y: Tensor | None, n: int = 8
) -> bool:
    """The ``n`` points with the largest k-hat (and their reconstructions); False if the data are not images."""
    k = np.where(np.isnan(d.psis["khat"]), np.inf, d.psis["khat"])
    order = np.argsort(k)[::-1][:n]
    idx = torch.as_tensor(d.index[order], device=x.device)
    imgs = as_images(x[idx], event_shape)
    if imgs is None:
        return False
    rec = None
    if vae is not None:
        rec = as_images(vae.reconstruct(x[idx], None if y is None else y[idx]), event_shape)
    rows = 1 if rec is None else 2
    fig, axes = plt.subplots(rows, len(order), figsize=(1.4 * len(order), 1.6 * rows + 0.5), squeeze=False)
    for j, i in enumerate(order):
        axes[0, j].imshow(imgs[j], cmap="Greys_r" if imgs.ndim == 3 else None, vmin=0, vmax=1)
        axes[0, j].set_title(f"#{int(d.index[i])}\nk={k[i]:.2f}", fontsize=8)
        if rec is not None:
            axes[1, j].imshow(rec[j], cmap="Greys_r" if rec.ndim == 3 else None, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("data", fontsize=8)
    if rec is not None:
        axes[1, 0].set_ylabel("recon.", fontsize=8)
    fig.suptitle("worst points by PSIS k-hat", fontsize=10)
    save_figure(fig, path, dpi=110)
    return True


def pair_figure(d: Diagnosis, m: int, path: Path, max_dims: int = 4) -> None:
    """Guide draws vs NUTS draws for NUTS point ``m``: histograms on the diagonal, scatter below it."""
    p = d.nuts_points[m]
    assert d.nuts_draws is not None
    ref = d.nuts_draws[m].reshape(-1, d.nuts_draws.shape[-1])
    g = d.guide_draws[:, m, :]
    dz = ref.shape[1]
    if dz <= max_dims:
        dims = list(range(dz))
    elif p.get("comparison"):
        dims = sorted(np.argsort(np.asarray(p["comparison"]["wasserstein_sd"]))[::-1][:max_dims].tolist())
    else:
        dims = sorted(np.argsort(np.abs(g.mean(0) - ref.mean(0)) / ref.std(0))[::-1][:max_dims].tolist())
    k = len(dims)
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k + 0.6, 2.3 * k + 0.6), squeeze=False)
    rng = np.random.default_rng(0)
    rs = ref[rng.permutation(len(ref))[:1500]]
    gs = g[rng.permutation(len(g))[:1500]]
    for a, i in enumerate(dims):
        for b, j in enumerate(dims):
            ax = axes[a, b]
            if a == b:
                lo = min(np.quantile(rs[:, i], 0.001), np.quantile(gs[:, i], 0.001))
                hi = max(np.quantile(rs[:, i], 0.999), np.quantile(gs[:, i], 0.999))
                bins = np.linspace(lo, hi, 40)
                ax.hist(rs[:, i], bins=bins, density=True, alpha=0.5, color="C0", label="NUTS")
                ax.hist(gs[:, i], bins=bins, density=True, histtype="step", color="C3", lw=1.5, label="guide q")
                ax.set_yticks([])
            elif a > b:
                ax.scatter(rs[:, j], rs[:, i], s=2, alpha=0.25, color="C0")
                ax.scatter(gs[:, j], gs[:, i], s=2, alpha=0.25, color="C3")
            else:
                ax.axis("off")
            if a == k - 1:
                ax.set_xlabel(f"z[{j}]")
            if b == 0 and a > 0:
                ax.set_ylabel(f"z[{i}]")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    gate = "gate passed" if p["gate_passed"] else "gate FAILED: " + "; ".join(p["gate_failures"])
    fig.suptitle(
        f"point #{p['index']} ({p['reason']}, k-hat {p['khat']:.2f}): NUTS (blue) vs guide (red)\n{gate}", fontsize=9
    )
    save_figure(fig, path, dpi=100)


def gaps_figure(d: Diagnosis, path: Path) -> None:
    """Per-point approximation and amortization gaps, and the local guides' optimization trace."""
    g = d.gap
    assert g is not None
    order = np.argsort(g["inference_gap"])
    x = np.arange(len(order))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    approx, amort = np.asarray(g["approximation_gap"])[order], np.asarray(g["amortization_gap"])[order]
    elbo, lpx = _names(d)
    _note(d, fig)
    axes[0].bar(x, approx, color="C0", label=f"approximation gap  {lpx} - {elbo}(local)")
    axes[0].bar(
        x,
        amort,
        bottom=np.where(amort > 0, approx, 0),
        color="C1",
        label=f"amortization gap  {elbo}(local) - {elbo}(amortized)",
    )
    axes[0].set_xlabel("point (sorted by inference gap)")
    axes[0].set_ylabel("nats")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"inference gap decomposition ({g['points']} points, local: {g['local_family']})", fontsize=9)
    steps, vals = zip(*g["optimization_trace"])
    axes[1].plot(steps, vals, marker=".")
    axes[1].axhline(g["mean_elbo_amortized"], color="C3", ls="--", lw=1, label=f"amortized {elbo} (K={g['K']})")
    axes[1].axhline(g["mean_log_px"], color="k", ls=":", lw=1, label=f"{lpx} (IWAE-{g['K']})")
    axes[1].set_xlabel("Adam step")
    axes[1].set_ylabel(f"mean {elbo} of the local guides (nats)")
    axes[1].set_title(f"per-point optimization ({g['train_particles']} particles/step)", fontsize=9)
    axes[1].legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def sbc_figure(d: Diagnosis, path: Path, max_lines: int = 20) -> None:
    """ECDF minus uniform of the PIT per latent dimension (simultaneous band), and the pooled PIT histogram."""
    c = d.calibration
    assert c is not None and d.pit is not None
    grid, ecdf = c["_grid"], c["_ecdf"]
    lo, hi = c["_band"]
    dz = ecdf.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    ax = axes[0]
    ax.fill_between(grid, lo - grid, hi - grid, color="0.85", label=f"{100 * c['band_prob']:.0f}% simultaneous band")
    show = np.argsort(np.abs(ecdf - grid).max(1))[::-1][:max_lines]
    for j in show:
        ax.plot(grid, ecdf[j] - grid, lw=1, alpha=0.8, label=f"z[{j}]" if len(show) <= 6 else None)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("PIT of z* under q(z|x)")
    ax.set_ylabel("ECDF - uniform")
    more = "" if dz <= max_lines else f" ({max_lines} of {dz} dims, the most extreme)"
    ax.set_title(f"SBC: ECDF difference per latent dim{more}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.hist(d.pit.reshape(-1), bins=20, range=(0, 1), density=True, color="C0", alpha=0.8)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel("PIT (all dims pooled)")
    ax.set_title(
        f"{c['simulations']} simulations; uniform: {c['uniform']}, VSBC symmetric: {c['symmetric']}", fontsize=9
    )
    save_figure(fig, path, dpi=100)


def all_figures(
    d: Diagnosis,
    fig_dir: Path,
    x: Tensor,
    event_shape: tuple[int, ...],
    vae: Any,
    y: Tensor | None,
    claim: Callable[[Path], Path] = lambda p: p,
) -> dict[str, Path]:
    """Every diagnostic figure in ``fig_dir``; ``claim(path)`` is called on each file before it is written."""
    paths: dict[str, Path] = {}
    paths["khat_png"] = fig_dir / "khat.png"
    khat_figure(d, claim(paths["khat_png"]))
    if worst_points_figure(d, claim(fig_dir / "worst_points.png"), x, event_shape, vae, y):
        paths["worst_points_png"] = fig_dir / "worst_points.png"
    for m, p in enumerate(d.nuts_points):
        key = f"pair_{p['index']}_png"
        paths[key] = fig_dir / f"pair_{p['index']}.png"
        pair_figure(d, m, claim(paths[key]))
    if d.gap is not None:
        paths["gaps_png"] = fig_dir / "gaps.png"
        gaps_figure(d, claim(paths["gaps_png"]))
    if d.calibration is not None:
        paths["sbc_png"] = fig_dir / "sbc_ecdf.png"
        sbc_figure(d, claim(paths["sbc_png"]))
    return paths


__all__ = ["all_figures", "gaps_figure", "khat_figure", "pair_figure", "sbc_figure", "worst_points_figure"]
