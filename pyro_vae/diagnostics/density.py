"""What every check evaluates: the unscaled log joint log p(x, z) of a model, and the guide's requirements."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from .._typing import Tensor
from ..errors import RunError


def log_joint(model: Any, x: Tensor, cond: Tensor | None, z: Tensor) -> Tensor:
    """Unscaled log p(x, z) of the Pyro ``model`` for ``z`` of shape ``(K, B, D)``; returns ``(K, B)``.

    A model that declares ``supports_direct`` (a :class:`~pyro_vae.models.vae.Generative` whose program is
    its own) answers with its :meth:`~pyro_vae.models.vae.Generative.log_joint`: the same numbers as a
    trace of its ``forward`` at about half the cost per NUTS leapfrog step (a test checks they agree).
    Any other model with sites ``z`` and ``x`` goes through :func:`log_joint_traced`.
    """
    if getattr(model, "supports_direct", False):
        return model.log_joint(x, z, cond)
    return log_joint_traced(model, x, cond, z)


def log_joint_traced(model: Callable[..., Any], x: Tensor, cond: Tensor | None, z: Tensor) -> Tensor:
    """:func:`log_joint` through a Pyro trace of ``model`` conditioned on ``z`` (any model).

    ``K`` is vectorized by a plate at dim -2 (the model's data plate is dim -1), as in
    :func:`pyro_vae.estimators.log_terms`.
    """
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


__all__ = ["check_guide", "frozen", "log_joint", "log_joint_traced"]
