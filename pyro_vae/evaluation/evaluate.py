"""Evaluation: ELBO, importance-sampled log-likelihood, KL, reconstruction, active units.

All numbers are nats per data point (higher is better for bounds), computed from unscaled
log-densities, so ``beta`` used in training never leaks into a reported bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyro
import torch

from .._typing import Tensor
from ..data import Dataset, as_float
from ..estimators import fast, iwae_bound, log_terms
from ..models.vae import VAE
from . import log_weights
from .gradients import GradientStats, gradient_stats  # re-exported: pyro_vae.evaluation.evaluate.gradient_stats

#: (point, particle) draws per chunk (and per decoder pass on the traced path): bounds memory at any K.
ROW_BUDGET = 1 << 14
#: Draws per point behind the Monte Carlo posterior mean of a guide without a closed-form mean (a flow).
MEAN_DRAWS = 256


@dataclass(frozen=True)
class Measure:
    """What the numbers computed from the log-weights log w = log p(x|z) + log p(z) - log q(z|x) are.

    They are an ELBO and a bound L_K <= log p(x) only when the likelihood is a normalized density or
    mass of the data actually scored and q(z|x) has a density. Two cases are not:

    - ``normalized=False``: a Bernoulli likelihood on data that are not in {0, 1} (greyscale pixels)
      scores sum_i x_i log p_i + (1 - x_i) log(1 - p_i), a negative cross-entropy that does not
      integrate to one over the data; the same formulas then give a *Bernoulli cross-entropy bound*
      (Loaiza-Ganem & Cunningham 2019 discuss why it is not a log-likelihood);
    - ``point_mass=True``: q(z|x) = delta(z - f(x)) has no density, KL(q || p) = +inf and the ELBO is
      -inf; log w = log p(x | f(x)) + log p(f(x)) is a point score (the MAP objective of an
      autoencoder with a prior penalty), L_K = that same score for every K, and "KL" is the prior
      penalty -log p(f(x)).

    Every output (CLI tables, eval.json, summary.json, figures, compare tables) takes its labels from
    :meth:`label`; :func:`measure_of` is the one rule that decides the case.
    """

    normalized: bool = True  # the likelihood is a normalized density/mass of the data scored
    point_mass: bool = False  # q(z|x) is a point mass

    @property
    def kind(self) -> str:
        """``log_likelihood``, ``cross_entropy``, ``point_score`` or ``point_cross_entropy``."""
        if self.point_mass:
            return "point_score" if self.normalized else "point_cross_entropy"
        return "log_likelihood" if self.normalized else "cross_entropy"

    def display_key(self, key: str) -> str:
        """The name under which a ``metrics.jsonl`` key is shown in progress lines: ``*_elbo`` is a
        ``*_ce_bound`` on data a Bernoulli likelihood does not normalize, a ``*_point_score`` for a
        point-mass guide (whose ``test_kl`` is the prior penalty -log p(z))."""
        if self.point_mass:
            key = key.replace("elbo", "point_score").replace("test_kl", "test_prior_penalty")
        elif not self.normalized:
            key = key.replace("elbo", "ce_bound")
        if not self.normalized and key == "test_reconstruction":
            key = "test_reconstruction_ce"
        return key

    @classmethod
    def from_kind(cls, kind: str) -> Measure:
        """The measure named by :attr:`kind` (as stored in eval.json and summary.json)."""
        for m in (cls(True, False), cls(False, False), cls(True, True), cls(False, True)):
            if m.kind == kind:
                return m
        raise ValueError(f"unknown measure kind {kind!r}")

    def label(self, quantity: str, k: int | None = None) -> str | None:
        """How to name ``quantity`` (elbo, log_likelihood, kl, reconstruction, train_objective);
        None where it does not exist (a point mass has no bound and no finite KL)."""
        ce = "Bernoulli cross-entropy" if not self.normalized else ""
        if quantity == "elbo":
            if self.point_mass:
                return f"point-mass score log p(x|f(x)) + log p(f(x)){' (' + ce + ')' if ce else ''}"
            return f"{ce} bound E_q[log w]" if ce else "ELBO"
        if quantity == "log_likelihood":
            if self.point_mass:
                return None
            kk = "K" if k is None else str(k)
            return f"{ce} bound L_{kk}" if ce else f"log p(x) >= L_{kk}"
        if quantity == "kl":
            return "prior penalty -log p(f(x))" if self.point_mass else "KL(q(z|x) || p(z))"
        if quantity == "reconstruction":
            z = "f(x)" if self.point_mass else "z"
            return f"reconstruction -E[cross-entropy(x, decoder({z}))]" if ce else f"reconstruction E[log p(x|{z})]"
        if quantity == "train_objective":
            return "training objective (loss at the scheduled KL weight)"
        raise ValueError(f"unknown quantity {quantity!r}")

    def note(self) -> str:
        """One sentence on why the numbers are not log p(x) bounds ('' when they are)."""
        parts = []
        if not self.normalized:
            parts.append(
                "the data are not binary, so the Bernoulli likelihood is a cross-entropy, not a normalized "
                "log-likelihood (binarize the data, data.binarize: static or dynamic, or use "
                "model.likelihood.kind: continuous_bernoulli for a bound on log p(x))"
            )
        if self.point_mass:
            parts.append("q(z|x) is a point mass (guide.kind: delta): no ELBO, no bound on log p(x), KL = +inf")
        return "; ".join(parts)

    def fields(self, values: Mapping[str, Any], prefix: str = "", k: int | None = None) -> dict[str, Any]:
        """``values`` (keys ``{prefix}elbo``, ``{prefix}log_likelihood[_stderr]``, ``{prefix}kl``, ...) as
        written to eval.json and summary.json: with ``measure`` and ``labels`` added, and for a point
        mass the ELBO, bound and KL set to null and the numbers moved to ``{prefix}point_score`` and
        ``{prefix}prior_penalty``."""
        out = dict(values)
        names = {"elbo": "elbo", "log_likelihood": "log_likelihood", "kl": "kl", "reconstruction": "reconstruction"}
        if self.point_mass:
            names.update(elbo="point_score", kl="prior_penalty")
            for q in ("elbo", "kl"):
                if prefix + q in out:
                    out[prefix + names[q]] = out[prefix + q]
            for q in ("elbo", "kl", "log_likelihood", "log_likelihood_stderr"):
                if prefix + q in out:
                    out[prefix + q] = None
        out["measure"] = self.kind
        out["labels"] = {prefix + names[q]: self.label(q, k) for q in names if self.label(q, k) is not None}
        return out


def measure_of(vae: Any, x: Tensor) -> Measure:
    """The rule: what the log-weights of ``vae`` on the data ``x`` measure (see :class:`Measure`).

    The likelihood declares whether it is normalized on ``x`` (``normalized_on``; a likelihood
    without the method is taken as normalized); the guide declares a point mass (``is_point_mass``).
    """
    if x.dtype == torch.uint8:  # 8-bit pixels: the model sees x / 255
        x = x.float() / 255
    lik = getattr(getattr(vae, "model", None), "likelihood", None)
    normalized_on = getattr(lik, "normalized_on", None)
    normalized = True if normalized_on is None or not len(x) else bool(normalized_on(x))
    return Measure(normalized=normalized, point_mass=bool(getattr(vae.guide, "is_point_mass", False)))


@dataclass(frozen=True)
class PointTerms:
    """Per-data-point estimates, each of shape ``(N,)``."""

    elbo: Tensor  # mean over K draws of log p(x,z) - log q(z|x)
    log_likelihood: Tensor  # L_K = log mean_k w_k, a stochastic lower bound on log p(x)
    reconstruction: Tensor  # mean over K of log p(x|z)
    kl: Tensor  # mean over K of log q(z|x) - log p(z) (Monte Carlo KL)
    posterior_mean: Tensor  # E_q[z|x], shape (N, latent_dim); (N, 0) when not computed
    # variance of each posterior_mean estimate, (N, latent_dim): 0 for a closed-form mean, Var_q[z|x] / S
    # for the average of S draws (estimated from the draws); None: unknown (taken as 0)
    posterior_mean_noise: Tensor | None = None
    measure: Measure = Measure()  # what elbo, log_likelihood and kl are (see measure_of)


@dataclass(frozen=True)
class EvalResult:
    """What ``pyro-vae evaluate`` writes to ``eval.json`` (nats per data point)."""

    split: str
    n: int
    num_particles: int
    elbo: float
    log_likelihood: float
    log_likelihood_stderr: float
    kl: float
    reconstruction: float
    active_units: int
    # a random subset of the split (evaluate --points): {"points", "of", "seed", "indices"}; None: all of it
    subset: dict[str, Any] | None = None
    measure: str = "log_likelihood"  # Measure.kind: what elbo, log_likelihood and kl are
    # the checkpoint scored: {"file": "best.pt", "epoch": 7}; None: not recorded (a model in memory)
    checkpoint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """eval.json: the numbers under the names :meth:`Measure.fields` gives them, with ``measure``
        and ``labels`` saying what each one is."""
        d = asdict(self)
        for key in ("subset", "checkpoint"):
            if d[key] is None:  # the whole split / a model in memory: eval.json keeps its documented keys
                del d[key]
        return Measure.from_kind(self.measure).fields(d, k=self.num_particles)

    def table(self) -> str:
        m = Measure.from_kind(self.measure)
        rows = [
            ("split", self.split),
            ("points", f"{self.n}" if self.subset is None else
                       f"{self.n} of {self.subset['of']} (random subset, seed {self.subset['seed']})"),
            ("particles K", f"{self.num_particles}"),
        ]  # fmt: skip
        if self.checkpoint is not None:
            rows.append(("checkpoint", f"{self.checkpoint['file']} (epoch {self.checkpoint['epoch']})"))
        for q, value in (
            ("elbo", f"{self.elbo:.3f}"),
            ("log_likelihood", f"{self.log_likelihood:.3f} ± {self.log_likelihood_stderr:.3f}"),
            ("reconstruction", f"{self.reconstruction:.3f}"),
            ("kl", f"{self.kl:.3f}"),
        ):
            name = m.label(q, self.num_particles)
            if name is not None:
                rows.append((name, value))
        rows.append(("active units", f"{self.active_units}"))
        w = max(len(k) for k, _ in rows)
        note = m.note()
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows) + (f"\nnote: {note}" if note else "")

    def save(self, path: Any) -> None:
        """Write eval.json atomically; a failing write raises RunError and leaves the old file."""
        from ..rundir.checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def posterior_mean_stats(
    vae: VAE,
    x: Tensor,
    y: Tensor | None = None,
    draws: int = MEAN_DRAWS,
    row_budget: int = ROW_BUDGET,
    q: Any = None,
) -> tuple[Tensor, Tensor]:
    """E_q[z|x] per point and the variance of that estimate, both ``(N, latent_dim)``.

    Closed form where the guide's family has a mean (variance 0). Otherwise (a flow) the mean is the
    average m_hat of ``draws`` = S draws, whose Monte Carlo variance Var_q[z|x] / S is estimated without
    bias by the draws' sample variance / S. :func:`active_units` subtracts it: Var_x(m_hat) alone
    overstates Var_x(E_q[z|x]) by the mean of Var_q[z|x] / S.
    """
    if draws < 2:
        raise ValueError(f"draws must be >= 2 to estimate the Monte Carlo variance, got {draws}")
    if q is None:  # ``q``: the guide's q(z|x) for these points when the caller already has it
        q = vae.guide.dist(x, vae.cond(y))  # a torch Distribution (batch (N,), event (latent_dim,))
    try:
        mean = q.mean.reshape(len(x), -1)
        return mean, torch.zeros_like(mean)
    except NotImplementedError:  # e.g. a flow guide: no closed-form mean
        pass
    per = max(1, row_budget // max(1, len(x)))  # draws per pass: at most row_budget rows at once
    s1: Tensor | float = 0.0
    s2: Tensor | float = 0.0
    done = 0
    while done < draws:
        k = min(per, draws - done)
        z = q.sample((k,)).reshape(k, len(x), -1).double()  # float64 sums: no cancellation in s2 - S m^2
        s1, s2 = s1 + z.sum(0), s2 + z.square().sum(0)
        done += k
    assert isinstance(s1, Tensor) and isinstance(s2, Tensor)
    m = s1 / draws
    var = ((s2 - draws * m.square()) / (draws - 1)).clamp_min(0)  # unbiased sample variance of the draws
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return m.to(dtype), (var / draws).to(dtype)


def _trace_mean_stats(draws: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and its Monte Carlo variance from the K particle draws ``(K, N, D)`` of a guide
    without :meth:`dist` (a user's Pyro guide); with K = 1 the variance cannot be estimated (NaN)."""
    k = len(draws)
    mean = draws.mean(0).reshape(draws.shape[1], -1)
    if k < 2:
        return mean, torch.full_like(mean, math.nan)
    return mean, (draws.var(0) / k).reshape(draws.shape[1], -1)


