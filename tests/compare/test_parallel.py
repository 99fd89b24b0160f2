"""pyro_vae/compare/parallel.py: independent jobs over spawned processes, results in job order, same numbers."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.compare.parallel import default_threads, map_jobs
from pyro_vae.errors import SpecError


def _train(seed: int, steps: int = 30) -> list[float]:
    """A seeded job: a few SGD steps of a small regression; the losses, bit for bit."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(64, 5)
    y = x.sum(-1, keepdim=True).sin()
    out = []
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def _fail_on_two(seed: int) -> int:
    if seed == 2:
        raise SpecError("seed: 2 is not allowed here")
    return seed


@pytest.mark.slow  # spawns a pool; the compare test below covers workers by default
def test_workers_give_the_sequential_results_in_job_order():
    seeds = [3, 0, 2, 1]
    torch.set_num_threads(1)  # the sequential run uses what each worker uses: one thread
    seq = map_jobs(_train, seeds, workers=1)
    seen: list[int] = []
    par = map_jobs(_train, seeds, workers=2, threads=1, on_result=lambda i, job, res: seen.append(job))
    assert par == seq  # exact: each job seeds itself
    assert sorted(seen) == sorted(seeds)
    assert len({tuple(r) for r in seq}) == len(seeds)  # the jobs really differ


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_job_error_reaches_the_caller_with_its_class(workers):
    with pytest.raises(SpecError, match="seed: 2"):
        map_jobs(_fail_on_two, [0, 1, 2, 3], workers=workers, threads=1)


def test_workers_must_be_positive():
    with pytest.raises(SpecError, match="workers 0"):
        map_jobs(_fail_on_two, [0], workers=0)


def test_default_threads_share_this_process_threads():
    assert default_threads(1) == torch.get_num_threads()
    assert default_threads(10**6) == 1


TINY = [
    "train.epochs=2",
    "train.batch_size=64",
    "train.progress=false",
    "train.figures=false",
    "train.eval_particles=2",
    "data.limit=160",
    "model.latent_dim=2",
    "model.network.hidden=[16]",
]


def _without_timings(obj, drop=("seconds", "run_dir")):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not any(d in k for d in drop)}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_compare_with_workers_gives_the_sequential_table(tmp_path):
    """`pyro-vae compare --workers 2`: the same records and results table as a sequential run."""
    from pyro_vae.compare import CompareOptions, compare

    opts = CompareOptions(eval_particles=5, eval_points=30, curve_particles=3, curve_points=20, snr_particles=())
    args = (None, ["trace", "iwae:num_particles=3"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the 2 workers gets (default: this process's threads / 2, >= 1)
    try:
        seq = compare(*args, seeds=(0,), out=tmp_path / "seq", overrides=TINY, options=opts)
        par = compare(*args, seeds=(0,), out=tmp_path / "par", overrides=TINY, options=opts, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert [r["label"] for r in par.records] == [r["label"] for r in seq.records]  # job order
    assert _without_timings(par.records) == _without_timings(seq.records)  # exact, not approximate
    assert seq.records[0]["test"]["elbo"] != seq.records[1]["test"]["elbo"]

    def table(res):  # compare.md's results rows without the s/epoch column
        rows = [line for line in (res.out / "compare.md").read_text().splitlines() if line.startswith("| ")]
        return [row.rsplit("|", 2)[0] for row in rows]

    assert len(table(seq)) == 3 and table(par) == table(seq)
