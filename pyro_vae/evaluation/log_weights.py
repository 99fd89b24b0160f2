"""Importance log-weights of the standard model/guide pair, without Pyro traces, in fixed-size row blocks.

For K draws z_k ~ q(z|x) per point, log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) and
L_K = log (1/K) sum_k w_k (Burda, Grosse & Salakhutdinov 2015, eq. 8). :func:`direct_sums` returns, per
point, the running sums behind L_K, the ELBO, the reconstruction and the KL.

Draws: particle chunk by particle chunk, a ``(k, B, D)`` standard normal ``eps`` and z = loc + eps * scale,
exactly what ``q.rsample((k,))`` of a diagonal Normal (and Pyro's vectorized particle plate) draws, so
a seed gives the same z as the traced path.

Decoder: the draws are scored in blocks of at most :data:`BLOCK_ROWS` (point, particle) rows, point-major.
For the common decoder, a :class:`torch.nn.Sequential` of ``nn.Linear`` layers and element-wise
activations ending in a linear layer, with a Bernoulli likelihood (:class:`MLPBernoulli`), every block
runs in buffers allocated once per call (``addmm`` into them, activations in place): the allocator sees
the same few sizes on every block, so the resident set stays flat for any number of points, and a
block's logits (1024 x 784 float32 = 3.2 MB) stay in the cache for the element-wise passes that follow
the last matmul. Its Bernoulli log-mass needs no product x . l over the pixels:
x . l = x . (W h + b) = (W^T x) . h + x . b, with W^T x computed once per point (:meth:`MLPBernoulli.log_mass`).
Any other decoder or likelihood runs through its own modules on the same blocks.

Threads: on the CPU the blocks of the buffered decoder go to one single-threaded worker per core
(:class:`Blocks`) instead of torch's intra-op threads, which synchronize at every operation: on a
machine shared with other jobs, a worker that loses its core delays one block, not every operation.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from .. import _internals
from .._typing import Tensor
from ..estimators import fast
from ..models import likelihoods
from ..models.nets import Decoder
from ..models.vae import Generative

#: (point, particle) rows scored per decoder block; the logits of a block then take 3.2 MB for MNIST.
BLOCK_ROWS = 1024
#: At most this many logits per block of :class:`MLPBernoulli` (4 MB in float32), fewer rows for larger images.
BLOCK_ELEMENTS = 1 << 20
#: Factors sigmoid(|l|) in [1/2, 1) multiplied before one logarithm: 2^-98 stays far above float32's
#: smallest normal number (about 1.2e-38), so the product never underflows.
MAX_GROUP = 98

_IN_PLACE: dict[type, Callable[[nn.Module, Tensor], Any]] = {
    nn.Identity: lambda m, t: t,
    nn.Tanh: lambda m, t: t.tanh_(),
    nn.ReLU: lambda m, t: t.relu_(),
    nn.Sigmoid: lambda m, t: t.sigmoid_(),
    nn.SiLU: lambda m, t: F.silu(t, inplace=True),
    nn.ELU: lambda m, t: F.elu_(t, m.alpha),  # type: ignore[arg-type]
    nn.LeakyReLU: lambda m, t: F.leaky_relu_(t, m.negative_slope),  # type: ignore[arg-type]
    nn.Softplus: lambda m, t: t.copy_(m(t)),
    nn.GELU: lambda m, t: t.copy_(m(t)),
}


def group_size(p: int) -> int:
    """The largest divisor of ``p`` that is at most :data:`MAX_GROUP`."""
    return max(d for d in range(1, min(p, MAX_GROUP) + 1) if p % d == 0)


def softplus_sum_(logits: Tensor) -> Tensor:
    """sum_i softplus(l_i) over the last dimension of a ``(R, P)`` block, overwriting ``logits``.

    softplus(l) = relu(l) + log(1 + exp(-|l|)) = relu(l) - log sigmoid(|l|); sum_i relu(l_i) =
    (sum_i l_i + sum_i |l_i|) / 2, and sum_i log sigmoid(|l_i|) is taken as one logarithm per group of
    G <= :data:`MAX_GROUP` factors sigmoid(|l_i|) in [1/2, 1) (:func:`group_size`): no overflow or
    underflow in float32, and each element costs one sigmoid instead of an exponential and a logarithm.
    """
    r, p = logits.shape
    g = group_size(p)
    signed = logits.sum(-1)
    absolute = logits.abs_().sum(-1)
    log_sig = logits.sigmoid_().view(r, p // g, g).prod(-1).log_().sum(-1)
    return (signed + absolute).mul_(0.5).sub_(log_sig)


class Workspace:
    """The buffers one thread scores :class:`MLPBernoulli` blocks in: the decoder's input, each hidden
    layer and the logits, for at most ``rows`` rows (allocated once, reused by every block)."""

    def __init__(self, plan: MLPBernoulli, rows: int, like: Tensor) -> None:
        first = plan.layers[0][0]
        self.zin = like.new_empty((rows, first.in_features))
        self.hidden = [like.new_empty((rows, lin.out_features)) for lin, _ in plan.layers[:-1]]
        self.logits = like.new_empty((rows, plan.layers[-1][0].out_features))


class MLPBernoulli:
    """The decoder ``Sequential(Linear, act, ..., Linear)`` with a Bernoulli likelihood, run in buffers.

    :meth:`of` returns None for anything else (another network, likelihood or activation, a subclass
    that may compute something else, forward hooks on the decoder: the layers' functions are called
    here, not the modules).
    """

    def __init__(self, layers: list[tuple[nn.Linear, list[nn.Module]]]) -> None:
        self.layers = layers

    @staticmethod
    def of(model: Any) -> MLPBernoulli | None:
        lik, dec = getattr(model, "likelihood", None), getattr(model, "decoder", None)
        if type(lik) is not likelihoods.Bernoulli or type(dec) is not Decoder or _internals.has_hooks(dec):
            return None  # (hooks: a decoder with forward hooks runs as modules, so that they run)
        body = dec.body
        if type(body) is not nn.Sequential or not len(body):
            return None
        layers: list[tuple[nn.Linear, list[nn.Module]]] = []
        for m in body:
            if type(m) is nn.Linear:
                layers.append((m, []))
            elif type(m) in _IN_PLACE and layers:
                layers[-1][1].append(m)
            else:
                return None
        last = layers[-1][0]
        if layers[-1][1] or last.bias is None or last.out_features != math.prod(lik.event_shape):
            return None  # an activation on the logits, or not one logit per pixel
        if tuple(dec.out_shape) != (1, *lik.event_shape):
            return None
        return MLPBernoulli(layers)

    @property
    def pixels(self) -> int:
        return self.layers[-1][0].out_features

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(W^T x, x . b) of the last layer for each point of ``x`` ``(B, *event)``: ``(B, H)`` and ``(B,)``."""
        last = self.layers[-1][0]
        xf = x.reshape(len(x), -1).to(last.weight.dtype)
        assert last.bias is not None
        return xf @ last.weight, xf @ last.bias

    def log_mass(self, ws: Workspace, z: Tensor, cond: Tensor | None, proj: Tensor, offset: Tensor) -> Tensor:
        """log p(x|z) = x . l - sum_i softplus(l_i), ``(n, m)``, for draws ``z`` ``(m, n, D)`` of ``n``
        points (conditions ``cond`` ``(n, C)``), given the points' :meth:`projections`, in ``ws``."""
        m, n, d = z.shape
        r = n * m
        zin = ws.zin[:r].view(n, m, -1)  # point-major rows
        zin[..., :d].copy_(z.transpose(0, 1))
        if cond is not None:
            zin[..., d:].copy_(cond.unsqueeze(1).expand(n, m, cond.shape[-1]))
        h = ws.zin[:r]
        for (lin, acts), buf in zip(self.layers[:-1], ws.hidden, strict=True):
            out = buf[:r]
            if lin.bias is None:
                torch.mm(h, lin.weight.t(), out=out)
            else:
                torch.addmm(lin.bias, h, lin.weight.t(), out=out)
            for act in acts:
                _IN_PLACE[type(act)](act, out)
            h = out
        last = self.layers[-1][0]
        assert last.bias is not None
        logits = torch.addmm(last.bias, h, last.weight.t(), out=ws.logits[:r])
        dot = torch.bmm(h.view(n, m, -1), proj.unsqueeze(-1)).squeeze(-1).add_(offset.unsqueeze(-1))
        return dot.sub_(softplus_sum_(logits).view(n, m))


