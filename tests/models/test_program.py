"""A hand-written Pyro program (``model.kind: pyro``) against an independent reference.

The program is the linear-Gaussian model z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I) with a linear
amortized guide, written as plain Pyro functions in a module the test writes to its temporary folder.
Its exact marginal is log p(x) = log N(x; b, W W^T + sigma^2 I) (Tipping & Bishop 1999), computed here
from the trained parameters with ``torch.distributions.MultivariateNormal``: the L_K that
``pyro-vae evaluate`` reports through Pyro's traces must lie below it and close to it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pyro_vae.cli import main
from pyro_vae.errors import SpecError
from pyro_vae.rundir import load_run

LINEAR_GAUSSIAN = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class LinearGaussian(nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + b, sigma^2 I); q(z|x) = N(A x + c, diag s^2)."""

    def __init__(self, features, latent_dim):
        super().__init__()
        self.dec = nn.Linear(latent_dim, features)
        self.log_sigma = nn.Parameter(torch.zeros(()))
        self.enc = nn.Linear(features, latent_dim)
        self.log_s = nn.Parameter(torch.full((latent_dim,), -1.0))
        self.latent_dim = latent_dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), self.log_sigma.exp()).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(x), self.log_s.exp()).to_event(1))


def build(event_shape, latent_dim=2):
    return LinearGaussian(event_shape[0], latent_dim)
