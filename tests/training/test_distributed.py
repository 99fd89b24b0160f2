"""Data-parallel training (pyro_vae/training/distributed.py): N ranks train the model one process trains.

In-process checks of the two facts it rests on (per-row noise that does not depend on the sharding,
and shard losses / global batch size whose gradients sum to the full-batch gradient), then the real
thing: ``torchrun --nproc_per_node=2 -m pyro_vae train`` on gloo (127.0.0.1 only) against one process.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyro_vae.registry import REGISTRY
from pyro_vae.training import distributed as D
from pyro_vae.training import fit

# --------------------------------------------------------------------------- sharding


@given(n=st.integers(0, 300), world=st.integers(1, 9))
def test_shards_partition_the_global_batch_in_order(n, world):
    bounds = [D.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, in rank order
    sizes = [b - a for a, b in bounds]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_context_shard_of_one_process_is_the_whole_batch():
    idx = torch.randperm(11)
    assert torch.equal(D.Context().shard(idx), idx)
    parts = [D.Context(rank=r, world_size=3).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx) and [len(p) for p in parts] == [4, 4, 3]


def test_derived_seeds_differ_and_repeat():
    assert D.derive_seed(0, 1, 2) == D.derive_seed(0, 1, 2)
    assert len({D.derive_seed(0, e, s) for e in range(5) for s in range(5)}) == 25
    assert 0 <= D.derive_seed(2**40, -3) < 2**63


# --------------------------------------------------------------------------- noise


B, DIM = 7, 3


def _families(h):
    """Reparameterized q(z|x) families with batch (B,) and event (DIM,), as the guides build them."""
    loc, raw = h[:, :DIM], h[:, DIM : 2 * DIM]
    scale = torch.nn.functional.softplus(raw) + 0.1
    tril = torch.diag_embed(scale) + torch.tril(torch.full((DIM, DIM), 0.1), diagonal=-1)
    affine = dist.transforms.AffineTransform(loc=1.0, scale=2.0)
    return {
        "diagonal_normal": dist.Normal(loc, scale).to_event(1),
        "full_rank": dist.MultivariateNormal(loc, scale_tril=tril),
        "low_rank": dist.LowRankMultivariateNormal(loc, h[:, :DIM, None].expand(-1, DIM, 2) * 0.1, scale),
        "flow": dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [affine]),
    }


def _guide_draws(family, rows, noise, particles=4):
    """The z draws of a vectorized-particle guide over data ``rows`` under ``noise``."""
    h = torch.linspace(-1, 1, B * 2 * DIM).reshape(B, 2 * DIM)[rows]

    def guide():
        with pyro.plate("particles", particles, dim=-2), pyro.plate("data", len(h), dim=-1):
            return pyro.sample("z", _families(h)[family])

    with noise:
        return guide()


@pytest.mark.parametrize("family", ["diagonal_normal", "full_rank", "low_rank", "flow"])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_each_data_point_gets_the_same_noise_whatever_the_sharding(family, world):
    whole = _guide_draws(family, slice(0, B), D.StepNoise(123, B, 0, B))
    parts = []
    for r in range(world):
        a, b = D.shard_bounds(B, r, world)
        if b > a:  # an empty shard draws nothing (the training loop never calls the model on it)
            parts.append(_guide_draws(family, slice(a, b), D.StepNoise(123, B, a, b)))
    torch.testing.assert_close(torch.cat(parts, dim=-2), whole, rtol=1e-6, atol=1e-6)
    other = _guide_draws(family, slice(0, B), D.StepNoise(124, B, 0, B))
    assert not torch.allclose(other, whole)  # the seed matters: this is noise, not a constant


def test_noise_leaves_the_global_stream_alone_and_observed_sites_untouched():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x = torch.ones(B, DIM)

    def model():
        with pyro.plate("data", B, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(B, DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    tr = pyro.poutine.trace(model).get_trace
    with D.StepNoise(5, B, 0, B):
        t = tr()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(t.nodes["x"]["value"], x)


@pytest.mark.parametrize("world", [2, 3])
def test_dynamic_binarization_is_drawn_per_global_row(world):
    p = torch.rand(B, 2, 2, generator=torch.Generator().manual_seed(0))
    whole = D.StepNoise(9, B, 0, B).bernoulli(p)
    parts = [
        D.StepNoise(9, B, *D.shard_bounds(B, r, world)).bernoulli(p[slice(*D.shard_bounds(B, r, world))])
        for r in range(world)
    ]
    assert torch.equal(torch.cat(parts), whole)
    assert set(whole.unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- gradients


def _tiny_vae(seed=0):
    from pyro_vae import spec as spec_mod
    from pyro_vae.models.vae import build_model

    torch.manual_seed(seed)
    cfg = spec_mod.resolve(
        spec_mod.apply_overrides(spec_mod.load(None), ["model.latent_dim=2", "model.network.hidden=[8]"])
    )
    return build_model(cfg, (1, 3, 3))


def _grads(vae, elbo_spec, x, rows, world, fast):
    """Summed gradients of the shards' losses / global batch size (what the all-reduce computes)."""
    loss_fn = REGISTRY.build("elbo", elbo_spec)(vae.model, vae.guide)
    if fast:
        loss_fn = pytest.importorskip("pyro_vae.estimators.fast").accelerate(loss_fn)
    vae.zero_grad(set_to_none=True)
    total = 0.0
    for r in range(world):
        a, b = D.shard_bounds(len(rows), r, world)
        if b == a:
            continue
        with D.StepNoise(77, len(rows), a, b):
            loss = loss_fn(x[rows[a:b]], None) / len(rows)
        loss.backward()  # accumulates: the sum over ranks
        total += float(loss.detach())
    return total, {k: p.grad.clone() for k, p in vae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "elbo",
    [
        {"kind": "trace"},
        {"kind": "meanfield"},
        {"kind": "iwae", "num_particles": 3},
        {"kind": "renyi", "alpha": 0.5, "num_particles": 2},
    ],
)
@pytest.mark.parametrize("fast", [False, True])
def test_shard_gradients_sum_to_the_full_batch_gradient(elbo, fast):
    """sum_r d(L_r / B) = d(L / B), ragged shards (7 rows on 3 ranks) and empty ones (8 ranks) included."""
    vae = _tiny_vae()
    x = torch.bernoulli(torch.full((B, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(1))
    rows = torch.arange(B)
    l1, g1 = _grads(vae, elbo, x, rows, 1, fast)
    for world in (3, 8):
        lw, gw = _grads(vae, elbo, x, rows, world, fast)
        assert lw == pytest.approx(l1, rel=1e-5)
        assert g1.keys() == gw.keys()
        for k in g1:
            torch.testing.assert_close(gw[k], g1[k], rtol=1e-4, atol=1e-6, msg=k)


# --------------------------------------------------------------------------- torchrun vs one process


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A ragged run: 200 points -> 180 train, batches of 47 (last 39: shards 20 + 19), dynamic binarization.
RUN = [
    "train.epochs=2",
    "train.batch_size=47",
    "train.progress=false",
    "train.figures=false",
    "train.eval_particles=3",
    "data.limit=200",
    "data.binarize=dynamic",
    "model.latent_dim=2",
    "model.network.hidden=[16]",
]


def _torchrun(nproc, out, sets, *extra, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for _attempt in range(3):  # the free port may be taken between probing and binding: retry on that only
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "pyro_vae", "train", "--out", str(out), *extra]  # fmt: skip
        for s in sets:
            cmd += ["--set", s]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if res.returncode == 0 or "address already in use" not in res.stderr.lower():
            break
    return res


def _metrics(run_dir):
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a, b):
    ma, mb = _metrics(a), _metrics(b)
    assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb]
    for ra, rb in zip(ma, mb):
        for key in ("train_loss", "test_elbo", "test_kl", "valid_elbo"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    sa = torch.load(Path(a, "checkpoint.pt"), weights_only=True)["model"]
    sb = torch.load(Path(b, "checkpoint.pt"), weights_only=True)["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    """torchrun with 2 CPU processes (gloo) vs 1 process, same seed, same losses."""
    res = _torchrun(2, tmp_path / "ddp", RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("done:") == 1  # rank 0 alone reports
    fit(overrides=RUN, out=tmp_path / "one")
    _assert_same_run(tmp_path / "ddp", tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_distributed_resume_and_errors(tmp_path):
    """Resume under torchrun (3 ranks, some shards empty) continues the one-process run; a bad run
    directory stops every rank with exit 2 and one message instead of a hang."""
    sets = [*RUN, "train.batch_size=89"]  # 180 = 89 + 89 + 2: the last batch leaves rank 2 empty
    one = tmp_path / "one"
    fit(overrides=[*sets, "train.epochs=3"], out=one)
    res = _torchrun(3, tmp_path / "ddp", [*sets, "train.epochs=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun(3, tmp_path / "ddp", ["train.epochs=3"], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_run(tmp_path / "ddp", one)
    res = _torchrun(2, tmp_path / "ddp", sets)  # exists, no --resume/--force
    assert res.returncode != 0
    assert res.stderr.count("already exists") >= 2, res.stderr[-3000:]


def _pids_of_rank(rank, marker):
    """Worker pids whose command line holds ``marker`` and whose environment has RANK=rank (Linux /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = proc.joinpath("cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            if marker in cmdline and f"RANK={rank}".encode() in proc.joinpath("environ").read_bytes().split(b"\0"):
                out.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone mid-epoch: both ranks stop after the same step (the stop flag rides on
    the gradient all-reduce), rank 0 writes the mid-epoch checkpoint, and --resume under torchrun
    finishes the one-process run's numbers."""
    import signal
    import time

    sets = [*RUN, "train.epochs=5", "train.batch_size=4", "data.limit=400"]
    one = tmp_path / "one"
    fit(overrides=sets, out=one)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pyro_vae", "train", "--out", str(out)]  # fmt: skip
    cmd += [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # the first epoch is done: the signal lands inside the second one
    pids = _pids_of_rank(1, str(out))
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert err.count("stopped by SIGTERM") == 2, err[-3000:]  # both ranks, after a checkpoint
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] < 5 and 0 <= state["partial"]["steps"] < 90  # stopped inside an epoch
    res = _torchrun(2, out, [], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_run(out, one)
