"""What the training loop measures: the per-epoch held-out numbers, the learning curve, the summary.

Each epoch's record in ``metrics.jsonl`` gets :func:`epoch_eval` (one-particle ELBO and its two terms
on the test and valid splits, and the ELBO at beta = 1 of the first :data:`TRAIN_ELBO_ROWS` training
points) and, every ``train.curve_every`` epochs, :func:`curve_eval` (the learning curve: mean L_K on
the first ``train.curve_points`` test points). Both draw from their own seeded stream, so the
training's random stream, and so every other number of the run, does not depend on them.
:func:`final_summary` is ``summary.json``: L_K with ``train.eval_particles`` on the whole test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import data as data_mod
from ..data import Dataset
from ..evaluation.evaluate import Measure, PointTerms, point_terms, summarize
from ..models.vae import VAE
from ..spec import TrainConfig
from . import nonfinite


@torch.no_grad()
def epoch_eval(vae: VAE, ds: Dataset) -> dict[str, float]:
    """One-particle ELBO and its two terms on the test (and valid) split, for the curves, and the
    one-particle ELBO at beta = 1 of a fixed subset of the training split (``train_elbo``)."""
    out: dict[str, float] = {}
    for split in ("test", "valid"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if not len(x):
            continue
        t = one_draw(vae, x, y)
        out[f"{split}_elbo"] = float(t.elbo.mean())
        if split == "test":
            out["test_reconstruction"] = float(t.reconstruction.mean())
            out["test_kl"] = float(t.kl.mean())
    if len(ds.x_train):
        x, y = train_rows(ds)
        # its own seeded draws: the training's random stream (and so every other number) is unchanged
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(0)
            out["train_elbo"] = float(one_draw(vae, x, y).elbo.mean())
    vae.train()
    return out


def curve_eval(vae: VAE, ds: Dataset, tcfg: TrainConfig) -> dict[str, float]:
    """The learning-curve point: mean L_K (K = ``curve_particles``) over the first ``curve_points``
    test points, with its own seeded draws so that the training's random stream is unchanged."""
    n = min(len(ds.x_test), tcfg.curve_points)
    if not n:
        return {}
    x, y = ds.x_test[:n], None if ds.y_test is None else ds.y_test[:n]
    with torch.random.fork_rng(devices=[ds.x_test.device] if ds.x_test.is_cuda else []):
        torch.manual_seed(0)
        ll = point_terms(vae, x, y, tcfg.curve_particles, means=False).log_likelihood
    vae.train()
    return {"curve_ll": float(ll.mean()), "curve_particles": tcfg.curve_particles, "curve_points": n}


#: Training rows behind ``train_elbo`` in metrics.jsonl: the first rows of the training split.
TRAIN_ELBO_ROWS = 2000


def train_rows(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first :data:`TRAIN_ELBO_ROWS` training points, as the model sees them; under dynamic
    binarization one fixed binarization of them (the same every epoch)."""
    m = min(len(ds.x_train), TRAIN_ELBO_ROWS)
    x = data_mod.as_float(ds.x_train[:m]).to(ds.x_test.device)
    y = None if ds.y_train is None else ds.y_train[:m].to(ds.x_test.device)
    if ds.binarize == "dynamic":
        x = data_mod.binarize(x.cpu(), torch.Generator().manual_seed(data_mod.SPLIT_SEED + 1)).to(x.device)
    return x, y


def one_draw(vae: VAE, x: torch.Tensor, y: torch.Tensor | None) -> PointTerms:
    """point_terms with one particle; NaN where parameters so large that a distribution gets NaN/inf arguments."""
    try:
        return point_terms(vae, x, y, num_particles=1, means=False)
    except ValueError as e:
        if not nonfinite.is_invalid_values(e):
            raise
        nan = torch.full((len(x),), math.nan)
        return PointTerms(nan, nan, nan, nan, nan)


def final_summary(vae: VAE, ds: Dataset, history: list[dict[str, Any]], tcfg: TrainConfig) -> dict[str, Any]:
    res = summarize(point_terms(vae, ds.x_test, ds.y_test, tcfg.eval_particles), "test", tcfg.eval_particles)
    extra_metrics: Callable[..., dict[str, Any]] | None = getattr(vae.guide, "extra_metrics", None)
    best = nonfinite.best_epoch(history)
    out = {
        "test_elbo": res.elbo,
        "test_log_likelihood": res.log_likelihood,
        "test_log_likelihood_stderr": res.log_likelihood_stderr,
        "eval_particles": tcfg.eval_particles,
        "test_kl": res.kl,
        "test_reconstruction": res.reconstruction,
        "active_units": res.active_units,
        "epochs": history[-1]["epoch"] if history else 0,
        "train_seconds": sum(r["seconds"] for r in history),
        # the estimator's loss at the last epoch's KL weight: a training objective, not a -ELBO
        "final_train_objective": objective(history[-1]) if history else None,
        "best_epoch": None if best is None else best["epoch"],  # the epoch saved in best.pt
        "skipped_steps": history[-1]["skipped_steps"] if history else 0,
        # model-specific figures, e.g. VQ-VAE codebook usage/perplexity/dead codes (guide.extra_metrics)
        **(extra_metrics(vae, data_mod.as_float(ds.x_test)) if extra_metrics is not None else {}),
    }
    # measure/labels say what test_elbo, test_log_likelihood and test_kl are (pyro_vae.evaluation.Measure)
    return Measure.from_kind(res.measure).fields(out, prefix="test_", k=tcfg.eval_particles)


def objective(record: Mapping[str, Any]) -> float:
    """A metrics record's training objective (``train_objective``, else ``train_loss``: the same number)."""
    return float(record["train_objective"] if "train_objective" in record else record["train_loss"])


__all__ = ["TRAIN_ELBO_ROWS", "curve_eval", "epoch_eval", "final_summary", "objective", "one_draw", "train_rows"]