def direct_supported(vae: VAE) -> bool:
    """True when :func:`point_terms` may compute the log-weights directly (:func:`pyro_vae.evaluation.log_weights.direct_sums`).

    A capability check: the model and guide run the standard programs (``z ~ p(z)``, ``x ~ p(x|z)``;
    ``z ~ q(z|x)`` from ``guide.dist``, see :func:`pyro_vae.estimators.fast.supports_direct`) and no Pyro handler is
    active (a handler could change sample values or scales only the traced path honours).
    """
    return fast.supports_direct(vae.model, vae.guide) and fast.handlers() == "none"


@torch.no_grad()
def point_terms(
    vae: VAE,
    x: Tensor,
    y: Tensor | None = None,
    num_particles: int = 1,
    row_budget: int = ROW_BUDGET,
    means: bool = True,
) -> PointTerms:
    """Per-point estimates with K particles, chunked over points and particles (bounded memory).

    For the standard pair (:func:`direct_supported`) the log-weights are computed directly
    (:func:`pyro_vae.evaluation.log_weights.direct_sums`: the encoder once per point batch, the same
    draws as the traced path, the decoder in fixed-size blocks);
    any other program goes through Pyro's traces (:func:`pyro_vae.estimators.log_terms`).
    ``means=False`` skips the posterior means (for per-epoch curves; then active units are unknown).
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    chunk = min(num_particles, row_budget)
    per = max(1, row_budget // chunk)
    out: dict[str, list[Tensor]] = {k: [] for k in ("elbo", "ll", "rec", "kl", "mean", "noise")}
    was_training = vae.training
    device = next((p.device for p in vae.parameters()), x.device)  # a streamed training split stays on the CPU
    fast = direct_supported(vae)
    # on the CPU the standard MLP decoder scores its blocks on one thread per core (log_weights.Blocks)
    threaded = fast and device.type == "cpu" and log_weights.MLPBernoulli.of(vae.model) is not None
    workers = torch.get_num_threads() if threaded else 1
    vae.eval()
    try:
        with log_weights.Blocks(workers) as blocks:
            for s in range(0, len(x), per):
                xb = as_float(x[s : s + per].to(device))  # uint8 (8-bit pixels) -> x / 255, one chunk at a time
                yb = None if y is None else y[s : s + per].to(device)
                cond = vae.cond(yb)
                lse_parts: list[Tensor] = []
                sum_w: Tensor | float = 0.0
                sum_rec: Tensor | float = 0.0
                sum_lat: Tensor | float = 0.0
                draws: Tensor | None = None
                done = num_particles if fast else 0  # the direct form below, else Pyro's traces chunk by chunk
                q: Any = None
                if fast:
                    q = vae.guide.dist(xb, cond)  # the encoder runs once per point, whatever the particle chunks
                    lse, sum_w, sum_rec, sum_lat = log_weights.direct_sums(
                        vae, q, xb, cond, num_particles, chunk, blocks=blocks
                    )
                    lse_parts.append(lse)
                while done < num_particles:
                    k = min(chunk, num_particles - done)
                    t = log_terms(vae.model, vae.guide, (xb, cond), {}, k, scaled=False)
                    lw = t.log_weight
                    lse_parts.append(torch.logsumexp(lw, 0))
                    sum_w = sum_w + lw.sum(0)
                    sum_rec = sum_rec + t.obs.sum(0)
                    sum_lat = sum_lat + t.latent.sum(0)
                    if draws is None and "z" in t.guide_trace.nodes:
                        draws = t.guide_trace.nodes["z"]["value"]
                    done += k
                # num_particles >= 1, so the loop ran and the sums are tensors
                assert isinstance(sum_w, Tensor) and isinstance(sum_rec, Tensor) and isinstance(sum_lat, Tensor)
                ll = torch.logsumexp(torch.stack(lse_parts), 0) - math.log(num_particles)
                out["ll"].append(ll)
                out["elbo"].append(sum_w / num_particles)
                out["rec"].append(sum_rec / num_particles)
                out["kl"].append(-sum_lat / num_particles)
                if not means:
                    mean = noise = torch.empty(len(xb), 0, device=xb.device)
                elif hasattr(vae.guide, "dist"):
                    mean, noise = posterior_mean_stats(vae, xb, yb, row_budget=row_budget, q=q)
                else:
                    assert draws is not None, "the guide trace has no 'z' site"
                    mean, noise = _trace_mean_stats(draws)
                out["mean"].append(mean)
                out["noise"].append(noise)
    finally:
        vae.train(was_training)
    cat = {k: torch.cat(v) for k, v in out.items()}
    return PointTerms(cat["elbo"], cat["ll"], cat["rec"], cat["kl"], cat["mean"], cat["noise"], measure_of(vae, x))


def unit_variances(posterior_mean: Tensor, noise: Tensor | None = None) -> Tensor:
    """Var_x(E_q[z_u|x]) per unit u, unbiased: the sample variance over points of the estimated means
    minus the mean Monte Carlo variance of those estimates (``noise``, see :func:`posterior_mean_stats`).

    With m_hat_i = m_i + e_i, e_i independent with variance v_i, E[Var_x(m_hat)] = Var_x(m) + mean_i v_i
    exactly (sample variances with n - 1), so the difference is unbiased; its noise when Var_x(m) = 0 is
    about mean_i(v_i) * sqrt(2 / (n - 1)).
    """
    var = posterior_mean.double().var(0)
    if noise is not None:
        var = var - noise.double().mean(0)
    return var


def active_units(posterior_mean: Tensor, threshold: float = 0.01, noise: Tensor | None = None) -> int:
    """Burda et al. (2015): unit u is active if Var_x(E_q[z_u|x]) > threshold (default 0.01).

    ``noise``: the Monte Carlo variance of each estimated mean (:attr:`PointTerms.posterior_mean_noise`),
    removed from the variance (:func:`unit_variances`); a unit whose noise is unknown (NaN) is not counted.
    """
    if len(posterior_mean) < 2:
        return 0
    return int((unit_variances(posterior_mean, noise) > threshold).sum())


def summarize(terms: PointTerms, split: str, num_particles: int) -> EvalResult:
    n = len(terms.elbo)
    ll = terms.log_likelihood.double()
    stderr = float(ll.std() / math.sqrt(n)) if n > 1 else float("nan")
    return EvalResult(
        split=split,
        n=n,
        num_particles=num_particles,
        elbo=float(terms.elbo.double().mean()),
        log_likelihood=float(ll.mean()),
        log_likelihood_stderr=stderr,
        kl=float(terms.kl.double().mean()),
        reconstruction=float(terms.reconstruction.double().mean()),
        active_units=active_units(terms.posterior_mean, noise=terms.posterior_mean_noise),
        measure=terms.measure.kind,
    )


def random_subset(n: int, points: int, seed: int) -> Tensor:
    """Sorted indices of ``points`` of ``range(n)`` drawn without replacement by a generator seeded with ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:points].sort().values


