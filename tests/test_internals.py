"""The private Pyro/torch APIs behind pyro_vae/_internals.py exist and behave as the adapter assumes.

An upgrade of Pyro or torch that renames or changes one of them fails here, by name, instead of as a
wrong loss, a skipped guard or a silent slowdown somewhere else.
"""

from __future__ import annotations

import importlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae import _internals


def test_pyro_handler_stack_is_the_live_list_of_active_handlers():
    from pyro.poutine import runtime

    assert isinstance(runtime._PYRO_STACK, list)
    assert len(_internals.pyro_handlers()) == 0 and _internals.noise_source() is None
    with poutine.scale(scale=2.0) as outer, poutine.trace() as inner:
        stack = _internals.pyro_handlers()
        assert list(stack)[-2:] == [outer, inner] and _internals.noise_source() is inner
    assert len(_internals.pyro_handlers()) == 0


def test_noise_draw_calls_the_handlers_draw():
    from pyro_vae.training.noise import StepNoise

    h = StepNoise(seed=3, n_global=4, start=1, stop=3)
    assert _internals.has_noise_draw(h) and not _internals.has_noise_draw(poutine.trace())
    eps = _internals.noise_draw(h, (2, 2, 5), 1, torch.float64, "cpu")
    full = torch.randn((2, 4, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(eps, full[:, 1:3])  # the global batch's rows of this shard


def test_detached_parameters_swaps_values_without_gradient_and_restores_them():
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    params = list(net.parameters())
    x = torch.randn(4, 3, requires_grad=True)
    with _internals.detached_parameters(net):
        assert all(not p.requires_grad for p in net.parameters())
        y = net(x).sum()
    y.backward()
    assert all(p.grad is None for p in params) and x.grad is not None  # gradient reaches inputs only
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]  # the same Parameter objects back
    with pytest.raises(RuntimeError), _internals.detached_parameters(net):
        raise RuntimeError
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())  # restored on error too


@pytest.mark.parametrize(("values", "bad"), [((0.5, -2.0), False), ((1e30, 0.0), False), ((float("nan"), 0.0), True),
                                             ((0.0, float("-inf")), True)])  # fmt: skip
def test_non_finite_check_is_amps_kernel_and_flags_exactly_nan_and_inf(values, bad):
    assert callable(getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None))
    grads = [torch.full((3,), values[0]), torch.full((2, 2), values[1])]
    before = [g.clone() for g in grads]
    found = torch.zeros(())
    assert _internals.non_finite_check(grads, found, torch.ones(()))
    assert bool(found > 0) is bad
    assert all(torch.equal(a, b) or bad for a, b in zip(grads, before))  # scale 1: values untouched


def test_fused_optimizers_take_found_inf_and_skip_the_whole_update():
    assert "cpu" in _internals.fused_devices()
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    assert _internals.takes_found_inf(opt) and not _internals.takes_found_inf(torch.optim.Adam([p], lr=0.1))
    p.grad = torch.ones(3)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    before = p.detach().clone()
    _internals.step_unless_found_inf(opt, torch.ones(()))  # found: nothing moves, step count included
    assert torch.equal(p, before) and all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    assert not hasattr(opt, "found_inf")
    _internals.step_unless_found_inf(opt, torch.zeros(()))
    assert not torch.equal(p, before)


def test_patched_standard_normal_feeds_torchs_gaussian_samplers():
    for name in _internals.NORMAL_MODULES:
        assert callable(importlib.import_module(name)._standard_normal), name
    calls = []

    def zeros(shape, dtype=None, device=None):
        calls.append(tuple(shape))
        return torch.zeros(shape, dtype=dtype, device=device)

    with _internals.patched_standard_normal(zeros):
        z = dist.Normal(torch.full((2,), 3.0), 1.0).rsample((4,))
    assert torch.equal(z, torch.full((4, 2), 3.0)) and calls == [(4, 2)]
    assert not torch.equal(dist.Normal(torch.zeros(50), 1.0).rsample(), torch.zeros(50))  # restored


@pytest.mark.parametrize(("path", "name"), _internals.OVERRIDDEN_HOOKS)
def test_the_pyro_hooks_our_estimators_override_still_exist(path, name):
    module, _, cls = path.rpartition(".")
    assert callable(getattr(getattr(importlib.import_module(module), cls), name, None)), f"{path}.{name}"


def test_tracegraph_loss_and_surrogate_returns_the_elbo_and_its_surrogate():
    """ScoreFunction_ELBO relies on ``_loss_and_surrogate_loss(model, guide, args, kwargs)`` returning
    (ELBO, surrogate ELBO) as tensors with the same value for a reparameterized-free guide."""
    from pyro.infer import TraceGraph_ELBO

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    loc = torch.tensor(0.5, requires_grad=True)

    def guide():
        pyro.sample("z", dist.Normal(loc, 1.0).has_rsample_(False))

    elbo, surrogate = _internals.tracegraph_loss_and_surrogate(TraceGraph_ELBO(), model, guide, (), {})
    assert torch.is_tensor(elbo) and torch.is_tensor(surrogate) and surrogate.requires_grad


def test_validate_sample_checks_only_a_validating_distribution_and_checked_instance_expands():
    """``validate_sample`` runs the distribution's own support check when it validates its arguments;
    ``checked_instance`` gives the object a subclass's ``expand`` fills (as ``Distribution.expand`` does)."""
    import pyro.distributions as dist

    strict = dist.Bernoulli(probs=torch.tensor(0.3), validate_args=True)
    with pytest.raises(ValueError):
        _internals.validate_sample(strict, torch.tensor(0.5))  # outside {0, 1}
    _internals.validate_sample(strict, torch.tensor(1.0))
    _internals.validate_sample(dist.Bernoulli(probs=torch.tensor(0.3), validate_args=False), torch.tensor(0.5))

    class Sub(dist.Normal):
        def __init__(self, loc, scale):
            super().__init__(loc, scale)

    base = Sub(torch.zeros(2), torch.ones(2))
    new = _internals.checked_instance(base, Sub)
    assert type(new) is Sub and new is not base
    with pytest.raises(NotImplementedError):  # a subclass with its own __init__ must override expand
        _internals.checked_instance(base, dist.Normal)
