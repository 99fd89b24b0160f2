"""Figures for a run: loss curves (terms on separate axes), reconstructions, samples, latent plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from .._typing import Shape, Tensor
from ..data import Dataset, as_float
from ..evaluation.evaluate import Measure, measure_of
from ..models.vae import VAE
from .images import as_images, plt, save_figure, save_grid


def loss_curves(history: list[dict[str, Any]], path: Path, measure: Measure | None = None) -> None:
    """The training objective and the held-out negative bound, then the reconstruction and KL terms,
    each on its own axes, named by ``measure`` (what the held-out numbers are; default: a normalized
    likelihood and a guide with a density)."""
    m = measure or Measure()
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    # the estimator's loss at the scheduled KL weight: with a warm-up, beta != 1 or an IWAE-type
    # estimator it is not the -ELBO (train_loss in a metrics.jsonl that has no train_objective)
    objective = [r.get("train_objective", r.get("train_loss", math.nan)) for r in history]
    axes[0].plot(ep, objective, label=m.label("train_objective"))
    bound = m.label("elbo")
    if "train_elbo" in history[0]:  # beta = 1, a fixed subset of the training split
        axes[0].plot(ep, [-r["train_elbo"] for r in history], label=f"train -[{bound}], 1 draw", alpha=0.8)
    if "test_elbo" in history[0]:
        axes[0].plot(ep, [-r["test_elbo"] for r in history], label=f"test -[{bound}], 1 draw")
    if "valid_elbo" in history[0]:
        axes[0].plot(ep, [-r["valid_elbo"] for r in history], label=f"valid -[{bound}], 1 draw", alpha=0.7)
    axes[0].set_title("minimized (nats / data point)")
    axes[0].legend(fontsize=7)
    if "test_reconstruction" in history[0]:
        axes[1].plot(ep, [-r["test_reconstruction"] for r in history], color="C2")
        rec = "cross-entropy E_q[CE(x, decoder(z))]" if not m.normalized else "-E_q[log p(x|z)]"
        axes[1].set_title(f"test reconstruction {rec}", fontsize=9)
        axes[2].plot(ep, [r["test_kl"] for r in history], color="C3")
        axes[2].set_title(f"test {m.label('kl')}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=110)


def latent_scatter(means: Tensor, labels: Tensor | None, path: Path, title: str = "test set: posterior means") -> None:
    """The first two coordinates of ``means``, coloured by integer ``labels`` when there are any."""
    m = means.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 5.2))
    if labels is not None and not labels.dtype.is_floating_point:
        sc = ax.scatter(m[:, 0], m[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=6, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(m[:, 0], m[:, 1], s=6, alpha=0.6)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    save_figure(fig, path, dpi=110)


@torch.no_grad()
def manifold(vae: VAE, event_shape: Shape, path: Path, n: int = 15, cond: Tensor | None = None) -> None:
    """The learned manifold of a 2-d latent (Kingma & Welling 2014, fig. 4): decode the grid of
    standard-normal quantiles ``norm.ppf(linspace(.05, .95, n))`` in both coordinates."""
    from scipy.stats import norm

    q = torch.as_tensor(norm.ppf(np.linspace(0.05, 0.95, n)), dtype=torch.float32)
    dev = next(vae.parameters()).device
    zy, zx = torch.meshgrid(q, q, indexing="ij")
    z = torch.stack([zx.flatten(), zy.flatten()], -1).to(dev)
    imgs = as_images(vae.decode_mean(z, None if cond is None else cond.expand(len(z), -1)), event_shape)
    if imgs is not None:
        save_grid(imgs, n, n, path, title="decoded normal-quantile grid of z")


@torch.no_grad()
def traversal(vae: VAE, x: Tensor, event_shape: Shape, path: Path, n: int = 11, span: float = 3.0) -> None:
    """Latent traversal (beta-VAE figures): one row per latent dimension d, decoding the posterior mean
    of ``x`` (one point) with z_d replaced by values in [-span, span]; other coordinates fixed."""
    z0 = vae.posterior_mean(x).reshape(-1)
    d = z0.numel()
    vals = torch.linspace(-span, span, n, device=z0.device)
    z = z0.repeat(d, n, 1)  # (d, n, d)
    for i in range(d):
        z[i, :, i] = vals
    imgs = as_images(vae.decode_mean(z.reshape(d * n, d)), event_shape)
    if imgs is not None:
        save_grid(imgs, d, n, path, f"latent traversal: z_d from {-span:g} to {span:g}, one row per dimension d",
                  row_labels=[f"z{i}" for i in range(d)])  # fmt: skip


@torch.no_grad()
def run_figures(
    vae: VAE, ds: Dataset, history: list[dict[str, Any]], out: Path, claim: Callable[[Path], Path] | None = None
) -> list[Path]:
    """Write every figure for a trained run into ``out``; returns the paths written.

    ``claim(path)`` is called on each file before it is written (a run directory records it).
    """
    out = Path(out)
    if claim is None:
        out.mkdir(parents=True, exist_ok=True)
    at: Callable[[str], Path] = (lambda name: out / name) if claim is None else (lambda name: claim(out / name))
    vae.eval()
    written: list[Path] = []
    if history:
        loss_curves(history, at("loss.png"), measure_of(vae, ds.x_test))
        written.append(out / "loss.png")
    x, y = as_float(ds.x_test[:16]), (None if ds.y_test is None else ds.y_test[:16])
    imgs = as_images(torch.cat([x, vae.reconstruct(x, y)]), ds.event_shape)
    if imgs is not None:
        save_grid(imgs, 2, len(x), at("reconstructions.png"), "test inputs (top) and reconstructions (bottom)")
        written.append(out / "reconstructions.png")
    conditional = getattr(vae, "conditional", False)
    classes = getattr(vae, "num_classes", 0)
    if classes:  # CVAE on labels: one row per class
        y_grid = torch.arange(classes, device=x.device).repeat_interleave(10)
        samples = as_images(vae.sample(len(y_grid), y_grid), ds.event_shape)
        if samples is not None:
            save_grid(samples, classes, 10, at("samples.png"), "E[x|z,y], z ~ p(z|y), one row per class y",
                      row_labels=[str(c) for c in range(classes)])  # fmt: skip
            written.append(out / "samples.png")
    elif not conditional:  # a tensor-conditioned CVAE has no condition-free samples
        samples = as_images(vae.sample(64), ds.event_shape)
        if samples is not None:
            save_grid(samples, 8, 8, at("samples.png"), "E[x|z] for z ~ p(z)")
            written.append(out / "samples.png")
    continuous = not getattr(vae.guide, "discrete", False)  # VQ-VAE codes are not a Euclidean latent
    if vae.latent_dim == 2 and continuous:
        means = vae.posterior_mean(as_float(ds.x_test), ds.y_test)
        latent_scatter(means, ds.y_test, at("latent.png"))
        written.append(out / "latent.png")
        if not conditional:
            manifold(vae, ds.event_shape, at("manifold.png"))
            written.append(out / "manifold.png")
    if 2 < vae.latent_dim <= 16 and continuous and not conditional and ds.is_image:
        traversal(vae, as_float(ds.x_test[:1]), ds.event_shape, at("traversal.png"))
        written.append(out / "traversal.png")
    vae.train()
    return written


__all__ = ["latent_scatter", "loss_curves", "manifold", "run_figures", "traversal"]
