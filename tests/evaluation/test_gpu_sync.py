"""The training step decides a skip on the device: no host read of a device tensor on the hot path.

On a GPU a host read (``.item()``, ``bool()``, ``float()``, ``.tolist()``) waits for every kernel
queued before it, so a read per step serializes the launch queue. ``training.step.train_step`` hands the
non-finite flag to the fused optimizer kernel as ``found_inf`` (the argument AMP's GradScaler uses)
instead. Where CUDA exists, the step runs under ``torch.cuda.set_sync_debug_mode("error")``, which
raises on any synchronizing call; on the CPU the same code is checked by counting host reads.
"""

import math
from contextlib import contextmanager

import pyro
import pytest
import torch

from pyro_vae.estimators import IWAE_ELBO
from pyro_vae.estimators.fast import accelerate
from pyro_vae.guides.normal import DiagonalNormalGuide
from pyro_vae.models import likelihoods
from pyro_vae.models.nets import mlp
from pyro_vae.models.priors import StandardNormal
from pyro_vae.models.vae import VAE, Generative
from pyro_vae.training import fit
from pyro_vae.training import step as step_mod
from pyro_vae.training.step import optimizer_options, train_step

EVENT = (1, 4, 4)
LATENT = 3


def make(device="cpu", optimizer=torch.optim.Adam):
    torch.manual_seed(0)
    lik = likelihoods.Bernoulli(event_shape=EVENT)
    nets = mlp(event_shape=EVENT, latent_dim=LATENT, out_params=lik.num_params, hidden=[8])
    vae = VAE(
        Generative(StandardNormal(latent_dim=LATENT), nets.decoder, lik),
        DiagonalNormalGuide(encoder=nets.encoder, latent_dim=LATENT),
    )
    vae = vae.to(device)
    params = list(vae.parameters())
    opt = optimizer(params, lr=0.01, **optimizer_options(optimizer, params))
    loss_fn = accelerate(IWAE_ELBO(3)(vae.model, vae.guide))
    x = torch.bernoulli(torch.rand(6, *EVENT, generator=torch.Generator().manual_seed(1))).to(device)
    return vae, params, opt, loss_fn, x


def poisoned(loss_fn):
    return lambda x, cond: loss_fn(x, cond) * math.nan


@contextmanager
def host_reads():
    """Counts host reads of tensors (``bool``, ``item``, ``float``, ``int``, ``tolist``) in the block."""
    counts = {"n": 0}
    names = ("__bool__", "item", "__float__", "__int__", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(fn):
        def counted(self, *a, **kw):
            counts["n"] += 1
            return fn(self, *a, **kw)

        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(saved[n]))
    try:
        yield counts
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def _snapshot(params, opt):
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    return [p.detach().clone() for p in params], state


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    return all(torch.equal(x, y) for x, y in zip(pa, pb)) and all(
        all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(sa, sb)
    )


def test_steps_after_the_first_read_nothing_back_to_the_host():
    _vae, params, opt, loss_fn, x = make()
    pyro.set_rng_seed(0)
    train_step(loss_fn, opt, params, x, None, len(x))  # the first step creates the optimizer's state
    with host_reads() as reads:
        flags = []
        for i in range(6):
            fn = poisoned(loss_fn) if i in (2, 3) else loss_fn
            if i == 2:
                before = _snapshot(params, opt)
            _, stepped = train_step(fn, opt, params, x, None, len(x))
            if i == 3:
                after = _snapshot(params, opt)
            flags.append(stepped)
    assert reads["n"] == 0
    assert torch.stack(flags).tolist() == [True, True, False, False, True, True]
    # the two skipped steps left parameters, Adam moments and step count bit-identical
    assert _same(before, after)
    assert float(opt.state[params[0]]["step"]) == 5  # 1 + 4 steps taken


def test_the_counter_sees_a_host_read():
    """Control: an optimizer without a fused kernel (NAdam) must read the flag, and the count shows it."""
    _vae, params, opt, loss_fn, x = make(optimizer=torch.optim.NAdam)
    train_step(loss_fn, opt, params, x, None, len(x))
    with host_reads() as reads:
        before = _snapshot(params, opt)
        _, stepped = train_step(poisoned(loss_fn), opt, params, x, None, len(x))
        after = _snapshot(params, opt)
    assert reads["n"] >= 1 and not bool(stepped) and _same(before, after)


def test_a_skipped_first_step_leaves_no_optimizer_state():
    _vae, params, opt, loss_fn, x = make()
    before = [p.detach().clone() for p in params]
    _, stepped = train_step(poisoned(loss_fn), opt, params, x, None, len(x))
    assert not bool(stepped) and not opt.state and all(torch.equal(a, p) for a, p in zip(before, params))


def test_the_device_decision_equals_the_host_decision():
    """A skipped step through ``found_inf`` and through a host read lead to the same parameters."""
    runs = []
    for fused in (True, False):
        _vae, params, _, loss_fn, x = make()
        opt = torch.optim.Adam(params, lr=0.01, fused=fused)
        pyro.set_rng_seed(3)
        for i in range(5):
            train_step(poisoned(loss_fn) if i == 2 else loss_fn, opt, params, x, None, len(x))
        runs.append([p.detach().clone() for p in params])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*runs))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
def test_cuda_steps_issue_no_host_synchronization():
    _vae, params, opt, loss_fn, x = make("cuda")
    assert optimizer_options(torch.optim.Adam, params) == {"fused": True}
    train_step(loss_fn, opt, params, x, None, len(x))  # creates the state (one read)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        flags = [
            train_step(poisoned(loss_fn) if i == 1 else loss_fn, opt, params, x, None, len(x))[1] for i in range(4)
        ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.stack(flags).tolist() == [True, False, True, True]


@cuda
def test_cuda_fit_steps_issue_no_host_synchronization(tmp_path, monkeypatch):
    real = step_mod.train_step
    calls = {"n": 0}

    def guarded(loss_fn, optimizer, *args, **kwargs):
        if not optimizer.state:  # the first step reads its flag on the host (see train_step)
            return real(loss_fn, optimizer, *args, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        try:
            calls["n"] += 1
            return real(loss_fn, optimizer, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(step_mod, "train_step", guarded)
    fit(
        overrides=["train.epochs=1", "train.device=cuda", "train.batch_size=64", "elbo.kind=iwae",
                   "elbo.num_particles=5", "train.eval_particles=10", "train.figures=false"],
        out=tmp_path / "run",
    )  # fmt: skip
    assert calls["n"] > 10


@pytest.mark.slow
def test_train_compile_trains_like_the_eager_step(tmp_path):
    """train.compile: the compiled loss is the same objective (its draws come from inductor's generator,
    so the two runs agree in distribution: close held-out ELBOs, not equal ones)."""
    common = [
        "train.epochs=2",
        "train.batch_size=64",
        "train.figures=false",
        "train.eval_particles=10",
        "train.device=cpu",
    ]
    runs = [
        fit(overrides=[*common, f"train.compile={on}"], out=tmp_path / str(on)).history[-1] for on in ("false", "true")
    ]
    assert all(math.isfinite(r["test_elbo"]) for r in runs)
    assert abs(runs[0]["test_elbo"] - runs[1]["test_elbo"]) < 3.0
