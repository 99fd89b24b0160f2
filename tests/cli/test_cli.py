"""The `pyro-vae` command: run directory contract, evaluate, sample, components, exit codes."""

import json
import subprocess
import sys

import pytest

from pyro_vae.cli import main

TINY = ["--set", "train.epochs=1", "--set", "data.limit=256", "--set", "model.network.hidden=[32]",
        "--set", "train.eval_particles=4", "--set", "train.progress=false"]  # fmt: skip


def test_train_evaluate_sample_in_process(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "figures/loss.png"):
        assert (run / f).is_file(), f
    assert main(["evaluate", str(run), "--particles", "20", "--split", "valid"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev) == {"split", "n", "num_particles", "elbo", "log_likelihood", "log_likelihood_stderr", "kl",
                       "reconstruction", "active_units", "measure", "labels", "checkpoint"}  # fmt: skip
    assert ev["split"] == "valid" and ev["num_particles"] == 20
    assert ev["checkpoint"] == {"file": "checkpoint.pt", "epoch": 1}
    assert ev["log_likelihood"] >= ev["elbo"] - 0.5
    # the default job scores greyscale digits with a Bernoulli: a cross-entropy bound, never "log p(x)"
    assert ev["measure"] == "cross_entropy"
    out = capsys.readouterr().out
    assert "Bernoulli cross-entropy bound L_20" in out and "log p(x) >=" not in out
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--num", "12", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--set", "model.prior.kind=nope"], "valid choices"),
        (["train", "--set", "train.epochs=-2"], "train.epochs: -2 is out of range"),
        (["train", "/nonexistent/spec.yaml"], "does not exist"),
        (["train", "--set", "data.name=npz", "--set", "data.path=/no/file.npz"], "does not exist"),
        (["evaluate", "/no/run"], "does not exist"),
        (["evaluate", "{run}", "--particles", "0"], "--particles 0: must be >= 1"),
        (["sample", "{run}", "--label", "3"], "not conditional"),
        (["components", "bogus"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_one_line(tmp_path, capsys, argv, fragment):
    run = tmp_path / "run"
    if any("{run}" in a for a in argv):
        assert main(["train", *TINY, "--set", "train.figures=false", "--out", str(run)]) == 0
        capsys.readouterr()
    argv = [a.replace("{run}", str(run)) for a in argv]
    with pytest.raises(SystemExit) if argv[0] in ("frobnicate",) or argv[-1] == "bogus" else _nullctx() as ctx:
        code = main(argv)
    code = ctx.value.code if ctx is not None and hasattr(ctx, "value") else code
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_components_lists_every_group(capsys):
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    for word in ("data:", "prior:", "guide:", "likelihood:", "network:", "elbo:", "standard_normal", "iwae",
                 "latent_dim: int >= 1 (default 50)"):  # fmt: skip
        assert word in out
    assert main(["components", "elbo"]) == 0
    assert "prior:" not in capsys.readouterr().out


def test_console_script_subprocess_exit_code(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--set", "train.epochs=x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "pyro-vae: error: train.epochs: 'x' is not valid; expected an integer"


def test_readme_components_listing_is_the_commands_output():
    """The README shows `pyro-vae components` for four groups; it must be what the registry prints."""
    from pathlib import Path

    from pyro_vae.components import listing

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```\nprior: priors p(z)") + 4
    block = text[start : text.index("```", start)]
    assert block == "".join(listing(g) for g in ("prior", "guide", "likelihood", "network"))


def test_the_console_script_and_python_m_reach_the_same_main(capsys):
    """``pyro-vae`` is the entry point ``pyro_vae.cli:main``; ``python -m pyro_vae.cli`` and
    ``python -m pyro_vae`` run it too (same output, same exit code for a bad group)."""
    from importlib.metadata import entry_points

    import pyro_vae.cli
    from pyro_vae.components import listing

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "pyro-vae"]
    assert ep.value == "pyro_vae.cli:main" and ep.load() is pyro_vae.cli.main is main
    for module in ("pyro_vae.cli", "pyro_vae"):
        r = subprocess.run([sys.executable, "-m", module, "components", "prior"], capture_output=True, text=True,
                           check=False)  # fmt: skip
        assert r.returncode == 0 and r.stdout == listing("prior"), r.stderr
        r = subprocess.run([sys.executable, "-m", module, "components", "nope"], capture_output=True, text=True,
                           check=False)  # fmt: skip
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid choice: 'nope'" in r.stderr
