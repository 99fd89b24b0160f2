"""Streaming the training split through a DataLoader: the in-memory run's numbers, sharding, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pyro_vae import fit
from pyro_vae.data import streaming
from pyro_vae.rundir import checkpoint
from pyro_vae.training import step as step_mod
from pyro_vae.training.distributed import shard_bounds
from pyro_vae.training.signals import Interrupted

#: 256 points -> 230 train (valid_size 0.1): batches of 48, the last one ragged (38); dynamic binarization
#: and IWAE draw noise every step, so a batch in another order or with other rows changes every number.
RUN = [
    "train.epochs=2",
    "train.batch_size=48",
    "train.progress=false",
    "train.figures=false",
    "train.eval_particles=4",
    "data.limit=256",
    "data.binarize=dynamic",
    "elbo.kind=iwae",
    "elbo.num_particles=2",
    "model.latent_dim=2",
    "model.network.hidden=[32]",
]


def _without_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _assert_identical(a: Path, b: Path) -> None:
    """Same metrics, summary, parameters and optimizer state, bit for bit."""
    ma = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert _without_time(ma) == _without_time(mb)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert {k: v for k, v in sa.items() if k != "train_seconds"} == {
        k: v for k, v in sb.items() if k != "train_seconds"
    }
    ca, cb = checkpoint.load(a / "checkpoint.pt"), checkpoint.load(b / "checkpoint.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for p, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, cb["optimizer"]["state"][p][name]), (p, name)


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mem") / "run"
    res = fit(overrides=RUN, out=out)
    assert not res.data.stream
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_run_equals_the_in_memory_run(in_memory: Path, tmp_path: Path, workers: int) -> None:
    res = fit(overrides=[*RUN, "data.stream=true", f"data.stream_workers={workers}"], out=tmp_path / "s")
    assert res.data.stream and res.data.stream_reason == "data.stream: true"
    _assert_identical(in_memory, tmp_path / "s")


def test_a_budget_smaller_than_the_split_streams_it(in_memory: Path, tmp_path: Path) -> None:
    res = fit(overrides=[*RUN, "data.memory_budget_gb=1e-6", "data.stream_workers=0"], out=tmp_path / "s")
    assert res.data.stream
    assert "exceeds data.memory_budget_gb (1e-06 GB)" in res.data.stream_reason
    _assert_identical(in_memory, tmp_path / "s")


def test_should_stream_decides_by_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert streaming.should_stream(True, 1, 100.0, cpu).stream
    assert not streaming.should_stream(False, 10**15, 1e-9, cpu).stream
    assert streaming.should_stream("auto", 2_000_000_001, 2.0, cpu).stream
    assert not streaming.should_stream("auto", 2_000_000_000, 2.0, cpu).stream
    # no budget given: the default fraction of what the device has available
    monkeypatch.setattr(streaming, "available_memory", lambda device: 1000)
    assert streaming.should_stream("auto", 501, None, cpu).stream
    choice = streaming.should_stream("auto", 500, None, cpu)
    assert not choice.stream and choice.budget == 500 and "0.5 of the cpu memory available" in choice.reason
    assert streaming.split_bytes(torch.zeros(10, 3), None, np.zeros(4, dtype=np.uint8)) == 124


class _CountingRows:
    """An on-disk-like array that records which rows were read."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        self.read.extend(int(r) for r in rows)
        return self.a[rows]


def _shard(rank: int, world: int) -> Any:
    def shard(idx: torch.Tensor) -> torch.Tensor:
        start, stop = shard_bounds(len(idx), rank, world)
        return idx[start:stop]

    return shard