class Blocks:
    """Runs the blocks of a particle chunk on ``workers`` threads, each with its own :class:`Workspace`.

    A context manager: with more than one worker, torch's own intra-op threads are set to one while it
    is open (and restored after), so the threads never wait on each other inside an operation: each
    block is a sequence of single-threaded operations on its own rows, handed to whichever thread is
    free (operations release the GIL). On a shared machine a slow thread delays one block, not every
    operation. The blocks write disjoint slices and are summed in a fixed order afterwards, so the
    results do not depend on the number of workers.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None
        self._threads = 0
        self._spaces: dict[tuple[int, int], queue.SimpleQueue[Workspace]] = {}

    def __enter__(self) -> Self:
        if self.workers > 1:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            self._pool = ThreadPoolExecutor(
                self.workers, "pyro-vae-eval", initializer=torch.set_num_threads, initargs=(1,)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self._threads)

    def spaces(self, plan: MLPBernoulli, rows: int, like: Tensor) -> queue.SimpleQueue[Workspace]:
        """One workspace per worker for ``plan`` (allocated on first use, then reused)."""
        key = (id(plan.layers[0][0]), rows)
        if key not in self._spaces:
            self._spaces[key] = queue.SimpleQueue()
            for _ in range(self.workers):
                self._spaces[key].put(Workspace(plan, rows, like))
        return self._spaces[key]

    def run(self, fn: Callable[[Any], None], tasks: list[Any]) -> None:
        if self._pool is None or len(tasks) < 2:
            for t in tasks:
                fn(t)
        else:
            for _ in self._pool.map(fn, tasks):  # re-raises a worker's exception here
                pass


def _softplus_sum(logits: Tensor) -> Tensor:
    """sum_i softplus(l_i) over the last dimension, leaving ``logits`` as it is."""
    lead = logits.shape[:-1]
    return softplus_sum_(logits.reshape(-1, logits.shape[-1]).clone()).view(lead)


def log_likelihood(model: Any, z: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) summed over the event, ``(k, B)``, for draws ``z`` ``(k, B, in_features)`` through the
    model's own decoder and likelihood (a Bernoulli scored as x . l - sum_i softplus(l_i))."""
    lik = model.likelihood
    if type(lik) is not likelihoods.Bernoulli:
        return fast.obs_log_prob(lik, model.decoder(z), x)
    logits = lik.param(model.decoder(z.transpose(0, 1)))  # (B, k, *event): point-major
    n = len(lik.event_shape)
    flat = logits.flatten(-n) if n else logits.unsqueeze(-1)
    xf = (x.flatten(-n) if n else x.unsqueeze(-1)).to(flat.dtype)
    return (torch.bmm(flat, xf.unsqueeze(-1)).squeeze(-1) - _softplus_sum(flat)).transpose(0, 1)