def evaluate(
    vae: VAE,
    data: Dataset,
    split: str = "test",
    num_particles: int = 5000,
    row_budget: int = ROW_BUDGET,
    *,
    points: int = 0,
    seed: int | None = None,
) -> EvalResult:
    """ELBO, L_K log-likelihood (with standard error), KL, reconstruction and active units on a split.

    ``points > 0`` scores a random subset of that many points of the split (:func:`random_subset`,
    seeded by ``seed``, default 0; the whole split when it has no more points); the subset is recorded
    in :attr:`EvalResult.subset`. A ``seed`` also seeds the importance samples, so the result repeats.
    """
    if split not in ("train", "valid", "test") or not len(getattr(data, f"x_{split}")):
        data.split(split)  # the one-line error naming the problem
    # the rows as stored (8-bit stays uint8, a streamed split stays where it is): converted chunk by chunk
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    subset: dict[str, Any] | None = None
    if points < 0:
        raise ValueError(f"points must be >= 0, got {points}")
    if 0 < points < len(x):
        s = 0 if seed is None else seed
        idx = random_subset(len(x), points, s)
        subset = {"points": points, "of": len(x), "seed": s, "indices": idx.tolist()}
        x, y = x[idx.to(x.device)], (None if y is None else y[idx.to(y.device)])
    if seed is not None:
        pyro.set_rng_seed(seed)
    res = summarize(point_terms(vae, x, y, num_particles, row_budget), split, num_particles)
    return res if subset is None else replace(res, subset=subset)


__all__ = [
    "EvalResult",
    "GradientStats",
    "PointTerms",
    "active_units",
    "evaluate",
    "gradient_stats",
    "iwae_bound",
    "point_terms",
    "random_subset",
    "summarize",
]
