"""Posterior diagnostics: can the amortized posterior q(z|x) be trusted, data point by data point?

``pyro-vae diagnose RUN_DIR`` runs four checks against the generic guide interface
(``vae.guide.dist(x, cond)``: a reparameterizable distribution with event dim 1), so it works for every
posterior family:

1. **PSIS k-hat per point** (Yao, Vehtari, Simpson & Gelman 2018; Vehtari et al. 2024): ``S`` draws
   from q(z|x), log ratios ``log p(x, z) - log q(z|x)`` (unscaled: beta never enters), Pareto-smoothed
   by ArviZ. k-hat < 0.5: importance sampling with q converges fast; 0.5-0.7: slowly; > 0.7: q misses
   mass that p(z|x) has, and neither q's moments nor importance-weighted ones can be trusted.
   Per point also the ELBO, the importance-weighted bound L_S and their gap.
2. **Reference posterior by NUTS** (``pyro.infer.NUTS``) for ``M`` points (worst, median and random
   k-hat): z only, decoder frozen. The ``C`` chains are ``C`` independent copies of z advanced by one
   vectorized NUTS kernel (step size shared, diagonal mass matrix per coordinate), started
   over-dispersed around guide draws. Gate: R-hat <= 1.01, bulk ESS >= ``min_ess``, no divergences;
   if it fails the draws are kept in the files but no comparison is made from them.
3. **Amortization gap** (Cremer, Li & Duvenaud 2018): a per-point guide of the same family (diagonal
   or full-rank Gaussian; other families fall back to a diagonal Gaussian, which the output says) is
   optimized from the encoder's output. log p(x) ~ the IWAE-K bound of whichever guide has the smaller
   PSIS k-hat (the larger bound would be biased up: heavy-tailed weights overshoot);
   approximation gap = log p(x) - ELBO(local), amortization gap = ELBO(local) - ELBO(amortized).
4. **Calibration** (simulation-based calibration, Talts et al. 2018): z* ~ p(z), x ~ p(x|z*) from the
   trained model, then the rank of z*_d among ``L`` draws of q(z|x) per dimension, randomized to a
   PIT in (0, 1): uniform iff q is calibrated. KS test per dimension (Bonferroni), ECDF-difference plot
   with simultaneous bands, and the VSBC symmetry test (Yao et al. 2018) for directional bias.

Outputs in ``--out`` (default ``RUN_DIR/diagnostics``): ``diagnostics.json`` (every number),
``posterior.nc`` (ArviZ InferenceData, see :func:`inference_data`), ``figures/*.png`` and a verdict.
In the JSON, non-finite numbers are ``null``: k-hat is ``-inf`` when the log ratios are constant up to
rounding (q equals the posterior up to a constant) and ``inf`` when ArviZ cannot fit the tail.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from scipy import stats
from torch import nn
from torch.distributions import Independent as _Independent
from torch.distributions import LowRankMultivariateNormal as _LowRankMVN
from torch.distributions import MultivariateNormal as _MVN
from torch.distributions import Normal as _Normal

from . import _arviz, runlock
from ._typing import Tensor
from .errors import RunError, SpecError
from .estimators import log_terms
from .evaluate import ROW_BUDGET
from .models.vae import Generative

KHAT_GOOD = 0.5
KHAT_BAD = 0.7


@dataclass(frozen=True)
class DiagnoseOptions:
    """Settings of ``pyro-vae diagnose`` (command-line flags in brackets)."""

    points: int = 500  # [--points] data points scored by PSIS (a seeded subset of the split; all if fewer)
    samples: int = 1000  # [--samples] S draws from q(z|x) per point for PSIS
    nuts: int = 3  # [--nuts] M points with a NUTS reference posterior (0: skip)
    chains: int = 4  # [--chains] NUTS chains per point
    warmup: int = 500  # [--warmup] NUTS warm-up iterations
    draws: int = 500  # [--draws] NUTS draws kept per chain
    max_rhat: float = 1.01  # gate: rank-normalized split R-hat of every coordinate
    min_ess: float = 400.0  # gate: bulk ESS (all chains together) of every coordinate
    gap_points: int = 20  # [--gap-points] points for the amortization gap (the NUTS points first; 0: skip)
    gap_steps: int = 500  # Adam steps of each per-point guide
    gap_lr: float = 0.02  # Adam, cosine-decayed to 1% over gap_steps
    gap_train_particles: int = 16
    gap_particles: int = 5000  # K of the IWAE-K log p(x) and of the final ELBO estimates
    sbc: int = 500  # [--sbc] simulations for calibration (0: skip)
    sbc_draws: int = 99  # L draws from q per simulation: ranks 0..L
    alpha: float = 0.01  # family-wise level of the uniformity and symmetry tests
    split: str = "test"  # [--split]
    seed: int = 0  # [--seed]
    row_budget: int = ROW_BUDGET  # decoder evaluations per forward pass (memory bound)

    def check(self) -> None:
        positive = (
            "points",
            "samples",
            "chains",
            "warmup",
            "draws",
            "gap_steps",
            "gap_train_particles",
            "gap_particles",
            "sbc_draws",
            "row_budget",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        for name in ("nuts", "gap_points", "sbc"):
            if getattr(self, name) < 0:
                raise SpecError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.samples < 20:
            raise SpecError(f"--samples {self.samples}: PSIS needs at least 20 draws per point (use >= 200)")
        if self.draws < 4:
            raise SpecError(f"--draws {self.draws}: R-hat needs at least 4 draws per chain")
        if self.split not in ("train", "valid", "test"):
            raise SpecError(f"--split {self.split!r}: valid choices: train, valid, test")


# --------------------------------------------------------------------------------------------------
# densities


def log_joint(model: Any, x: Tensor, cond: Tensor | None, z: Tensor) -> Tensor:
    """Unscaled log p(x, z) of the Pyro ``model`` for ``z`` of shape ``(K, B, D)``; returns ``(K, B)``.

    ``K`` is vectorized by a plate at dim -2 (the model's data plate is dim -1), as in
    :func:`pyro_vae.estimators.log_terms`; any model with sites ``z`` and ``x`` works. The plain
    :class:`~pyro_vae.models.vae.Generative` takes a direct path without Pyro's tracing (the same
    numbers, about half the cost per NUTS leapfrog step; a test checks they agree).
    """
    if type(model).forward is Generative.forward:
        zc = z if cond is None else torch.cat([z, cond.expand(*z.shape[:-1], cond.shape[-1])], dim=-1)
        return model.prior_dist(cond).log_prob(z) + model.likelihood(model.decoder(zc)).log_prob(x)
    return log_joint_traced(model, x, cond, z)


def log_joint_traced(model: Callable[..., Any], x: Tensor, cond: Tensor | None, z: Tensor) -> Tensor:
    """:func:`log_joint` through a Pyro trace of ``model`` conditioned on ``z`` (any model)."""
    with pyro.plate("_draws", z.shape[0], dim=-2):
        tr = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x, cond)
    tr.compute_log_prob()
    total: Tensor | float = 0.0
    for site in tr.nodes.values():
        if site["type"] == "sample":
            total = total + site["unscaled_log_prob"]
    assert isinstance(total, torch.Tensor)
    return total.expand(z.shape[:-1])


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` stop requiring gradients inside the block (decoder frozen)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def check_guide(vae: Any, x: Tensor, cond: Tensor | None) -> None:
    """Diagnostics need a continuous, reparameterizable q(z|x) with event dim 1."""
    q = vae.guide.dist(x[:1], None if cond is None else cond[:1])
    if not q.has_rsample or q.event_dim != 1 or getattr(q.support, "is_discrete", False):
        raise RunError(
            f"diagnose: guide {type(vae.guide).__name__} gives {type(q).__name__} (event dim {q.event_dim}, "
            f"rsample {q.has_rsample}); diagnostics need a continuous reparameterized q(z|x) with event dim 1"
        )
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leaves the seeded stream of the checks untouched
        two = q.sample((2,))
    if torch.equal(two[0], two[1]):
        raise RunError(
            f"diagnose: guide {type(vae.guide).__name__} is a point mass ({type(q).__name__}); "
            "importance ratios, NUTS comparisons and calibration need a guide with a density"
        )


# --------------------------------------------------------------------------------------------------
# 1. PSIS


@torch.no_grad()
def guide_log_ratios(
    vae: Any, x: Tensor, y: Tensor | None, num_samples: int, row_budget: int = ROW_BUDGET
) -> tuple[Tensor, Tensor]:
    """``(N, S)`` log ratios log p(x, z_s) - log q(z_s|x) and the ``(S, N, D)`` draws z_s ~ q(z|x)."""
    per = max(1, row_budget // num_samples)
    ratios, draws = [], []
    for s in range(0, len(x), per):
        xb = x[s : s + per]
        cond = vae.cond(None if y is None else y[s : s + per])
        t = log_terms(vae.model, vae.guide, (xb, cond), {}, num_samples, scaled=False)
        ratios.append(t.log_weight.T.float().cpu())
        draws.append(t.guide_trace.nodes["z"]["value"].reshape(num_samples, len(xb), -1).float().cpu())
    return torch.cat(ratios), torch.cat(draws, dim=1)


def psis_summary(log_ratios: Tensor) -> dict[str, np.ndarray]:
    """k-hat, ELBO, L_S and gap per point from ``(N, S)`` log ratios."""
    lr = log_ratios.double()
    _, khat = _arviz.psis(lr.numpy())
    elbo = lr.mean(1)
    iwae = torch.logsumexp(lr, 1) - math.log(lr.shape[1])
    return {"khat": khat, "elbo": elbo.numpy(), "iwae": iwae.numpy(), "gap": (iwae - elbo).numpy()}


def khat_shares(khat: np.ndarray) -> dict[str, float]:
    k = np.where(np.isnan(khat), np.inf, khat)
    return {
        "share_below_0.5": float(np.mean(k < KHAT_GOOD)),
        "share_0.5_to_0.7": float(np.mean((k >= KHAT_GOOD) & (k < KHAT_BAD))),
        "share_above_0.5": float(np.mean(k >= KHAT_GOOD)),
        "share_above_0.7": float(np.mean(k >= KHAT_BAD)),
        "share_above_1": float(np.mean(k >= 1.0)),
    }


def select_points(khat: np.ndarray, m: int, gen: torch.Generator) -> list[tuple[int, str]]:
    """Up to ``m`` distinct positions: worst k-hat, median k-hat, then random and next-worst alternately."""
    k = np.where(np.isnan(khat), np.inf, khat)
    order = np.argsort(k, kind="stable")
    chosen: list[tuple[int, str]] = []
    taken: set[int] = set()

    def add(i: int, why: str) -> None:
        if len(chosen) < m and int(i) not in taken:
            taken.add(int(i))
            chosen.append((int(i), why))

    add(order[-1], "worst k-hat")
    add(order[len(order) // 2], "median k-hat")
    perm = torch.randperm(len(k), generator=gen).tolist()
    worst = list(order[::-1][1:])
    while len(chosen) < min(m, len(k)):
        while perm and perm[0] in taken:
            perm.pop(0)
        if perm:
            add(perm.pop(0), "random")
        while worst and int(worst[0]) in taken:
            worst.pop(0)
        if worst:
            add(worst.pop(0), "next-worst k-hat")
    return chosen


# --------------------------------------------------------------------------------------------------
# 2. NUTS reference


@dataclass
class NutsResult:
    draws: np.ndarray  # (chains, draws, D)
    divergences: int
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    step_size: float
    seconds: float
    gate_failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.gate_failures

    def summary(self) -> dict[str, Any]:
        return {
            "gate_passed": self.passed,
            "gate_failures": self.gate_failures,
            "max_rhat": float(np.max(self.rhat)),
            "min_ess_bulk": float(np.min(self.ess_bulk)),
            "min_ess_tail": float(np.min(self.ess_tail)),
            "divergences": self.divergences,
            "step_size": self.step_size,
            "seconds": self.seconds,
            "rhat": self.rhat,
            "ess_bulk": self.ess_bulk,
            "ess_tail": self.ess_tail,
            "mean": self.draws.reshape(-1, self.draws.shape[-1]).mean(0),
            "sd": self.draws.reshape(-1, self.draws.shape[-1]).std(0, ddof=1),
        }


def nuts_reference(
    model: Callable[..., Any],
    x: Tensor,
    cond: Tensor | None,
    init: Tensor,
    warmup: int,
    draws: int,
    max_rhat: float = 1.01,
    min_ess: float = 400.0,
) -> NutsResult:
    """NUTS on p(z | x) for ONE point ``x`` (shape ``(1, *event)``); ``init`` ``(chains, D)`` starts the chains.

    The model's parameters must be frozen by the caller (:func:`frozen`); only z moves.
    """
    chains, d = init.shape

    def potential(params: dict[str, Tensor]) -> Tensor:
        z = params["z"].reshape(chains, 1, d)
        return -log_joint(model, x, cond, z).sum()

    kernel = NUTS(potential_fn=potential, target_accept_prob=0.8, adapt_step_size=True, adapt_mass_matrix=True)
    mcmc = MCMC(
        kernel,
        num_samples=draws,
        warmup_steps=warmup,
        initial_params={"z": init.reshape(-1).detach().clone()},
        disable_progbar=True,
    )
    t0 = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - t0
    z = mcmc.get_samples()["z"].reshape(draws, chains, d).transpose(0, 1).double().cpu().numpy()
    divergences = sum(len(v) for v in mcmc.diagnostics().get("divergences", {}).values())
    diag = _arviz.chain_diagnostics(z)
    res = NutsResult(
        z, int(divergences), diag["rhat"], diag["ess_bulk"], diag["ess_tail"], float(kernel.step_size), seconds
    )
    if not np.all(res.rhat <= max_rhat):
        res.gate_failures.append(f"max R-hat {np.nanmax(res.rhat):.4f} > {max_rhat}")
    if not np.all(res.ess_bulk >= min_ess):
        res.gate_failures.append(f"min bulk ESS {np.nanmin(res.ess_bulk):.0f} < {min_ess:.0f}")
    if res.divergences:
        res.gate_failures.append(f"{res.divergences} divergent transitions")
    return res


def compare_draws(guide: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Guide draws ``(S, D)`` against reference draws ``(n, D)``, per dimension, in reference-sd units."""
    m_q, m_r = guide.mean(0), ref.mean(0)
    s_q, s_r = guide.std(0, ddof=1), ref.std(0, ddof=1)
    w = np.array([stats.wasserstein_distance(guide[:, j], ref[:, j]) for j in range(guide.shape[1])])
    md = (m_q - m_r) / s_r
    return {
        "mean_diff_sd": md,
        "sd_ratio": s_q / s_r,
        "sd_diff_sd": (s_q - s_r) / s_r,
        "wasserstein": w,
        "wasserstein_sd": w / s_r,
        "max_abs_mean_diff_sd": float(np.max(np.abs(md))),
        "min_sd_ratio": float(np.min(s_q / s_r)),
        "max_sd_ratio": float(np.max(s_q / s_r)),
        "max_wasserstein_sd": float(np.max(w / s_r)),
    }