def _blocks(k: int, b: int, rows: int) -> tuple[int, int]:
    """(points, particles) per block: whole points when ``k`` <= ``rows``, else one point and the
    particles split into equal parts (so that every block of a chunk has the same size)."""
    if k <= rows:
        return max(1, min(b, rows // k)), k
    parts = -(-k // rows)
    return 1, -(-k // parts)


def direct_sums(
    vae: Any,
    q: Any,
    x: Tensor,
    cond: Tensor | None,
    num_particles: int,
    chunk: int,
    block_rows: int | None = None,
    blocks: Blocks | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(logsumexp_k log w_k, sum_k log w_k, sum_k log p(x|z_k), sum_k [log p(z_k) - log q(z_k|x)])``
    per point of ``x`` over ``num_particles`` draws z_k ~ q(z|x) (``q``: the guide's distribution for
    these points), drawn ``chunk`` particles at a time, scored in blocks of at most ``block_rows`` rows
    (on the threads of ``blocks``; one thread without it). Default: :data:`BLOCK_ROWS` on the CPU; on an
    accelerator a whole chunk per block (large kernels, nothing to keep in a CPU cache).

    The sums run over the chunks as they come (a running maximum for the log-sum-exp), so chunk and
    block sizes change only the float rounding, and the number of threads changes nothing.
    """
    model = vae.model
    blocks = blocks or Blocks(1)
    b = len(x)
    standard = fast.standard_prior(model) and type(model).prior_dist is Generative.prior_dist
    prior: Any = None if standard else fast.prior_of(model, cond)
    qn = fast.diag_normal(q)
    n_lat = q.event_shape[-1] if q.event_shape else 1
    chunk = min(chunk, num_particles)
    if block_rows is None:
        block_rows = BLOCK_ROWS if x.device.type == "cpu" else b * chunk
    c_dim = 0 if cond is None else cond.shape[-1]
    plan = MLPBernoulli.of(model)
    if qn is not None:
        loc, scale = qn
        eps_buf, z_buf = loc.new_empty(chunk * loc.numel()), loc.new_empty(chunk * loc.numel())
        log_scale = scale.log()
    if plan is not None:
        if x.device.type == "cpu":
            block_rows = max(1, min(block_rows, BLOCK_ELEMENTS // plan.pixels))
        spaces = blocks.spaces(plan, block_rows, plan.layers[-1][0].weight)
        proj, offset = plan.projections(x)
    sums: list[Tensor] = []  # logsumexp, sum log w, sum log p(x|z), sum [log p(z) - log q(z|x)]
    for done in range(0, num_particles, chunk):
        k = min(chunk, num_particles - done)
        if qn is not None:  # a diagonal Normal written out: z = loc + eps * scale, log q from eps
            n_el = k * loc.numel()
            eps = eps_buf[:n_el].view(k, *loc.shape).normal_()  # = Normal.rsample: a (k, B, D) standard normal
            z = torch.mul(eps, scale, out=z_buf[:n_el].view(k, *loc.shape)).add_(loc)
            log_q = (-0.5 * eps.square() - log_scale).sum(-1) - n_lat * fast.HALF_LOG_2PI
        else:
            z = q.rsample((k,)) if q.has_rsample else q.sample((k,))
            log_q = q.log_prob(z)
        if standard:  # N(0, I) written out
            log_p = -0.5 * z.square().sum(-1) - z.shape[-1] * fast.HALF_LOG_2PI
        else:
            log_p = prior.log_prob(z)
        lat = log_p - log_q  # (k, B)
        rec = torch.empty_like(lat)
        pb, kb = _blocks(k, b, block_rows)
        tasks = [(p0, min(b, p0 + pb), j0, min(k, j0 + kb)) for p0 in range(0, b, pb) for j0 in range(0, k, kb)]

        def score(t: tuple[int, int, int, int], z: Tensor = z, rec: Tensor = rec) -> None:
            p0, p1, j0, j1 = t
            zb = z[j0:j1, p0:p1]  # (particles, points, D): a view
            cb = None if cond is None else cond[p0:p1]
            if plan is None:
                zc = zb if cb is None else torch.cat([zb, cb.expand(*zb.shape[:-1], c_dim)], dim=-1)
                rec[j0:j1, p0:p1] = log_likelihood(model, zc, x[p0:p1])
                return
            ws = spaces.get()
            try:
                with torch.no_grad():  # grad mode is per thread: a worker starts with it on
                    rec[j0:j1, p0:p1] = plan.log_mass(ws, zb, cb, proj[p0:p1], offset[p0:p1]).t()
            finally:
                spaces.put(ws)

        if plan is None:  # another decoder: its own modules, on the calling thread
            for t in tasks:
                score(t)
        else:
            blocks.run(score, tasks)
        lw = rec + lat
        parts = (torch.logsumexp(lw, 0), lw.sum(0), rec.sum(0), lat.sum(0))
        if not sums:
            sums = list(parts)
        else:
            torch.logaddexp(sums[0], parts[0], out=sums[0])
            for acc, part in zip(sums[1:], parts[1:], strict=True):
                acc += part
    return sums[0], sums[1], sums[2], sums[3]


__all__ = [
    "BLOCK_ELEMENTS",
    "BLOCK_ROWS",
    "Blocks",
    "MLPBernoulli",
    "Workspace",
    "direct_sums",
    "group_size",
    "log_likelihood",
    "softplus_sum_",
]
