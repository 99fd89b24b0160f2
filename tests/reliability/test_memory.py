"""Load: memory does not grow over epochs; evaluation at K = 5000 runs in bounded memory (chunking)."""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pyro_vae import fit

from .conftest import subprocess_env

MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.slow
def test_rss_flat_over_30_epochs(tmp_path: Path) -> None:
    """30 epochs of the default network on 288 digits (9 steps each): RSS after epoch 30 within
    a few MB of RSS after epoch 5 (a leaked batch graph or tensor per step would add > 20 MB)."""
    rss: list[int] = []

    def record(rec: dict[str, Any], vae: Any) -> None:
        gc.collect()
        rss.append(_rss())

    fit(
        overrides=["train.epochs=30", "train.progress=false", "train.figures=false", "train.eval_particles=2",
                   "data.limit=320", "train.device=cpu"],
        out=tmp_path / "run",
        callbacks={"on_epoch_end": [record]},
    )  # fmt: skip
    growth = (rss[-1] - rss[4]) / MB
    print(f"RSS after epoch 5: {rss[4] / MB:.1f} MB, after 30: {rss[-1] / MB:.1f} MB, growth {growth:.2f} MB")
    assert growth < 8, [round(r / MB, 1) for r in rss]


@pytest.mark.parametrize("row_budget", [64, 1000, 1 << 14])
def test_point_terms_never_exceeds_row_budget(monkeypatch: pytest.MonkeyPatch, row_budget: int) -> None:
    """Every forward pass of a K = 5000 evaluation sees at most ``row_budget`` (point, particle) rows,
    and every point gets exactly K particles."""
    from pyro_vae import build_model, spec

    eval_mod = importlib.import_module("pyro_vae.evaluation.evaluate")  # the module, not the function of that name

    cfg = spec.resolve(
        {**spec.load(None), "model": {**spec.load(None)["model"], "network": {"kind": "mlp", "hidden": [8]}}}
    )
    vae = build_model(cfg, (1, 8, 8), 0)
    x = torch.rand(7, 1, 8, 8)
    seen: list[int] = []  # (point, particle) rows of each decoder pass
    vae.model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[:-1].numel()))
    K = 5000 if row_budget >= 1000 else 300
    for direct in (True, False):  # the direct form of the standard pair, and the Pyro-traced path
        if not direct:
            monkeypatch.setattr(eval_mod, "direct_supported", lambda vae: False)
        seen.clear()
        t = eval_mod.point_terms(vae, x, None, num_particles=K, row_budget=row_budget)
        assert max(seen) <= row_budget
        assert sum(seen) == K * len(x)  # every point, every particle, once
        assert (
            torch.isfinite(t.log_likelihood).all() and (t.log_likelihood >= t.elbo - 1e-4).all()
        )  # L_K >= ELBO (Jensen)


_PEAK_SCRIPT = r"""
import json, os, sys, threading, time, torch
torch.set_num_threads(1)
from pyro_vae import build_model, data, spec
from pyro_vae.evaluation.evaluate import point_terms

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

dev = torch.device(sys.argv[1]); n = int(sys.argv[2]); K = int(sys.argv[3]); budget = int(sys.argv[4])
cfg = spec.resolve(spec.load(None))
ds = data.load(cfg["data"], dev)
vae = build_model(cfg, ds.event_shape, ds.num_classes).to(dev)
x = ds.x_test[:n]
point_terms(vae, x, None, num_particles=10)
if dev.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
base = rss(); peak = [base]; done = threading.Event()

def watch():  # sample RSS while evaluating (torch kernels release the GIL)
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.001)

w = threading.Thread(target=watch); w.start()
t0 = time.time()
t = point_terms(vae, x, None, num_particles=K, row_budget=budget)
done.set(); w.join()
out = {"n": len(x), "K": K, "row_budget": budget, "rss_before_mb": base, "rss_peak_mb": peak[0],
       "seconds": time.time() - t0, "ll": float(t.log_likelihood.mean()), "elbo": float(t.elbo.mean())}
if dev.type == "cuda":
    out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""


def _peak(device: str, n: int, K: int, row_budget: int = 1 << 14) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, device, str(n), str(K), str(row_budget)],
        capture_output=True, text=True, timeout=1200, env=subprocess_env(), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_k5000_full_test_set_bounded_rss() -> None:
    """All 360 test digits x 5000 particles = 1.8M decoder rows (unchunked: > 2 GB of activations)
    in chunks of ROW_BUDGET rows: RSS sampled every millisecond stays within 300 MB of its start."""
    out = _peak("cpu", 360, 5000)
    print(out)
    assert out["rss_peak_mb"] - out["rss_before_mb"] < 300
    assert out["ll"] >= out["elbo"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_k5000_full_test_set_bounded_gpu_memory() -> None:
    out = _peak("cuda", 360, 5000)
    print(out)
    assert out["cuda_peak_mb"] < 300
    assert out["ll"] >= out["elbo"]
