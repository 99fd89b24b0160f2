"""Per-step noise: the Gaussian draws of every reparameterized sample site, seeded by the step.

:class:`StepNoise` is a Pyro handler that draws the standard-normal noise of each unobserved sample
site (and the uniforms of dynamic binarization) for the whole *global* batch from a generator seeded
by ``(seed, epoch, step)``, and keeps this process's rows. Every training run uses it, one process or
many: the draws for data point ``i`` are the same whatever the world size, so a run under ``torchrun``
matches a single-process run up to float summation order (pyro_vae/training/distributed.py), and a
resumed run redraws exactly the noise an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from .. import _internals
from .._typing import Tensor

#: Name of the data plate shared by model and guide (see models/vae.py).
DATA_PLATE = "data"


class StepNoise(Messenger):
    """Pyro handler: Gaussian noise of unobserved sample sites drawn for the global batch.

    Inside the handler, a site whose distribution draws its noise through torch's
    ``_standard_normal`` (Normal and the families built on it) gets noise of the *global* batch
    shape (the ``data`` plate's dim of size ``n_global``) from this step's generator; this rank keeps
    rows ``[start, stop)``. Draws are made in program order with identical global shapes on every rank,
    so the generator stays in step across ranks. :meth:`bernoulli` does the same for dynamic
    binarization. With one rank (``start=0, stop=n_global``) it is just a seeded draw.
    """

    #: It sets the values of sample sites and nothing else, so the estimators' direct forms draw
    #: through it (pyro_vae.estimators.fast) instead of handing the step to Pyro's traces.
    sample_values_only = True

    def __init__(self, seed: int, n_global: int, start: int, stop: int, device: Any = None) -> None:
        super().__init__()
        self.seed = seed
        self.n_global, self.start, self.stop = n_global, start, stop
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _draw(self, shape: tuple[int, ...], dim: int | None, dtype: Any, device: Any) -> Tensor:
        """Standard normal noise of ``shape``; ``dim`` (if given) is the data dim, drawn globally and sliced."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        gen = self.generator(device)
        n_local = self.stop - self.start
        if dim is None or not (0 <= dim < len(shape)) or shape[dim] != n_local:
            return torch.randn(shape, generator=gen, dtype=dtype, device=device)
        full = list(shape)
        full[dim] = self.n_global
        eps = torch.randn(full, generator=gen, dtype=dtype, device=device)
        return eps.narrow(dim, self.start, n_local)

    def bernoulli(self, p: Tensor) -> Tensor:
        """Dynamic binarization of this rank's rows ``p`` (dim 0 = data), uniforms drawn globally."""
        gen = self.generator(p.device)
        u = torch.rand((self.n_global, *p.shape[1:]), generator=gen, dtype=p.dtype, device=p.device)
        return (u[self.start : self.stop] < p).to(p.dtype)

    def _pyro_sample(self, msg: Any) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        frames = [f for f in msg["cond_indep_stack"] if f.name == DATA_PLATE and f.dim is not None]
        event_dims = len(getattr(fn, "event_shape", ()))

        def standard_normal(shape: Any, dtype: Any = None, device: Any = None) -> Tensor:
            shape = tuple(int(s) for s in shape)
            dim = len(shape) - event_dims + frames[0].dim if frames else None
            return self._draw(shape, dim, dtype, device)

        with _internals.patched_standard_normal(standard_normal):  # torch's private _standard_normal
            msg["value"] = fn(*msg["args"], **msg["kwargs"])
        msg["done"] = True


__all__ = ["DATA_PLATE", "StepNoise"]
