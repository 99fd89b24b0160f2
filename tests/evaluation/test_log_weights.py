"""The blocked, buffered, threaded L_K of pyro_vae.evaluation.log_weights: the numbers of a float64
log-mean-exp over the same draws whatever the blocks and threads, the same as the decoder's own modules
for every activation and a condition (CVAE), and a resident set that stays flat over many chunks."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import build_model, spec
from pyro_vae.evaluation import log_weights
from pyro_vae.evaluation.evaluate import point_terms
from pyro_vae.models import likelihoods
from tests.evaluation.test_eval_speed_equivalence import by_hand, data, make_vae


def _vae(activation="tanh", kind="vae", likelihood="bernoulli", hidden=(9, 7), event=(1, 4, 4), latent=3):
    base = spec.load(None)
    cfg = spec.resolve({**base, "model": {**base["model"], "kind": kind, "latent_dim": latent,
                                           "network": {"kind": "mlp", "hidden": list(hidden), "activation": activation},
                                           "likelihood": {"kind": likelihood}}})  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg, event, 3 if kind == "cvae" else 0)


@pytest.mark.parametrize(("k", "rows"), [(300, 64), (300, 1024), (7, 16), (1, 4)])
def test_blocks_within_and_across_points_give_the_float64_log_mean_exp(monkeypatch, k, rows):
    """K = 300 in blocks of 60 particles of one point, or whole points; K = 7 in blocks of two points."""
    monkeypatch.setattr(log_weights, "BLOCK_ROWS", rows)
    vae, x = make_vae(), data(5)
    pyro.set_rng_seed(11)
    t = point_terms(vae, x, None, k, row_budget=k * len(x), means=False)  # one particle chunk: one rsample
    ll, elbo = by_hand(vae, x, k, 11)
    assert torch.allclose(t.log_likelihood.double(), ll, rtol=0, atol=1e-4)
    assert torch.allclose(t.elbo.double(), elbo, rtol=0, atol=1e-4)


def test_the_number_of_threads_changes_nothing():
    vae, x = make_vae(), data(5)
    saved = torch.get_num_threads()
    got = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            pyro.set_rng_seed(4)
            got.append(point_terms(vae, x, None, 700, row_budget=1400, means=False))
            assert torch.get_num_threads() == threads  # the evaluation's own thread setting is undone
        finally:
            torch.set_num_threads(saved)
    for a, b in zip(got[0].__dict__.values(), got[1].__dict__.values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)  # disjoint blocks, summed in a fixed order: bit for bit


@pytest.mark.parametrize(
    ("activation", "kind"),
    [("tanh", "vae"), ("relu", "vae"), ("elu", "vae"), ("leaky_relu", "vae"), ("softplus", "vae"),
     ("gelu", "vae"), ("silu", "vae"), ("tanh", "cvae")],
)  # fmt: skip
def test_buffered_decoder_equals_the_decoder_modules(monkeypatch, activation, kind):
    """The layers' functions in buffers, x . l from the last layer's W^T x, and the grouped softplus give
    the same log p(x|z) as the decoder module and Bernoulli likelihood on the same draws."""
    vae = _vae(activation, kind)
    assert log_weights.MLPBernoulli.of(vae.model) is not None
    x = data(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2]) if kind == "cvae" else None
    pyro.set_rng_seed(8)
    planned = point_terms(vae, x, y, 200, row_budget=400, means=False)
    monkeypatch.setattr(log_weights.MLPBernoulli, "of", staticmethod(lambda model: None))
    pyro.set_rng_seed(8)
    modules = point_terms(vae, x, y, 200, row_budget=400, means=False)
    for a, b in [(planned.log_likelihood, modules.log_likelihood), (planned.elbo, modules.elbo),
                 (planned.reconstruction, modules.reconstruction), (planned.kl, modules.kl)]:  # fmt: skip
        assert torch.allclose(a, b, rtol=1e-6, atol=2e-4), (a - b).abs().max()


def test_the_buffered_decoder_is_used_only_where_it_computes_the_same():
    of = log_weights.MLPBernoulli.of
    assert of(_vae().model) is not None
    assert of(_vae(likelihood="gaussian").model) is None  # another likelihood
    assert of(_vae(likelihood="continuous_bernoulli").model) is None
    hooked = _vae()
    handle = hooked.model.decoder.body[0].register_forward_hook(lambda m, a, out: out)
    assert of(hooked.model) is None  # a hook must run: the modules are called
    handle.remove()
    assert of(hooked.model) is not None
    last_act = _vae()
    last_act.model.decoder.body.append(torch.nn.Sigmoid())  # the last layer is not the logits any more
    assert of(last_act.model) is None
    odd = _vae()
    odd.model.decoder.body[0] = torch.nn.Bilinear(3, 3, 7)  # not a Linear
    assert of(odd.model) is None


@pytest.mark.parametrize("p", [784, 97, 130, 1])
def test_grouped_softplus_sum_overwrites_only_its_block(p):
    g = torch.Generator().manual_seed(p)
    logits = torch.randn(50, p, generator=g) * 20
    ref = torch.nn.functional.softplus(logits.double()).sum(-1)
    got = log_weights.softplus_sum_(logits.clone())
    assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-3)
    assert log_weights.group_size(p) <= log_weights.MAX_GROUP and p % log_weights.group_size(p) == 0
    assert 0.5**log_weights.MAX_GROUP > torch.finfo(torch.float32).tiny  # the product cannot underflow


_RSS_SCRIPT = textwrap.dedent(
    r"""
    import json, sys, threading, time, torch
    from pyro_vae import build_model, spec
    from pyro_vae.evaluation.evaluate import point_terms

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    base = spec.load(None)
    cfg = spec.resolve({**base, "model": {**base["model"], "latent_dim": 50,
                        "network": {"kind": "mlp", "hidden": [200, 200], "activation": "tanh"}}})
    torch.manual_seed(0)
    vae = build_model(cfg, (1, 28, 28), 0)  # the 784-200-200-50 MLP VAE of Burda et al. (2015)
    x = torch.bernoulli(torch.rand(int(sys.argv[1]), 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    per_call = int(sys.argv[2])
    point_terms(vae, x[:1], None, 10, means=False)  # first-call allocations (thread pools, weights' copies)
    start, peak, done = rss_mb(), [0.0], threading.Event()

    def watch():  # sample while evaluating: torch operations release the GIL
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    w = threading.Thread(target=watch)
    w.start()
    after = []
    for s in range(0, len(x), per_call):  # as experiments/convergence/run.py calls it, chunk after chunk
        point_terms(vae, x[s : s + per_call], None, 5000, means=False)
        after.append(rss_mb())
    done.set()
    w.join()
    print(json.dumps({"start": start, "peak": peak[0], "after": after}))
    """
)


@pytest.mark.slow
def test_resident_set_is_small_and_flat_over_many_chunks():
    """K = 5000 on 120 MNIST-sized points of the 784-200-200-50 VAE, 20 points per call (16,384-row particle
    chunks, two threads): the resident set never rises 40 MB above its start (the fixed buffers: a few MB
    per thread; the whole chunk's activations, as before, took some 200 MB), and after the last call it
    is within 20 MB of that after the second."""
    root = Path(__file__).resolve().parents[2]  # this checkout's pyro_vae, on both cores (torch's default)
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, "120", "20"], cwd=root, capture_output=True, text=True,
                       timeout=1200, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["peak"] - out["start"] < 40, out
    assert out["after"][-1] - out["after"][1] < 20, out


def test_other_likelihoods_keep_their_own_log_prob():
    """A Gaussian decoder goes through the likelihood's own log_prob on the same blocks (the float64
    Normal log-density by hand on the same draws)."""
    vae = make_vae(likelihood=likelihoods.Gaussian)
    assert log_weights.MLPBernoulli.of(vae.model) is None
    x = data(3)
    pyro.set_rng_seed(6)
    t = point_terms(vae, x, None, 40, row_budget=120, means=False)
    pyro.set_rng_seed(6)
    q = vae.guide.dist(x)
    z = q.rsample((40,))
    with torch.no_grad():
        rec = vae.model.likelihood(vae.model.decoder(z)).log_prob(x)
    assert torch.allclose(t.reconstruction, rec.mean(0), atol=1e-4)