# --------------------------------------------------------------------------------------------------
# 3. amortization gap


class LocalGaussian(nn.Module):
    """Per-point Gaussian guides for ``G`` points at once (independent parameters, no encoder)."""

    def __init__(self, loc: Tensor, scale: Tensor | None = None, scale_tril: Tensor | None = None) -> None:
        super().__init__()
        self.full = scale_tril is not None
        self.loc = nn.Parameter(loc.detach().clone())
        if scale_tril is not None:
            diag = scale_tril.diagonal(dim1=-2, dim2=-1)
            raw = torch.tril(scale_tril, -1) + torch.diag_embed(diag.clamp_min(1e-8).log())
            self.raw = nn.Parameter(raw.detach().clone())
        else:
            assert scale is not None
            self.raw = nn.Parameter(scale.detach().clamp_min(1e-8).log().clone())

    def dist(self) -> Any:
        if self.full:
            tril = torch.tril(self.raw, -1) + torch.diag_embed(self.raw.diagonal(dim1=-2, dim2=-1).exp())
            return dist.MultivariateNormal(self.loc, scale_tril=tril)
        return dist.Normal(self.loc, self.raw.exp()).to_event(1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("z", self.dist())


def local_guide_for(q: dist.Distribution, draws: Tensor) -> tuple[LocalGaussian, str, str]:
    """A per-point guide of q's family started at q (``draws`` ``(S, G, D)`` serve the fallback)."""
    if isinstance(q, _Independent) and isinstance(q.base_dist, _Normal) and q.reinterpreted_batch_ndims == 1:
        return LocalGaussian(q.base_dist.loc, scale=q.base_dist.scale), "diagonal_normal", "same family"
    if isinstance(q, _MVN):
        return LocalGaussian(q.mean, scale_tril=q.scale_tril), "full_rank_normal", "same family"
    if isinstance(q, _LowRankMVN):
        note = (
            "low-rank guide: the local guide is full-rank (a superset), so the amortization gap includes the rank limit"
        )
        return LocalGaussian(q.mean, scale_tril=q.scale_tril), "full_rank_normal", note
    note = (
        f"fallback: guide family {type(q).__name__} has no per-point version here; a diagonal Gaussian "
        "started at the guide's moments is used, so 'amortization gap' mixes family and amortization"
    )
    return LocalGaussian(draws.mean(0), scale=draws.std(0)), "diagonal_normal", note


def local_log_weights(
    model: Callable[..., Any], local: LocalGaussian, x: Tensor, cond: Tensor | None, k: int
) -> Tensor:
    """``(k, G)`` log p(x, z) - log q_local(z) for ``k`` reparameterized draws of the per-point guides."""
    q = local.dist()
    z = q.rsample((k,))
    return log_joint(model, x, cond, z) - q.log_prob(z)


def amortized_log_weights(vae: Any, x: Tensor, cond: Tensor | None, k: int) -> Tensor:
    """``(k, G)`` unscaled log weights of the amortized guide (through :func:`log_terms`: any guide)."""
    return log_terms(vae.model, vae.guide, (x, cond), {}, k, scaled=False).log_weight


@torch.no_grad()
def bounds(
    log_weights: Callable[[int], Tensor], k: int, rows: int, row_budget: int = ROW_BUDGET
) -> tuple[Tensor, Tensor, np.ndarray]:
    """ELBO, L_K and PSIS k-hat per point from ``log_weights(n) -> (n, G)`` (drawn in chunks of <= ``row_budget`` rows)."""
    chunk = max(1, row_budget // rows)
    parts, done = [], 0
    while done < k:
        n = min(chunk, k - done)
        parts.append(log_weights(n).double().cpu())
        done += n
    lw = torch.cat(parts)
    return lw.mean(0), torch.logsumexp(lw, 0) - math.log(k), _arviz.psis(lw.T.numpy())[1]


def amortization_gap(
    vae: Any, x: Tensor, y: Tensor | None, opts: DiagnoseOptions, draws: Tensor | None = None
) -> dict[str, Any]:
    """Cremer et al. (2018) gaps for the points ``x`` (G of them), in nats per point."""
    cond = vae.cond(y)
    with torch.no_grad():
        q = vae.guide.dist(x, cond)
        if draws is None:
            draws = q.sample((200,))
    local, family, note = local_guide_for(q, draws)
    local = local.to(x.device)
    opt = torch.optim.Adam(local.parameters(), lr=opts.gap_lr)
    # cosine decay to 1% of lr: the last iterate settles instead of jittering at the noise floor
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.gap_steps, eta_min=0.01 * opts.gap_lr)
    t0 = time.perf_counter()
    trace = []
    for step in range(opts.gap_steps):
        lw = local_log_weights(vae.model, local, x, cond, opts.gap_train_particles)
        loss = -lw.mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, opts.gap_steps // 20) == 0 or step == opts.gap_steps - 1:
            trace.append((step, float(-loss.detach()) / len(x)))
    seconds = time.perf_counter() - t0
    k, g = opts.gap_particles, len(x)
    elbo_a, iw_a, k_a = bounds(lambda n: amortized_log_weights(vae, x, cond, n), k, g, opts.row_budget)
    elbo_l, iw_l, k_l = bounds(lambda n: local_log_weights(vae.model, local, x, cond, n), k, g, opts.row_budget)
    # log p(x): L_K of the proposal with the smaller k-hat. Not the larger L_K: with heavy-tailed weights
    # (k-hat > 0.5, e.g. an over-confident q) one L_K can overshoot log p(x) by far more than its nominal error.
    use_local = torch.as_tensor(np.nan_to_num(k_l, nan=np.inf) <= np.nan_to_num(k_a, nan=np.inf))
    log_px = torch.where(use_local, iw_l, iw_a)
    approx, amort = log_px - elbo_l, elbo_l - elbo_a
    return {
        "points": len(x),
        "local_family": family,
        "local_family_note": note,
        "steps": opts.gap_steps,
        "lr": opts.gap_lr,
        "train_particles": opts.gap_train_particles,
        "K": opts.gap_particles,
        "seconds": seconds,
        "optimization_trace": trace,
        "log_px": log_px.numpy(),
        "log_px_from": np.where(use_local.numpy(), "local", "amortized").tolist(),
        "khat_amortized": k_a,
        "khat_local": k_l,
        "iwae_amortized": iw_a.numpy(),
        "iwae_local": iw_l.numpy(),
        "elbo_amortized": elbo_a.numpy(),
        "elbo_local": elbo_l.numpy(),
        "approximation_gap": approx.numpy(),
        "amortization_gap": amort.numpy(),
        "inference_gap": (log_px - elbo_a).numpy(),
        "mean_log_px": float(log_px.mean()),
        "mean_elbo_local": float(elbo_l.mean()),
        "mean_elbo_amortized": float(elbo_a.mean()),
        "mean_approximation_gap": float(approx.mean()),
        "mean_amortization_gap": float(amort.mean()),
        "mean_inference_gap": float((log_px - elbo_a).mean()),
    }


# --------------------------------------------------------------------------------------------------
# 4. calibration


@torch.no_grad()
def simulate(vae: Any, x_template: Tensor, y_template: Tensor | None) -> tuple[Tensor, Tensor]:
    """(z*, x) with z* ~ p(z), x ~ p(x|z*) from the model, one per template row (templates give shape/labels)."""
    cond = vae.cond(y_template)
    tr = poutine.trace(poutine.uncondition(vae.model)).get_trace(x_template, cond)
    return tr.nodes["z"]["value"], tr.nodes["x"]["value"].to(x_template.dtype)


def pit_values(q: dist.Distribution, z_star: Tensor, num_draws: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Ranks of z*_d among ``num_draws`` draws of q (0..L) and their randomized PIT in (0, 1), each ``(N, D)``."""
    draws = q.sample((num_draws,))
    ranks = (draws < z_star).sum(0)
    u = torch.rand(ranks.shape, generator=gen, dtype=torch.float64).to(ranks.device)
    return ranks.cpu(), ((ranks.double().cpu() + u.cpu()) / (num_draws + 1))


def calibration_tests(pit: np.ndarray, alpha: float = 0.01) -> dict[str, Any]:
    """Uniformity (KS per dim, Bonferroni), simultaneous ECDF band, VSBC symmetry, central-95% coverage."""
    n, d = pit.shape
    ks = np.array([stats.kstest(pit[:, j], "uniform").pvalue for j in range(d)])
    vsbc = np.array([stats.ks_2samp(pit[:, j], 1.0 - pit[:, j]).pvalue for j in range(d)])
    grid = np.linspace(0.0, 1.0, 101)
    lo, hi = _arviz.uniform_ecdf_band(n, grid, prob=1.0 - alpha)
    ecdf = (pit[:, :, None] <= grid).mean(0)  # (D, G)
    outside_band = np.any((ecdf < lo - 1e-12) | (ecdf > hi + 1e-12), axis=1)
    outside95 = np.mean((pit < 0.025) | (pit > 0.975), axis=0)
    mean_pit = pit.mean(0)
    return {
        "simulations": n,
        "ks_pvalue": ks,
        "vsbc_pvalue": vsbc,
        "min_ks_pvalue": float(ks.min()),
        "min_vsbc_pvalue": float(vsbc.min()),
        "uniform": bool(ks.min() >= alpha / d),
        "symmetric": bool(vsbc.min() >= alpha / d),
        "dims_outside_band": int(outside_band.sum()),
        "band_prob": 1.0 - alpha,
        "outside_central95": outside95,
        "mean_outside_central95": float(outside95.mean()),
        "mean_pit": mean_pit,
        "alpha": alpha,
        "test": f"KS vs Uniform(0,1) per latent dimension, Bonferroni over {d} dims at family-wise {alpha}",
        "_ecdf": ecdf,
        "_grid": grid,
        "_band": (lo, hi),
    }


# --------------------------------------------------------------------------------------------------
# driver


@dataclass
class Diagnosis:
    """Everything :func:`run_diagnostics` computed (arrays kept for files and figures)."""

    options: DiagnoseOptions
    index: np.ndarray  # positions of the scored points in the split
    psis: dict[str, np.ndarray]
    log_ratios: np.ndarray  # (N, S)
    guide_draws: np.ndarray  # (S, M, D) guide draws of the NUTS points (the ones behind log_ratios)
    nuts_points: list[dict[str, Any]]
    nuts_draws: np.ndarray | None  # (M, C, T, D)
    gap: dict[str, Any] | None
    gap_index: np.ndarray
    calibration: dict[str, Any] | None
    pit: np.ndarray | None
    seconds: dict[str, float]
    notes: list[str]
    measure: str = "log_likelihood"  # evaluate.Measure.kind: what "ELBO", "L_S" and "log p(x)" are here

    def report(self) -> dict[str, Any]:
        k = self.psis["khat"]
        ranked = np.where(np.isnan(k), np.inf, k)  # NaN (failed fit) ranks as worst; -inf (constant ratios) as best
        order = np.argsort(np.where(np.isnan(k), np.inf, k))[::-1]
        worst = [
            {
                "index": int(self.index[i]),
                "khat": float(k[i]),
                "elbo": float(self.psis["elbo"][i]),
                "iwae": float(self.psis["iwae"][i]),
            }
            for i in order[:10]
        ]
        cal = (
            None
            if self.calibration is None
            else {k2: v for k2, v in self.calibration.items() if not k2.startswith("_")}
        )
        return {
            "arviz_version": _arviz.ARVIZ_VERSION,
            "options": asdict(self.options),
            "psis": {
                "points": len(k),
                "samples": self.log_ratios.shape[1],
                **khat_shares(k),
                "khat_quantiles": {
                    str(p): float(np.quantile(ranked, p, method="nearest")) for p in (0.05, 0.25, 0.5, 0.75, 0.95)
                },
                "khat_max": float(np.max(np.where(np.isnan(k), np.inf, k))),
                "mean_elbo": float(self.psis["elbo"].mean()),
                "mean_iwae": float(self.psis["iwae"].mean()),
                "mean_gap": float(self.psis["gap"].mean()),
                "worst": worst,
                "per_point": {"index": self.index, **self.psis},
            },
            "nuts": self.nuts_points,
            "amortization_gap": None if self.gap is None else {"index": self.gap_index, **self.gap},
            "calibration": cal,
            "seconds": self.seconds,
            "notes": self.notes,
            "measure": self.measure,
            "verdict": self.verdict(),
        }

    def verdict(self) -> str:
        k = np.where(np.isnan(self.psis["khat"]), np.inf, self.psis["khat"])
        sh = khat_shares(k)
        order = np.argsort(k)[::-1][:3]
        worst = ", ".join(f"#{int(self.index[i])} (k-hat {k[i]:.2f})" for i in order)
        lines = [
            (
                f"q(z|x) is reliable for {100 * (1 - sh['share_above_0.7']):.1f}% of {len(k)} {self.options.split} "
                f"points (k-hat < 0.7; {100 * sh['share_below_0.5']:.1f}% < 0.5); worst: {worst}."
            )
        ]
        if self.nuts_points:
            ok = [p for p in self.nuts_points if p["gate_passed"]]
            line = f"NUTS reference on {len(self.nuts_points)} points: gate passed for {len(ok)}"
            if ok:
                md = max(p["comparison"]["max_abs_mean_diff_sd"] for p in ok)
                lo = min(p["comparison"]["min_sd_ratio"] for p in ok)
                hi = max(p["comparison"]["max_sd_ratio"] for p in ok)
                w = max(p["comparison"]["max_wasserstein_sd"] for p in ok)
                line += (
                    f"; guide mean off by up to {md:.2f} NUTS sd, guide sd / NUTS sd in [{lo:.2f}, {hi:.2f}], "
                    f"max W1 {w:.2f} NUTS sd"
                )
            failed = [p for p in self.nuts_points if not p["gate_passed"]]
            if failed:
                line += "; gate FAILED for " + ", ".join(
                    f"#{p['index']} ({'; '.join(p['gate_failures'])})" for p in failed
                )
            lines.append(line + ".")
        if self.gap is not None:
            g = self.gap
            lines.append(
                f"Gaps over {g['points']} points (nats): inference {g['mean_inference_gap']:.2f} = approximation "
                f"{g['mean_approximation_gap']:.2f} + amortization {g['mean_amortization_gap']:.2f} "
                f"(local guide: {g['local_family']}{'' if g['local_family_note'] == 'same family' else '; ' + g['local_family_note']})."
            )
        if self.calibration is not None:
            c = self.calibration
            d = len(c["ks_pvalue"])
            lines.append(
                f"Calibration (SBC, {c['simulations']} simulations, {d} dims): "
                f"{'uniform' if c['uniform'] else 'NOT uniform'} (min KS p {c['min_ks_pvalue']:.2g}, "
                f"{c['dims_outside_band']}/{d} dims leave the {100 * c['band_prob']:.0f}% ECDF band); "
                f"z* outside q's central 95% interval in {100 * c['mean_outside_central95']:.1f}% (expect 5%); "
                f"VSBC {'symmetric' if c['symmetric'] else 'ASYMMETRIC (directional bias)'} "
                f"(min p {c['min_vsbc_pvalue']:.2g})."
            )
        return "\n".join(lines)


def run_diagnostics(
    vae: Any,
    x: Tensor,
    y: Tensor | None,
    opts: DiagnoseOptions = DiagnoseOptions(),
    log: Callable[[str], None] = lambda s: None,
) -> Diagnosis:
    """All four checks on the points ``x`` (labels ``y`` for conditional models) of a trained ``vae``.

    ``vae`` needs ``.model`` (Pyro program ``model(x, cond)`` with sites ``z``, ``x``), ``.guide``
    (Pyro program with ``.dist(x, cond)``) and ``.cond(y)``, as :class:`pyro_vae.models.vae.VAE` has.
    """
    opts.check()
    pyro.set_rng_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    was_training = vae.training
    vae.eval()
    notes: list[str] = []
    seconds: dict[str, float] = {}
    n_all = len(x)
    if opts.points < n_all:
        index = torch.randperm(n_all, generator=gen)[: opts.points].sort().values
    else:
        index = torch.arange(n_all)
    xs = x[index.to(x.device)]
    ys = None if y is None else y[index.to(x.device)]
    check_guide(vae, xs, vae.cond(ys))
    from .evaluate import measure_of

    measure = measure_of(vae, xs)  # what "ELBO" and "log p(x)" below are for this likelihood and data
    if measure.note():
        notes.append(f"bounds: {measure.note()}; 'ELBO', 'L_S' and 'log p(x)' here are that quantity")
    try:
        with frozen(vae):
            t0 = time.perf_counter()
            lr, draws = guide_log_ratios(vae, xs, ys, opts.samples, opts.row_budget)
            ps = psis_summary(lr)
            seconds["psis"] = time.perf_counter() - t0
            log(f"PSIS: {len(xs)} points x {opts.samples} draws in {seconds['psis']:.1f}s")

            chosen = select_points(ps["khat"], min(opts.nuts, len(xs)), gen)
            sel = [i for i, _ in chosen]
            nuts_points: list[dict[str, Any]] = []
            nuts_draws = []
            t0 = time.perf_counter()
            for pos, why in chosen:
                x1 = xs[pos : pos + 1]
                c1 = vae.cond(None if ys is None else ys[pos : pos + 1])
                g = draws[:, pos, :].double()
                pick = torch.randperm(g.shape[0], generator=gen)[: opts.chains]
                centre = g.mean(0)
                init = (centre + 2.0 * (g[pick] - centre)).to(dtype=x1.dtype, device=x1.device)
                res = nuts_reference(vae.model, x1, c1, init, opts.warmup, opts.draws, opts.max_rhat, opts.min_ess)
                entry: dict[str, Any] = {
                    "index": int(index[pos]),
                    "position": pos,
                    "reason": why,
                    "khat": float(ps["khat"][pos]),
                    **res.summary(),
                }
                entry["comparison"] = (
                    compare_draws(g.numpy(), res.draws.reshape(-1, res.draws.shape[-1])) if res.passed else None
                )
                nuts_points.append(entry)
                nuts_draws.append(res.draws)
                log(
                    f"NUTS point #{entry['index']} ({why}, k-hat {entry['khat']:.2f}): {res.seconds:.1f}s, "
                    f"gate {'passed' if res.passed else 'FAILED: ' + '; '.join(res.gate_failures)}"
                )
            seconds["nuts"] = time.perf_counter() - t0

            gap = None
            gap_pos: list[int] = []
            if opts.gap_points > 0:
                gap_pos = sel[: opts.gap_points]
                rest = [int(i) for i in torch.randperm(len(xs), generator=gen) if int(i) not in set(gap_pos)]
                gap_pos = gap_pos + rest[: max(0, min(opts.gap_points, len(xs)) - len(gap_pos))]
                t0 = time.perf_counter()
                gp = torch.tensor(gap_pos, device=xs.device)
                gap = amortization_gap(
                    vae, xs[gp], None if ys is None else ys[gp], opts, draws[:, gap_pos, :].to(xs.device)
                )
                seconds["amortization_gap"] = time.perf_counter() - t0
                if gap["local_family_note"] not in ("same family",):
                    notes.append(f"amortization gap: {gap['local_family_note']}")
                log(f"amortization gap: {len(gap_pos)} points in {seconds['amortization_gap']:.1f}s")

            cal, pit = None, None
            if opts.sbc > 0:
                t0 = time.perf_counter()
                tmpl = torch.arange(opts.sbc) % len(xs)
                xt = xs[tmpl.to(xs.device)]
                yt = None if ys is None else ys[tmpl.to(xs.device)]
                z_star, x_sim = simulate(vae, xt, yt)
                with torch.no_grad():
                    q = vae.guide.dist(x_sim, vae.cond(yt))
                    _, pit_t = pit_values(q, z_star, opts.sbc_draws, gen)
                pit = pit_t.numpy()
                cal = calibration_tests(pit, opts.alpha)
                seconds["calibration"] = time.perf_counter() - t0
                log(f"calibration: {opts.sbc} simulations in {seconds['calibration']:.1f}s")
    finally:
        vae.train(was_training)
    sel_np = np.array(sel, dtype=int)
    return Diagnosis(
        options=opts,
        index=index.numpy(),
        psis=ps,
        log_ratios=lr.numpy(),
        guide_draws=draws[:, sel_np, :].numpy() if len(sel) else np.zeros((opts.samples, 0, draws.shape[-1])),
        nuts_points=nuts_points,
        nuts_draws=np.stack(nuts_draws) if nuts_draws else None,
        gap=gap,
        gap_index=index.numpy()[np.array(gap_pos, dtype=int)] if gap_pos else np.zeros(0, dtype=int),
        calibration=cal,
        pit=pit,
        seconds=seconds,
        notes=notes,
        measure=measure.kind,
    )


# --------------------------------------------------------------------------------------------------
# files


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
    d: Diagnosis, out: Path, x: Tensor, event_shape: tuple[int, ...], vae: Any = None, y: Tensor | None = None,
    claim: Callable[[Path], Path] | None = None, extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """diagnostics.json, posterior.nc and figures/ in ``out``; ``x`` are the points of the split.

    ``claim(path)`` is called on each file before it is written (an output directory records it);
    ``extra`` entries are added to diagnostics.json (e.g. the checkpoint the model came from).
    """
    from . import plots_diagnostics as pd

    fig_dir = out / "figures"
    if claim is None:
        fig_dir.mkdir(parents=True, exist_ok=True)
        claim = lambda p: p
    paths = {"json": out / "diagnostics.json", "netcdf": out / "posterior.nc"}
    x_nuts = None
    if d.nuts_points:
        x_nuts = x[torch.tensor([p["index"] for p in d.nuts_points], device=x.device)].detach().cpu().numpy()
    _arviz.save(inference_data(d, x_nuts), claim(paths["netcdf"]))
    paths.update(pd.all_figures(d, fig_dir, x, event_shape, vae, y, claim=claim))
    report = {**(extra or {}), **d.report()}
    report["files"] = {k: str(v) for k, v in paths.items()}
    with open(claim(paths["json"]), "w") as f:
        json.dump(_plain(report), f, indent=1)
    return paths


@runlock.releases_locks
def _check_work(vae: Any, x: Tensor, opts: DiagnoseOptions, device: str) -> None:
    """Memory and time that the options ask for, refused up front when they cannot be had."""
    from . import resources

    points = min(opts.points, len(x))
    latent = int(getattr(vae, "latent_dim", 0) or 1)
    event = int(np.prod(x.shape[1:]))
    resources.check_work(
        f"diagnose with --points {opts.points} --samples {opts.samples} --sbc {opts.sbc} --nuts {opts.nuts}",
        device,
        width=resources.layer_width(vae, tuple(x.shape[1:])),
        rows_per_call=max(opts.samples, min(opts.row_budget, points * opts.samples)),
        # PSIS draws and log ratios; simulated data and their q draws for calibration
        stored_elements=opts.samples * points * (latent + 1) + opts.sbc * (event + opts.sbc_draws * latent),
        seconds_at_least=min(opts.nuts, points) * opts.chains * (opts.warmup + opts.draws) * resources.STEP_SECONDS_AT_LEAST,
        fix="lower --samples, --points, --sbc, or --nuts/--chains/--warmup/--draws",
    )


def diagnose(
    run_dir: str | Path,
    opts: DiagnoseOptions = DiagnoseOptions(),
    out: str | Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[Diagnosis, dict[str, Path]]:
    """``pyro-vae diagnose``: load a run, run every check, write the outputs, return (diagnosis, paths)."""
    from .rundir import load_run

    opts.check()
    if out is not None:
        runlock.check_out_dir(out, what="output directory")  # a file, a device, '' or too long: refused before any computing
    held = runlock.open_reader(run_dir, "diagnose")  # no writer may start on the run meanwhile
    run = load_run(run_dir, device=device)
    out_dir = Path(out) if out is not None else run.paths.root / "diagnostics"
    if runlock.is_inside(out_dir, run.paths.root):  # recorded in the run's own manifest
        owner, under = held, Path(os.path.relpath(os.path.realpath(out_dir), os.path.realpath(run.paths.root)))
    else:  # a folder of its own: new, empty or an earlier diagnosis; locked while this one runs
        owner, under = runlock.open_writer(out_dir, force=True, resume=False, command="diagnose"), Path()
    x, y = run.data.split(opts.split)
    _check_work(run.vae, x, opts, device)
    d = run_diagnostics(run.vae, x, y, opts, log=log)
    from .interrupt import stage

    kept = f"the files already written in {str(out_dir)!r} are whole (atomic writes); run diagnose again for all of them"
    with stage("writing the diagnostics", kept):  # a signal while computing: nothing written (the CLI's stage)
        if under.as_posix() != ".":
            owner.clear(under=under.as_posix())  # the previous diagnosis written there (stale pair plots too)
        paths = write_outputs(d, out_dir, x, run.data.event_shape, run.vae, y, claim=owner.claim,
                              extra={"checkpoint": {"file": run.paths.checkpoint.name, "epoch": run.epoch}})  # fmt: skip
    return d, paths


__all__ = [
    "DiagnoseOptions",
    "Diagnosis",
    "LocalGaussian",
    "amortization_gap",
    "amortized_log_weights",
    "bounds",
    "calibration_tests",
    "compare_draws",
    "diagnose",
    "guide_log_ratios",
    "inference_data",
    "local_log_weights",
    "log_joint",
    "nuts_reference",
    "pit_values",
    "psis_summary",
    "run_diagnostics",
    "select_points",
    "simulate",
    "write_outputs",
]
