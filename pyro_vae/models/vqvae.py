"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") written as a Pyro model/guide pair.

The encoder maps x to a grid of P = h*w vectors z_e(x) in R^D; each is replaced by its nearest of K
codebook vectors e_k. In Pyro terms:

- the latent site ``z`` holds the chosen code vectors e_k, shape ``(P, D)`` per point. It is the code
  index k in embedding form (the map k -> e_k is one-to-one), and it carries the straight-through
  graph: its value is ``z_e + sg[e_k - z_e]``, so the decoder sees e_k and the reconstruction gradient
  reaches the encoder as if z_q = z_e, never the codebook (Pyro's replay passes only site values to
  the model, so the value itself must carry the encoder's graph; a bare integer index could not);
- the guide is deterministic: ``Delta(z_e + sg[e_k - z_e], event_dim=2)``, log q = 0;
- the model's prior is uniform over the K codes at every position: log p(z) = -P log K, so the KL
  term is the constant P log K nats per point (reported as such by ``evaluate``);
- the codebook term ||sg[z_e] - e||^2 and the commitment term beta ||z_e - sg[e]||^2 enter through
  ``pyro.factor`` in the guide, in training mode only: they are training losses, not part of the
  bound, so evaluation reports log p(x|z_q) - P log K. With ``codebook_update: ema`` the codebook is a
  buffer updated by exponential moving averages of the assigned encoder outputs (appendix of the
  paper) and only the commitment term remains.

The codebook is initialized from the encoder outputs of the first training batch (a random
codebook far from them leaves most codes unused from the start: codebook collapse); codes whose
usage decays below ``dead_threshold / K`` are re-seeded from the batch when ``restart_dead`` is on.

So the same estimators (``trace``; IWAE reduces to it, the guide being deterministic), training loop,
checkpoints and CLI serve it. After (and during) training the codebook keeps per-position code
frequencies (an EMA of the assignments); they define an independent categorical prior per position
used for sampling (:func:`fit_code_prior` refits it exactly on a data set). :func:`vq_metrics` reports
codebook usage, perplexity, dead codes and reconstruction error.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from .._typing import Component, ComponentSpec, Interval, NonNegativeFloat, PositiveInt, Shape, Tensor
from ..errors import SpecError
from ..registry import REGISTRY, register
from .likelihoods import Likelihood
from .priors import Prior
from .vae import VAE, Generative


def vq_terms(z_e: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Quantize ``z_e`` ``(..., P, D)`` with codebook ``weight`` ``(K, D)``.

    Returns ``(z_st, k, codebook, commitment)``: the straight-through code vectors
    ``z_e + sg[e_k - z_e]`` (value e_k, gradient identity to z_e, none to the codebook), the indices
    ``(..., P)``, and per point ``||sg[z_e] - e_k||^2`` (gradient to the codebook only) and
    ``||z_e - sg[e_k]||^2`` (gradient to the encoder only), summed over positions and dimensions.
    """
    flat = z_e.detach().reshape(-1, z_e.shape[-1])
    d2 = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ weight.detach().T + weight.detach().pow(2).sum(-1)
    k = d2.argmin(-1).reshape(z_e.shape[:-1])
    e = weight[k]  # (..., P, D), differentiable w.r.t. the codebook
    codebook = (z_e.detach() - e).pow(2).sum((-2, -1))
    commitment = (z_e - e.detach()).pow(2).sum((-2, -1))
    z_st = z_e + (e - z_e).detach()
    return z_st, k, codebook, commitment


class Codebook(nn.Module):
    """K code vectors of dimension D, shared by the guide (quantization) and the prior (sampling).

    Buffers: ``usage`` ``(P, K)``, an EMA of per-position code frequencies (the fitted categorical
    prior and the dead-code statistic); with ``ema=True`` also the EMA cluster sizes and sums.
    """

    weight: Tensor  # (K, D): a Parameter, or a buffer with ema=True
    usage: Tensor
    initialized: Tensor
    cluster_size: Tensor
    embed_sum: Tensor

    def __init__(self, num_codes: int, dim: int, positions: int, ema: bool, decay: float) -> None:
        super().__init__()
        self.num_codes, self.dim, self.positions, self.ema, self.decay = num_codes, dim, positions, ema, decay
        init = torch.randn(num_codes, dim)
        if ema:
            self.register_buffer("weight", init)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.weight = nn.Parameter(init)
        self.register_buffer("usage", torch.full((positions, num_codes), 1.0 / num_codes))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from(self, z_e: Tensor) -> None:
        """Data-dependent initialization on the first training batch: the codes become randomly chosen
        encoder outputs, so that they start where the encoder's outputs are (a random N(0, I) codebook
        far from them leaves all but a few codes unused: codebook collapse)."""
        if bool(self.initialized):
            return
        flat = z_e.detach().reshape(-1, self.dim)
        idx = torch.randperm(len(flat), device=flat.device)[: self.num_codes]
        if len(idx) < self.num_codes:
            idx = torch.randint(len(flat), (self.num_codes,), device=flat.device)
        self.weight.data.copy_(flat[idx])
        if self.ema:
            self.embed_sum.copy_(flat[idx])
            self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, z_e: Tensor, k: Tensor, restart_dead: bool, dead_threshold: float) -> None:
        """One training step's statistics: usage EMA, EMA codebook, restart of dead codes."""
        flat_z = z_e.detach().reshape(-1, self.dim).to(self.weight.dtype)
        onehot = nn.functional.one_hot(k.reshape(-1, self.positions), self.num_codes).to(flat_z.dtype)  # (B, P, K)
        self.usage.mul_(self.decay).add_(onehot.mean(0).to(self.usage.dtype), alpha=1 - self.decay)
        flat_1h = onehot.reshape(-1, self.num_codes)
        if self.ema:
            self.cluster_size.mul_(self.decay).add_(flat_1h.sum(0), alpha=1 - self.decay)
            self.embed_sum.mul_(self.decay).add_(flat_1h.T @ flat_z, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            size = (self.cluster_size + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing
            self.weight.copy_(self.embed_sum / size.unsqueeze(-1))
        if restart_dead:
            dead = self.usage.mean(0) < dead_threshold / self.num_codes
            if dead.any():
                idx = torch.randint(len(flat_z), (int(dead.sum()),), device=flat_z.device)
                self.weight.data[dead] = flat_z[idx]
                self.usage[:, dead] = 1.0 / self.num_codes
                if self.ema:
                    self.cluster_size[dead] = 1.0
                    self.embed_sum[dead] = flat_z[idx]

    def nearest(self, v: Tensor) -> Tensor:
        d2 = (v.unsqueeze(-2) - self.weight).pow(2).sum(-1)
        return d2.argmin(-1)


class CodebookPrior(dist.TorchDistribution):
    """Prior over code vectors: log_prob uniform (-P log K, what training uses); ``sample`` draws each
    position's index from ``logits`` ``(P, K)`` (uniform, or the fitted per-position categorical)."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(self, weight: Tensor, logits: Tensor, validate_args: bool | None = None) -> None:
        self.weight, self.logits = weight, logits
        p, _ = logits.shape
        super().__init__(torch.Size(), torch.Size((p, weight.shape[-1])), validate_args=validate_args)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:  # type: ignore[override]
        k = dist.Categorical(logits=self.logits).sample(torch.Size(sample_shape))  # (*shape, P)
        return self.weight.detach()[k]

    def log_prob(self, value: Tensor) -> Tensor:
        p, k = self.logits.shape
        return torch.full(value.shape[:-2], -p * math.log(k), dtype=value.dtype, device=value.device)


class VQPrior(Prior):
    """p(z): uniform over the codebook at every position (sampling uses the fitted frequencies)."""

    def __init__(self, codebook: Codebook) -> None:
        super().__init__()
        self.codebook = codebook

    def forward(self) -> dist.Distribution:
        return CodebookPrior(self.codebook.weight, self.codebook.usage.clamp_min(1e-8).log())


class VQGuide(nn.Module):
    """Deterministic guide: Delta at the straight-through nearest code vectors; VQ losses as a factor."""

    discrete = True  # figures: no Euclidean latent to scatter or traverse

    def __init__(
        self, encoder: nn.Module, codebook: Codebook, grid: tuple[int, int], beta: float, restart_dead: bool,
        dead_threshold: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.codebook, self.grid = encoder, codebook, grid
        self.beta, self.restart_dead, self.dead_threshold = beta, restart_dead, dead_threshold
        self.latent_dim = grid[0] * grid[1] * codebook.dim
        self.kl_weight = 1.0  # the KL is a constant here; kept for the VAE interface

    def encode(self, x: Tensor) -> Tensor:
        """z_e(x): ``(B, P, D)``."""
        h = self.encoder(x)  # (B, D, h, w)
        return h.flatten(2).transpose(1, 2)

    def codes(self, x: Tensor) -> Tensor:
        """Code indices ``(B, P)`` of a batch."""
        return vq_terms(self.encode(x), self.codebook.weight)[1]

    def dist(self, x: Tensor, cond: Tensor | None = None) -> dist.Distribution:
        z_st = vq_terms(self.encode(x), self.codebook.weight)[0]
        return dist.Delta(z_st, event_dim=2)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        z_e = self.encode(x)
        if self.training:
            self.codebook.init_from(z_e)
        z_st, k, cb, cm = vq_terms(z_e, self.codebook.weight)
        if self.training:
            self.codebook.update(z_e, k, self.restart_dead, self.dead_threshold)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Delta(z_st, event_dim=2))
            if self.training:  # training losses, not part of the bound: the guide's factor is subtracted
                loss = self.beta * cm if self.codebook.ema else cb + self.beta * cm
                pyro.factor("vq_loss", loss, has_rsample=True)
        return z

    def extra_metrics(self, vae: VAE, x: Tensor) -> dict[str, float]:
        return vq_metrics(vae, x)


class VQDecoder(nn.Module):
    """``(*lead, P, D)`` code vectors -> ``(*lead, out_params, C, H, W)`` likelihood parameters."""

    def __init__(self, body: nn.Module, grid: tuple[int, int], out_shape: Shape) -> None:
        super().__init__()
        self.body, self.grid, self.out_shape = body, grid, out_shape

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-2]
        h = z.reshape(-1, *self.grid, z.shape[-1]).permute(0, 3, 1, 2)
        return self.body(h).reshape(*lead, *self.out_shape)


@register("model", "vqvae", context=("event_shape",))
def vqvae(
    *,
    event_shape: Shape,
    num_codes: PositiveInt = 64,  # K, codebook size
    embedding_dim: PositiveInt = 16,  # D, dimension of each code vector
    hidden: PositiveInt = 32,  # channels of the conv encoder/decoder
    downsample: PositiveInt = 2,  # stride-2 convs: the code grid is (H/2^n, W/2^n) (7x7 for MNIST)
    beta: NonNegativeFloat = 0.25,  # commitment weight beta (van den Oord et al. 2017 use 0.25)
    codebook_update: Literal["loss", "ema"] = "loss",  # loss: ||sg[z_e]-e||^2 term; ema: moving averages
    decay: Annotated[float, Interval(0, 1, high_open=True)] = 0.99,  # EMA decay (codebook and usage)
    restart_dead: bool = False,  # re-seed codes whose usage falls below dead_threshold/K from the batch
    dead_threshold: Annotated[float, Interval(0, 1)] = 0.03,  # dead: EMA frequency < dead_threshold / K
    likelihood: Annotated[ComponentSpec, Component("likelihood")] = {"kind": "bernoulli"},  # noqa: B006
) -> VAE:
    """VQ-VAE (van den Oord et al. 2017): nearest-code latents, straight-through gradients, uniform prior."""
    if len(event_shape) != 3 or any(s % (2**downsample) for s in event_shape[1:]):
        raise SpecError(
            f"model.downsample: {downsample} needs images (C, H, W) with H, W divisible by {2**downsample}; "
            f"data has shape {tuple(event_shape)}"
        )
    c, h, w = event_shape
    grid = (h // 2**downsample, w // 2**downsample)
    lik: Likelihood = REGISTRY.build("likelihood", likelihood, event_shape=event_shape)
    enc: list[nn.Module] = []
    ch = c
    for _ in range(downsample):
        enc += [nn.Conv2d(ch, hidden, 4, stride=2, padding=1), nn.ReLU()]
        ch = hidden
    enc += [nn.Conv2d(ch, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, embedding_dim, 1)]
    dec: list[nn.Module] = [nn.Conv2d(embedding_dim, hidden, 3, padding=1), nn.ReLU()]
    for i in range(downsample):
        last = i == downsample - 1
        dec.append(nn.ConvTranspose2d(hidden, lik.num_params * c if last else hidden, 4, stride=2, padding=1))
        if not last:
            dec.append(nn.ReLU())
    codebook = Codebook(num_codes, embedding_dim, grid[0] * grid[1], codebook_update == "ema", decay)
    guide = VQGuide(nn.Sequential(*enc), codebook, grid, beta, restart_dead, dead_threshold)
    decoder = VQDecoder(nn.Sequential(*dec), grid, (lik.num_params, c, h, w))
    return VAE(Generative(VQPrior(codebook), decoder, lik), guide)  # type: ignore[arg-type]


@torch.no_grad()
def _all_codes(vae: VAE, x: Tensor, batch: int = 1000) -> Tensor:
    guide: VQGuide = vae.guide  # type: ignore[assignment]
    return torch.cat([guide.codes(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def fit_code_prior(vae: VAE, x: Tensor, pseudo_count: float = 0.5) -> Tensor:
    """Refit the independent per-position categorical prior on ``x`` (add-``pseudo_count`` smoothing);
    sets the codebook's ``usage`` (what sampling uses) and returns it ``(P, K)``."""
    cb: Codebook = vae.guide.codebook  # type: ignore[assignment]
    k = _all_codes(vae, x)
    counts = nn.functional.one_hot(k, cb.num_codes).to(cb.usage.dtype).sum(0) + pseudo_count
    cb.usage.copy_(counts / counts.sum(-1, keepdim=True))
    return cb.usage.clone()


@torch.no_grad()
def vq_metrics(vae: VAE, x: Tensor, batch: int = 1000) -> dict[str, float]:
    """Codebook usage (fraction of codes used on ``x``), perplexity exp(H) of the average code
    distribution, dead codes (unused on ``x``), reconstruction MSE per pixel, and the negative
    log-likelihood of the codes under the per-position categorical prior (nats per point) next to
    the uniform prior's P log K."""
    cb: Codebook = vae.guide.codebook  # type: ignore[assignment]
    was = vae.training
    vae.eval()
    k = _all_codes(vae, x, batch)  # (N, P)
    freq = torch.bincount(k.reshape(-1), minlength=cb.num_codes).to(cb.usage.dtype)
    p = freq / freq.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    mse = sum(
        float((vae.reconstruct(x[i : i + batch]) - x[i : i + batch]).pow(2).sum()) for i in range(0, len(x), batch)
    )
    logp = cb.usage.clamp_min(1e-8).log()  # (P, K)
    nll = -logp.gather(1, k.T).sum(0).mean()
    vae.train(was)
    return {
        "codebook_usage": float((freq > 0).float().mean()),
        "codebook_perplexity": float(entropy.exp()),
        "dead_codes": int((freq == 0).sum()),
        "reconstruction_mse": mse / x.numel(),
        "code_prior_nll": float(nll),
        "uniform_code_nll": cb.positions * math.log(cb.num_codes),
    }


__all__ = ["Codebook", "CodebookPrior", "VQGuide", "fit_code_prior", "vq_metrics", "vq_terms", "vqvae"]