'''

#: Programs that break one rule of the contract each, and the words the error must contain.
BROKEN = {
    "no_x": (
        """
        def model(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        """,
        "no sample site 'x'",
    ),
    "z_outside_plate": (
        """
        def model(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(LIN(z), 1.0).to_event(1), obs=x)
        """,
        "site 'z' is not inside pyro.plate('data'",
    ),
    "x_wrong_shape": (
        """
        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(LIN(z)[..., :1], 1.0).to_event(1), obs=x[..., :1])
        """,
        "site 'x' has batch shape (3,), event shape (1,); expected batch shape (3,) and event shape (4,)",
    ),
}

BROKEN_HEADER = """
import pyro
import pyro.distributions as dist
import torch
from torch import nn

LIN = nn.Linear(2, 4)
ENC = nn.Linear(4, 2)


def guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(ENC(x), 1.0).to_event(1))


class Program(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.enc = LIN, ENC

    def model(self, x):
        return model(x)

    def guide(self, x):
        return guide(x)


def build():
    return Program()
"""


def _data(path: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """Points of a 4-D linear-Gaussian with a 2-D latent (a fixed seed)."""
    g = np.random.default_rng(0)
    w = g.normal(size=(4, 2))
    b = g.normal(size=4)

    def draw(n: int) -> np.ndarray:
        return (g.normal(size=(n, 2)) @ w.T + b + 0.3 * g.normal(size=(n, 4))).astype(np.float32)

    np.savez(path, x_train=draw(n_train), x_test=draw(n_test))
    return path


def _spec(tmp: Path, program: str, **train: object) -> Path:
    spec = {
        "name": "program",
        "seed": 0,
        "data": {"name": "npz", "path": str(_data(tmp / "lg.npz"))},
        "model": {"kind": "pyro", "program": program, "options": {"latent_dim": 2}},
        "elbo": {"kind": "iwae", "num_particles": 5},
        "train": {"epochs": 12, "batch_size": 40, "lr": 0.03, "progress": False, "eval_particles": 20,
                  "figures": False, **train},
    }  # fmt: skip
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def program_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "lgprog.py").write_text(LINEAR_GAUSSIAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("lgprog", None)


def _exact_log_px(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + sigma^2 I) from the trained program's parameters."""
    prog = vae.model.program
    w, b = prog.dec.weight.detach().double(), prog.dec.bias.detach().double()
    sigma2 = float(prog.log_sigma.detach().double().exp() ** 2)
    cov = w @ w.T + sigma2 * torch.eye(len(b), dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x.double())


def test_linear_gaussian_program_trains_through_the_cli_and_its_bound_is_below_the_exact_log_likelihood(
    program_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(program_dir, "lgprog:build")
    run = program_dir / "run"
    assert main(["train", str(spec), "--out", str(run)]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == {"kind": "pyro", "program": "lgprog:build", "options": {"latent_dim": 2}}
    assert cfg["guide"] == {"kind": "program"}  # the program brings its own guide

    assert main(["evaluate", str(run), "--particles", "5000", "--split", "test", "--max-hours", "0"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    loaded = load_run(run)
    exact = float(_exact_log_px(loaded.vae, loaded.data.x_test).mean())
    # L_K is a lower bound in expectation; with K = 5000 its Monte Carlo error on the mean of 100 points is
    # about 0.001 nats (measured: |L_5000 - log p(x)| < 0.0011 over three seeds), and its gap is as small
    assert ev["log_likelihood"] <= exact + 0.005, (ev["log_likelihood"], exact)
    assert ev["log_likelihood"] > exact - 0.02, (ev["log_likelihood"], exact)
    assert ev["elbo"] < ev["log_likelihood"] - 0.1  # the diagonal guide misses the posterior correlation
    # training worked: the fitted model explains the data far better than the initial one
    assert exact > -8.0
    # the program's parameters are in the checkpoint (a state_dict), under the wrappers' names
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert {"model.program.dec.weight", "guide.program.enc.weight", "model.program.log_sigma"} <= set(state)


def test_kl_weight_scales_the_latent_sites_only(program_dir: Path) -> None:
    """beta of a beta-VAE weights log p(z) - log q(z|x) (every latent site of model and guide), not log p(x|z)."""
    import pyro
    from pyro import poutine

    from pyro_vae.models.vae import build_model
    from pyro_vae.spec import from_args

    before = pyro.settings.get("module_local_params")
    vae = build_model(from_args(str(_spec(program_dir, "lgprog:build"))), (4,))
    x = torch.randn(6, 4)
    for beta in (1.0, 0.25):
        vae.set_kl_weight(beta)
        g = poutine.trace(vae.guide).get_trace(x)
        m = poutine.trace(poutine.replay(vae.model, trace=g)).get_trace(x)
        assert g.nodes["z"]["scale"] == beta and m.nodes["z"]["scale"] == beta
        assert m.nodes["x"]["scale"] == 1.0
    assert pyro.settings.get("module_local_params") == before  # the programs ran with it set, and left it as it was


def test_program_runs_compare_and_diagnose_unchanged(program_dir: Path) -> None:
    spec = _spec(program_dir, "lgprog:build", epochs=2)
    out = program_dir / "cmp"
    args = ["compare", str(spec), "--estimators", "trace,iwae:num_particles=5", "--particles", "20",
            "--eval-points", "50", "--curve-particles", "0", "--no-snr", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    results = list(out.rglob("summary.json"))
    assert len(results) == 2
    run = program_dir / "run"
    assert main(["train", str(spec), "--out", str(run)]) == 0
    diag = ["diagnose", str(run), "--points", "20", "--samples", "40", "--nuts", "1", "--chains", "2",
            "--warmup", "20", "--draws", "20", "--gap-points", "3", "--sbc", "10", "--out", str(program_dir / "d")]  # fmt: skip
    assert main(diag) == 0
    assert (program_dir / "d").is_dir()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_program_that_breaks_the_contract_is_one_line_naming_the_rule(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, words = BROKEN[case]
    name = f"broken_{case}"
    (tmp_path / f"{name}.py").write_text(BROKEN_HEADER + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _spec(tmp_path, f"{name}:build")
    try:
        text = spec.read_text().replace("options:\n    latent_dim: 2\n", "options: {}\n")
        spec.write_text(text)
        assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    finally:
        sys.modules.pop(name, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert f"model.program {name}:build" in err


def test_a_program_with_unvectorizable_shapes_or_global_params_is_refused() -> None:
    """The rules the single-batch trace cannot see: particles at dim -2, and pyro.param outside modules."""
    import pyro
    import pyro.distributions as dist
    from torch import nn

    from pyro_vae.models.program import program_vae

    lin = nn.Linear(2, 4)

    class Holder(nn.Module):
        """Holds the parameters; the programs are its methods (the contract's rule for parameters)."""

        def __init__(self, model_fn, guide_fn) -> None:  # type: ignore[no-untyped-def]
            super().__init__()
            self.lin, self._m, self._g = lin, model_fn, guide_fn

        def model(self, x: torch.Tensor) -> None:
            self._m(x)

        def guide(self, x: torch.Tensor) -> None:
            self._g(x)

    def pair(model_fn, guide_fn):  # type: ignore[no-untyped-def]
        h = Holder(model_fn, guide_fn)
        return h.model, h.guide

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[..., :2], 1.0).to_event(1))

    def flat_model(x: torch.Tensor) -> None:  # reshapes z to (B, 2): breaks when particles add a dimension
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(lin(z.reshape(x.shape[0], 2)), 1.0).to_event(1), obs=x)

    with pytest.raises(SpecError, match="does not run with 2 particles in a plate at dim -2"):
        program_vae(*pair(flat_model, guide), (4,))

    def global_param_model(x: torch.Tensor) -> None:
        loc = pyro.param("loc", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(lin(z) + loc, 1.0).to_event(1), obs=x)

    with pytest.raises(SpecError, match="'loc' is in Pyro's global parameter store"):
        program_vae(*pair(global_param_model, guide), (4,))

    def good_model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(lin(z), 1.0).to_event(1), obs=x)

    with pytest.raises(SpecError, match="no parameters in modules"):
        program_vae(good_model, guide, (4,))  # plain functions: their parameters would be neither trained nor saved
    vae = program_vae(*pair(good_model, guide), (4,))
    assert vae.latent_dim == 2
    x = torch.randn(5, 4)
    torch.testing.assert_close(vae.posterior_mean(x), x[:, :2])  # q(z|x) = N(x[:2], I): read from the trace
    z = torch.randn(5, 2)
    torch.testing.assert_close(vae.decode_mean(z), lin(z).detach())  # E[x|z] of the model's x site
    assert vae.sample(7).shape == (7, 4)


def test_program_spec_errors_before_any_work(program_dir: Path) -> None:
    from pyro_vae.spec import from_args

    spec = str(_spec(program_dir, "lgprog:build"))
    with pytest.raises(SpecError, match="brings its own guide"):
        from_args(spec, ["guide.kind=flow"])
    with pytest.raises(SpecError, match="guide.kind: program is the guide of a Pyro program"):
        from_args(None, ["guide.kind=program"])
    from pyro_vae.models.vae import build_model

    bad = from_args(spec, ["model.program=lgprog:nothing"])
    with pytest.raises(SpecError, match="has no attribute 'nothing'"):
        build_model(bad, (4,))
    bad = from_args(spec, ["model.options={width: 3}"])
    with pytest.raises(SpecError, match="model.options: lgprog:build cannot take"):
        build_model(bad, (4,))
