"""Data-parallel training under ``torchrun``: process group, sharding, gradient all-reduce, noise.

``torchrun --nproc_per_node=N -m pyro_vae train SPEC`` starts N copies of the ordinary ``train``
command; :func:`context` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and joins the process group (NCCL for CUDA tensors, gloo for CPU
ones). With ``WORLD_SIZE`` unset or 1 there is no process group and ``fit`` runs as one process
(with the same step noise, pyro_vae/training/noise.py, which is what makes the runs comparable).

What makes N processes train *the same model* as one process with the same global batch:

- **Sharding.** Every rank draws the same seeded permutation, so every rank knows the global batch;
  rank ``r`` takes the contiguous block ``r`` of it (:meth:`Context.shard`, sizes differ by at most
  one, a ragged last batch included; a rank may get no rows at all).
- **Loss normalisation.** Each rank divides its summed loss by the *global* batch size and the
  gradients are **summed** across ranks (:meth:`Context.wrap_loss`: the loss value is summed over
  ranks in forward, and one flat all-reduce of the gradients ends every ``backward``),
  so ``sum_r d(L_r / B) = d(L / B)``: exactly the single-process gradient, ragged batches included
  (averaging over ranks, as DDP's default does, would weight a short shard wrongly). Parameters that
  got no gradient on any rank keep ``grad=None``, as in one process (Adam then leaves them alone).
- **Noise.** :class:`~pyro_vae.training.noise.StepNoise` draws the Gaussian noise of every reparameterized sample site (and
  dynamic binarization) for the *whole global batch* from a generator seeded by
  ``(seed, epoch, step)``, and each rank keeps its own rows. The draws for data point ``i`` are
  therefore the same whatever the world size (one process uses the same mechanism), and the runs
  agree to float rounding (summation order). This covers every draw made through
  ``torch.distributions``' standard-normal noise: Normal, MultivariateNormal, LowRankMultivariateNormal
  and everything built on them (``to_event``, flows on a Normal base). Other draws (non-reparameterized
  ``sample()``, Gamma/Beta/relaxed distributions) come from each rank's own torch stream
  (rank 0: the single-process stream; rank r: a stream derived from ``(seed, rank)``): they are
  independent across ranks and match a single process in distribution, not draw by draw.
- **Rank 0 alone** reads and writes the run directory (config, checkpoint, metrics, summary,
  figures) and computes the evaluation metrics; :meth:`Context.on_main` runs such a function on rank 0
  and hands its result, or its error, to every rank, so a bad run directory stops all ranks with the
  same one-line message instead of leaving them waiting.
- **Stops are collective.** A SIGINT/SIGTERM (pyro_vae/training/signals.py) on any rank is agreed on at the
  next gradient all-reduce, so every rank stops after the same step and rank 0's mid-epoch checkpoint
  resumes exactly.

Gradients are combined by an explicit all-reduce queued at the end of ``backward`` (the hook DDP's
reducer uses) rather than by wrapping the estimator module in ``DistributedDataParallel``: the Pyro
trace path and the fast path stay untouched, the sum/global-B normalisation above is exact, and empty
shards need no special casing. The result is the same synchronous data-parallel SGD as DDP (one
bucket, no overlap of communication with backward).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from .. import _internals
from .._typing import Tensor
from ..errors import PyroVAEError, RunError
from .noise import DATA_PLATE, StepNoise

T = TypeVar("T")

#: The environment torchrun sets for every worker.
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        raise RunError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 steps: cheap enough for every training step)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = ((x ^ (int(p) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch of ``n`` that rank ``rank`` takes.

    Contiguous blocks whose sizes differ by at most one (the first ``n % world_size`` ranks get one
    more); a rank gets an empty block when ``n < world_size``.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _noise: StepNoise | None = None  # the current step's noise (see noise, wrap_loss)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ placement

    def device(self, device: torch.device) -> torch.device:
        """The training device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs, else ``device``."""
        if self.is_distributed and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's rows of the global batch ``idx`` (all of it in one process)."""
        if not self.is_distributed:
            return idx
        start, stop = shard_bounds(len(idx), self.rank, self.world_size)
        return idx[start:stop]

    # ------------------------------------------------------------------ synchronisation

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on rank 0 only and return its result on every rank.

        An error on rank 0 is raised on every rank: the same class for pyro-vae's own errors
        (so the CLI prints the same one line and exits 2), a :class:`RunError` naming it otherwise.
        """
        if not self.is_distributed:
            return fn(*args, **kwargs)
        payload: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                payload = [("ok", fn(*args, **kwargs))]
            except BaseException as e:  # noqa: BLE001 - handed to the other ranks, then re-raised
                error = e
                kind = type(e) if isinstance(e, PyroVAEError) else RunError
                payload = [
                    (
                        "error",
                        (kind, f"{e}" if isinstance(e, PyroVAEError) else f"rank 0 failed: {type(e).__name__}: {e}"),
                    )
                ]
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "ok":
            return value  # type: ignore[no-any-return]
        if error is not None:
            raise error
        kind, message = value
        try:
            raise kind(message)
        except TypeError:  # an error class with a different constructor
            raise RunError(message) from None

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself in one process)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (in place)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                if isinstance(t, torch.Tensor):
                    dist.broadcast(t, src=0)

    def seed_rank(self, seed: int, epoch: int) -> None:
        """Give ranks > 0 their own torch stream for draws :class:`StepNoise` does not cover.

        Rank 0 keeps the stream a single process would have, so its evaluation draws match one.
        """
        if self.is_distributed and not self.is_main:
            torch.manual_seed(derive_seed(seed, self.rank, epoch, 0x7F4A7C15))

    def noise(self, seed: int, epoch: int, step: int, n_global: int) -> StepNoise:
        """The noise of one step: draws for the global batch, this rank's rows kept.

        It also becomes the noise the loss from :meth:`wrap_loss` draws with, until the next call.
        """
        start, stop = shard_bounds(n_global, self.rank, self.world_size)
        self._noise = StepNoise(derive_seed(seed, epoch, step, 0x9E3779B9), n_global, start, stop)
        return self._noise

    def wrap_loss(self, loss_fn: Callable[..., Tensor], module: torch.nn.Module) -> SyncedLoss:
        """``loss_fn`` drawing with the current step's noise and, under torchrun, synchronised.

        In a distributed run the returned loss is the sum over ranks of their per-shard sums (so
        ``loss / global_batch_size`` is the single-process value on every rank) and ``backward`` on
        it ends with one flat all-reduce (sum) of ``module``'s gradients, whoever calls ``backward``
        and ``optimizer.step`` (the training loop or a fused step function). It also makes the
        running :func:`pyro_vae.training.signals.current` stop flag collective (:func:`_agree_on_stops`).
        """
        if self.is_distributed:
            from . import signals as interrupt

            _agree_on_stops(interrupt.current())
        return SyncedLoss(loss_fn, module, self)

    def _all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks (one flat all-reduce with a has-gradient flag per parameter).

        The same buffer carries a stop flag: a SIGINT/SIGTERM seen by any rank (pyro_vae.training.signals)
        becomes every rank's stop request here, so all ranks stop after the same step.
        """
        from . import signals as interrupt

        stop = interrupt.current()
        signum = getattr(stop, "_pending", None)
        device = params[0].device
        parts = [
            p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params
        ]
        flags = torch.tensor(
            [p.grad is not None for p in params] + [signum is not None], dtype=torch.float32, device=device
        )
        flat = torch.cat(parts + [flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        has = flat[-1 - len(params) : -1].tolist()
        offset = 0
        for p, h in zip(params, has):
            g = flat[offset : offset + p.numel()]
            offset += p.numel()
            p.grad = g.view_as(p).to(p.dtype).clone() if h > 0 else None
        if float(flat[-1]) > 0 and isinstance(stop, _AgreedStop):  # some rank was signalled: all stop now
            stop._agreed = signum or _SIGTERM

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


_CONTEXT: Context | None = None
_SIGTERM = 15


class _AgreedStop:
    """Mixin for a :class:`pyro_vae.training.signals.Stop` of a distributed run: ``signum`` becomes collective.

    A signal handler's ``stop.signum = n`` (``request``) only records a pending request; what the
    training loop reads (``signum``, ``requested``) is the value all ranks agreed on at the last
    gradient all-reduce. Signals land on ranks at different moments (even one rank alone); without
    this a rank could leave the loop one step before the others and leave them waiting forever.
    """

    _pending: int | None = None
    _agreed: int | None = None

    @property  # type: ignore[misc]
    def signum(self) -> int | None:
        return self._agreed

    @signum.setter
    def signum(self, value: int | None) -> None:
        self._pending = value


def _agree_on_stops(stop: Any) -> None:
    if isinstance(stop, _AgreedStop):
        return
    pending = stop.__dict__.pop("signum", None)  # a signal before the loop: still pending
    stop.__class__ = type("AgreedStop", (_AgreedStop, type(stop)), {})
    stop._pending, stop._agreed = pending, None


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum of ``local`` over ranks. Backward: identity for this rank's own term, and
    queue the gradient all-reduce to run once autograd has accumulated every leaf gradient
    (the mechanism DistributedDataParallel's reducer uses)."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, sync: SyncedLoss) -> Tensor:  # type: ignore[override]
        ctx.sync = sync
        total = local.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        sync: SyncedLoss = ctx.sync
        _internals.queue_after_backward(sync.after_backward)
        return grad, None


class SyncedLoss(torch.nn.Module):
    """``loss_fn`` under the current :class:`StepNoise`, summed over ranks (see :meth:`Context.wrap_loss`).

    A rank whose shard is empty contributes zero (Pyro plates cannot have size 0) and still takes
    part in both all-reduces.
    """

    def __init__(self, loss_fn: Callable[..., Tensor], module: torch.nn.Module, ctx: Context) -> None:
        super().__init__()
        self.inner = loss_fn
        self.ctx = ctx
        self._module = [module]  # not a submodule: parameters stay owned by the model

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        noise = self.ctx._noise
        if len(x) == 0:
            local = torch.zeros((), device=x.device, requires_grad=True)
        elif noise is None:
            local = self.inner(x, *args, **kwargs)
        else:
            with noise:
                local = self.inner(x, *args, **kwargs)
        if not self.ctx.is_distributed:
            return local
        return _SumOverRanks.apply(local, self)

    def after_backward(self) -> None:
        params = [p for p in self._module[0].parameters() if p.requires_grad]
        if params:
            self.ctx._all_reduce_grads(params)


def context() -> Context:
    """The process's :class:`Context`; joins torchrun's process group on first use when WORLD_SIZE > 1."""
    global _CONTEXT
    world = env_world_size()
    if world == 1:
        return Context()
    if _CONTEXT is not None and dist.is_initialized():
        return _CONTEXT
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise RunError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with torchrun --nproc_per_node=N")
    if not dist.is_available():
        raise RunError("this torch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        # With CUDA: NCCL for CUDA tensors, gloo for CPU ones (train.device: cpu; object broadcasts).
        use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
        backend = os.environ.get("PYRO_VAE_DIST_BACKEND") or ("cpu:gloo,cuda:nccl" if use_nccl else "gloo")
        if "nccl" in backend:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    return _CONTEXT


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the command with ``code``. Under torchrun the process group is destroyed and the process
    leaves with ``os._exit`` once stdout/stderr are flushed: a gloo process group's C++ threads can
    abort the interpreter's own teardown ("terminate called without an active exception", SIGABRT
    after the work is done and saved, seen with torch 2.14 about one run in six)."""
    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    try:
        _destroy()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return rank() == 0


__all__ = [
    "DATA_PLATE",
    "Context",
    "StepNoise",
    "SyncedLoss",
    "context",
    "derive_seed",
    "env_world_size",
    "is_main",
    "rank",
    "shard_bounds",
    "world_size",
]