def test_each_rank_reads_only_its_rows_of_the_in_memory_batches(tmp_path: Path) -> None:
    """Two ranks' streamed batches put together are the in-memory global batches, rows and order."""
    n, bs = 103, 10
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    y = torch.arange(n) % 7
    path = tmp_path / "x.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, 3))
    mm[:] = x.numpy()
    mm.flush()
    ref = list(streaming.InMemoryBatches(x, y, bs, _shard(0, 1)).epoch(torch.Generator().manual_seed(5)))
    per_rank, gens = [], []
    for rank in range(2):
        rows = _CountingRows(np.memmap(path, dtype=np.float32, mode="r", shape=(n, 3)))
        src = streaming.StreamingBatches(rows, y.numpy(), bs, _shard(rank, 2), torch.device("cpu"), workers=0)
        gen = torch.Generator().manual_seed(5)
        got = list(src.epoch(gen))
        per_rank.append((got, rows.read))
        gens.append(gen.get_state())
    assert len(ref) == len(per_rank[0][0]) == len(per_rank[1][0]) == 11
    for i, r in enumerate(ref):
        b0, b1 = per_rank[0][0][i], per_rank[1][0][i]
        assert b0 is not None and b1 is not None and r is not None
        assert b0.size == b1.size == r.size == len(r.x)
        assert torch.equal(torch.cat([b0.x, b1.x]), r.x) and torch.equal(torch.cat([b0.y, b1.y]), r.y)
    # rank 0 read exactly its half of every batch, rank 1 the other half: together each row once
    read0, read1 = per_rank[0][1], per_rank[1][1]
    assert sorted(read0 + read1) == list(range(n)) and not set(read0) & set(read1)
    # the data-order generator advanced exactly as the in-memory epoch advances it
    g = torch.Generator().manual_seed(5)
    torch.randperm(n, generator=g)
    assert torch.equal(gens[0], g.get_state()) and torch.equal(gens[1], g.get_state())


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_epoch_skips_without_reading(workers: int) -> None:
    n, bs, skip = 50, 8, 3
    x = np.random.default_rng(0).random((n, 2)).astype(np.float32)
    full = list(
        streaming.InMemoryBatches(torch.from_numpy(x), None, bs, _shard(0, 1)).epoch(torch.Generator().manual_seed(1))
    )
    rows = _CountingRows(x)
    src = streaming.StreamingBatches(rows, None, bs, _shard(0, 1), torch.device("cpu"), workers=workers)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = list(src.epoch(torch.Generator().manual_seed(1), skip=skip))
    assert torch.equal(torch.get_rng_state(), before)  # the loader leaves the model's torch stream alone
    src.close()
    assert got[:skip] == [None] * skip
    for a, b in zip(got[skip:], full[skip:], strict=True):
        assert a is not None and b is not None and torch.equal(a.x, b.x) and a.y is None and a.size == b.size
    if workers == 0:  # (worker processes record in their own copy)
        skipped = {
            int(r) for b in full[:skip] if b is not None for r in np.flatnonzero(np.isin(x[:, 0], b.x[:, 0].numpy()))
        }
        assert skipped and not skipped & set(rows.read)
        assert len(rows.read) == n - skip * bs


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_batches_for_cuda_come_in_pinned_memory(device: str, pinned: bool) -> None:
    src = streaming.StreamingBatches(np.zeros((4, 2)), None, 2, _shard(0, 1), torch.device(device), workers=0)
    assert src.loader is not None and src.loader.pin_memory is pinned


def test_streamed_resume_inside_an_epoch_equals_the_uninterrupted_run(
    in_memory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT during step 7 (epoch 2, 5 steps per epoch), streamed with a worker; --resume streamed."""
    real = step_mod.train_step
    calls = [0]

    def train_step(*args: Any, **kwargs: Any) -> Any:
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        calls[0] += 1
        return real(*args, **kwargs)

    out = tmp_path / "s"
    with monkeypatch.context() as m:
        m.setattr(step_mod, "train_step", train_step)
        with pytest.raises(Interrupted):
            fit(overrides=[*RUN, "data.stream=true", "data.stream_workers=1"], out=out)
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["partial"]["steps"] == 3  # steps 5, 6, 7 of epoch 2 done
    res = fit(out=out, resume=True)
    assert res.data.stream
    _assert_identical(in_memory, out)


def test_resume_may_switch_between_streaming_and_memory(in_memory: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    fit(overrides=[*RUN, "train.epochs=1", "data.stream=true", "data.stream_workers=0"], out=out)
    res = fit(overrides=["train.epochs=2", "data.stream=auto"], out=out, resume=True)
    assert not res.data.stream
    _assert_identical(in_memory, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_streaming_ranks_train_what_one_in_memory_process_trains(in_memory: Path, tmp_path: Path) -> None:
    """torchrun, 2 gloo processes, each streaming its rows through a DataLoader worker."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    sets = [a for s in [*RUN, "data.stream=true", "data.stream_workers=1"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pyro_vae", "train", "--out", str(tmp_path / "ddp"), *sets]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    ma = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (in_memory / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(ma, mb, strict=True):
        for key in ("train_loss", "test_elbo", "test_kl", "valid_elbo"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    sa = checkpoint.load(tmp_path / "ddp" / "checkpoint.pt")["model"]
    sb = checkpoint.load(in_memory / "checkpoint.pt")["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_an_image_folder_streams_its_uint8_cache_with_labels_as_in_memory(tmp_path: Path) -> None:
    """8-bit images from the memory-mapped cache, labels for a CVAE: streamed equals in memory."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), "RGB").save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    sets = ["data.name=image_folder", f"data.path={tmp_path / 'imgs'}", "data.size=8", f"data.cache_dir={tmp_path / 'c'}",
            "model.kind=cvae", "model.network.hidden=[16]", "model.likelihood.kind=discretized_logistic",
            "train.epochs=2", "train.batch_size=7", "train.progress=false", "train.figures=false",
            "train.eval_particles=2"]  # fmt: skip
    mem = fit(overrides=sets, out=tmp_path / "mem")
    streamed = fit(overrides=[*sets, "data.stream=true", "data.stream_workers=1"], out=tmp_path / "s")
    assert not mem.data.stream and streamed.data.stream
    assert streamed.data.x_train.dtype == torch.uint8 and streamed.data.y_train is not None
    _assert_identical(tmp_path / "mem", tmp_path / "s")
