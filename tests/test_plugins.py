"""Plugins: a user's prior and estimator, registered with ``pyro_vae.register``, used exactly like built-ins.

Two plugins are written into the test's temporary folder, with the same source under two prefixes:

- ``e2plug`` (names ``e2ep_*``), an installed distribution as far as :mod:`importlib.metadata` can
  tell: a ``.dist-info`` folder with ``entry_points.txt`` (group ``pyro_vae.components``) on
  ``sys.path``, so entry-point discovery runs without a network or pip;
- ``e2mod`` (names ``e2mod_*``), a plain module brought in by the spec's ``plugins:`` or ``--plugin``.

Each registers a Laplace prior p(z) = prod_j Laplace(z_j; 0, b) (a ``Prior`` subclass) and an
importance-weighted estimator written as a ``LogWeightELBO`` objective.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from pyro_vae import plugins
from pyro_vae.cli import main
from pyro_vae.errors import SpecError
from pyro_vae.registry import REGISTRY, DuplicateComponentError, Registry, builtin_modules
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = '''
import math

import pyro.distributions as dist
import torch

from pyro_vae import register
from pyro_vae.estimators import LogWeightELBO
from pyro_vae.models import Prior


@register("prior", "{p}_laplace", context=("latent_dim",))
class LaplacePrior(Prior):
    """Laplace(0, b) in every latent dimension."""

    def __init__(self, *, latent_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), float(scale)))

    def forward(self):
        return dist.Laplace(self.loc, self.scale).to_event(1)


class MyIWAE(LogWeightELBO):
    def objective(self, terms):
        lw = terms.log_weight
        return torch.logsumexp(lw, 0) - math.log(lw.shape[0])


@register("elbo", "{p}_iwae")
def my_iwae(*, num_particles: int = 4):
    """The importance-weighted bound L_K written as a plugin's objective."""
    return MyIWAE(num_particles)
'''


def _write(folder: Path, module: str, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(PLUGIN_SOURCE.replace("{p}", prefix))


def _forget(*prefixes: str) -> None:
    """Take the test plugins' entries out of the process-wide registry (other tests list it)."""
    for table in REGISTRY._tables.values():
        for name in [n for n in table if n.startswith(prefixes)]:
            del table[name]


@pytest.fixture
def plugin_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    site = tmp_path / "site"
    _write(site / "e2plug", "components", "e2ep")
    (site / "e2plug" / "__init__.py").write_text("")
    info = site / "e2plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: e2plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pyro_vae.components]\ne2plug = e2plug.components\n")
    mods = tmp_path / "mods"
    _write(mods, "e2mod", "e2mod")
    (mods / "e2dup.py").write_text(
        "from pyro_vae import register\nfrom pyro_vae.models import Prior\n\n\n"
        "@register('prior', 'standard_normal', context=('latent_dim',))\nclass MyNormal(Prior):\n"
        "    def __init__(self, *, latent_dim: int) -> None:\n        super().__init__()\n"
    )
    (mods / "e2broken.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    (mods / "e2notprior.py").write_text(
        "import torch\nfrom pyro_vae import register\n\n\n@register('prior', 'e2bad_plain', context=('latent_dim',))\n"
        "class Plain(torch.nn.Module):\n    def __init__(self, *, latent_dim: int) -> None:\n        super().__init__()\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(mods))
    importlib.invalidate_caches()
    yield {"site": site, "mods": mods, "tmp": tmp_path}
    _forget("e2ep_", "e2mod_", "e2bad_")
    for name in [m for m in sys.modules if m.split(".")[0] in ("e2plug", "e2mod", "e2dup", "e2broken", "e2notprior")]:
        del sys.modules[name]
    plugins._requested.clear()


def _sets(overrides: list[str]) -> list[str]:
    """``--set KEY=VALUE`` for each override."""
    return [arg for o in overrides for arg in ("--set", o)]


def _env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)]), "MPLBACKEND": "Agg"}


def test_an_installed_package_is_found_through_its_entry_point_in_a_fresh_process(
    plugin_paths: dict[str, Path],
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "components", "prior"],
        capture_output=True, text=True, check=False, env=_env(plugin_paths["site"]), cwd=plugin_paths["tmp"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  e2ep_laplace"))
    assert "[from entry point e2plug = e2plug.components of e2plug: e2plug.components:LaplacePrior]" in line
    assert "      scale: float (default 1.0)" in r.stdout


def test_entry_point_components_train_evaluate_and_compare(plugin_paths: dict[str, Path], tmp_path: Path) -> None:
    REGISTRY._load_entry_points()  # what the first lookup of a fresh process does (this one has looked already)
    entry = REGISTRY.get("prior", "e2ep_laplace")
    assert entry.source.startswith("entry point e2plug = e2plug.components of e2plug")
    assert entry.origin == "e2plug.components:LaplacePrior"

    from pyro_vae import fit

    res = fit(overrides=[*TINY, "model.prior.kind=e2ep_laplace", "model.prior.scale=0.5", "elbo.kind=e2ep_iwae",
                         "train.figures=false"], out=tmp_path / "fit")  # fmt: skip
    z = torch.tensor([[0.3, -1.2]])
    # the model's p(z) is the plugin's: prod_j Laplace(z_j; 0, 0.5), log density -|z|/b - log(2b) per dimension
    expected = float(-(z.abs() / 0.5).sum() - 2 * math.log(2 * 0.5))
    assert float(res.vae.model.prior_dist().log_prob(z)) == pytest.approx(expected, abs=1e-5)

    run = tmp_path / "cli"
    args = ["train", *_sets([*TINY, "model.prior.kind=e2ep_laplace", "elbo.kind=e2ep_iwae",
                                                 "train.figures=false"]), "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    assert "plugins" not in yaml.safe_load((run / "config.yaml").read_text())  # installed: found without naming
    assert main(["evaluate", str(run), "--particles", "10", "--split", "test"]) == 0
    assert math.isfinite(json.loads((run / "eval.json").read_text())["log_likelihood"])
    out = tmp_path / "cmp"
    cmp = ["compare", "--estimators", "e2ep_iwae:num_particles=2,iwae:num_particles=2", "--particles", "5",
           "--eval-points", "20", "--curve-particles", "0", "--no-snr", "--out", str(out),
           *_sets([*TINY, "model.prior.kind=e2ep_laplace", "train.figures=false"])]  # fmt: skip
    assert main(cmp) == 0
    assert len(list(out.rglob("summary.json"))) == 2


def test_plugin_estimator_is_the_same_bound_as_the_builtin_iwae(plugin_paths: dict[str, Path]) -> None:
    """The plugin's objective log mean_k w_k, run by the standard machinery, equals the built-in IWAE on the same draws."""
    plugins.load(["e2mod"])
    from pyro_vae.models.vae import build_model
    from pyro_vae.spec import from_args

    cfg = from_args(None, ["model.latent_dim=2", "model.network.hidden=[16]"])
    vae = build_model(cfg, (64,))
    x = torch.rand(8, 64).round()
    losses = []
    for kind in ("e2mod_iwae", "iwae"):
        loss_fn = REGISTRY.build("elbo", {"kind": kind, "num_particles": 6})(vae.model, vae.guide)
        torch.manual_seed(3)
        losses.append(float(loss_fn(x, None).detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_plain_module_through_the_spec_and_the_command_line(
    plugin_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"plugins": ["e2mod"], "model": {"kind": "vae", "latent_dim": 2,
                    "network": {"kind": "mlp", "hidden": [32]}, "prior": {"kind": "e2mod_laplace"}},
                    "elbo": {"kind": "e2mod_iwae", "num_particles": 2}}))  # fmt: skip
    tiny = [s for s in TINY if not s.startswith("model.")] + ["train.figures=false"]
    run = tmp_path / "run"
    assert main(["train", str(spec), *_sets(tiny), "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == ["e2mod"]
    assert main(["evaluate", str(run), "--particles", "5"]) == 0
    # a fresh process finds the plugin from config.yaml alone (no --plugin) when it loads the run
    r = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "sample", str(run), "--num", "4", "--out", str(tmp_path / "s.png")],
        capture_output=True, text=True, check=False, env=_env(plugin_paths["mods"]), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.png").is_file()

    # --plugin: the same module named on the command line is recorded in the run's config.yaml
    run2 = tmp_path / "run2"
    sets = [*tiny, "model.latent_dim=2", "model.network.hidden=[32]", "model.prior.kind=e2mod_laplace"]
    assert main(["train", "--plugin", "e2mod", *_sets(sets), "--out", str(run2)]) == 0
    assert yaml.safe_load((run2 / "config.yaml").read_text())["plugins"] == ["e2mod"]
    cmp = ["compare", "--plugin", "e2mod", "--estimators", "e2mod_iwae:num_particles=2,trace", "--particles", "5",
           "--eval-points", "20", "--curve-particles", "0", "--no-snr", "--out", str(tmp_path / "cmp"),
           *_sets(sets)]  # fmt: skip
    assert main(cmp) == 0
    summaries = list((tmp_path / "cmp").rglob("summary.json"))
    assert len(summaries) == 2
    for s in summaries:
        assert yaml.safe_load((s.parent / "config.yaml").read_text())["plugins"] == ["e2mod"]
    capsys.readouterr()
    assert main(["components", "--plugin", "e2mod", "elbo"]) == 0
    listing = capsys.readouterr().out
    assert "  e2mod_iwae - The importance-weighted bound L_K written as a plugin's objective. " in listing
    assert "[from module e2mod (plugins): e2mod:my_iwae]" in listing  # first imported by the spec's plugins:
    assert "      num_particles: int (default 4)" in listing


@pytest.mark.parametrize(
    ("module", "words"),
    [
        (
            "e2dup",
            (
                "prior 'standard_normal' is registered twice: by pyro_vae.models.priors:StandardNormal (pyro_vae) "
                "and by e2dup:MyNormal (module e2dup (--plugin))"
            ),
        ),
        ("e2broken", "--plugin: module 'e2broken' failed to import: RuntimeError: this plugin is broken on purpose"),
        ("e2_no_such_module", "--plugin: no module 'e2_no_such_module' on the Python path"),
        ("not-a-module", "--plugin[0]: 'not-a-module' is not a module name"),
    ],
)
def test_a_bad_plugin_is_one_line_and_exit_2(
    plugin_paths: dict[str, Path], module: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["components", "--plugin", module]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err


def test_a_prior_that_is_not_a_prior_is_named(plugin_paths: dict[str, Path]) -> None:
    plugins.load(["e2notprior"])
    from pyro_vae.models.vae import build_model
    from pyro_vae.spec import from_args

    cfg = from_args(None, ["model.prior.kind=e2bad_plain", "model.latent_dim=2"])
    with pytest.raises(
        SpecError, match=r"'e2bad_plain' \(e2notprior:Plain\) built a Plain, not a pyro_vae.models.Prior"
    ):
        build_model(cfg, (64,))


def test_registry_refuses_a_second_definition_and_accepts_the_same_one_again() -> None:
    reg = Registry(modules=list, entry_points=False)

    def first(*, a: int = 1) -> int:
        return a

    def second(*, a: int = 2) -> int:
        return a

    reg.register("prior", "p")(first)
    reg.register("prior", "p")(first)  # the same definition executed again (a re-import): its own entry
    with pytest.raises(DuplicateComponentError) as e:
        reg.register("prior", "p")(second)
    assert f"{__name__}:test_registry_refuses_a_second_definition_and_accepts_the_same_one_again.<locals>.first" in str(
        e.value
    )
    assert ".<locals>.second" in str(e.value)
    assert reg.get("prior", "p").factory is first


def _registers(path: Path) -> bool:
    """Whether a module's syntax tree has a ``register(...)`` decorator or a ``set_common(...)`` call."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "set_common":
                return True
        decorators = getattr(node, "decorator_list", [])
        for d in decorators:
            target = d.func if isinstance(d, ast.Call) else d
            if (target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")) == "register":
                return True
    return False


def test_every_module_that_registers_is_imported_by_the_registry() -> None:
    """No built-in module is silently invisible: the registry's text scan finds every module whose syntax
    tree registers, and every built-in entry comes from a module it imports."""
    root = REPO / "pyro_vae"
    by_ast = sorted(
        ".".join(("pyro_vae", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
        if p.name != "registry.py" and _registers(p)
    )
    found = builtin_modules()
    assert by_ast, "the scan of the syntax trees found nothing"
    assert set(by_ast) <= set(found), sorted(set(by_ast) - set(found))
    REGISTRY.names("prior")
    for module in found:
        assert module in sys.modules
    for group in ("data", "model", "prior", "likelihood", "network", "guide", "elbo"):
        for entry in REGISTRY.entries(group):
            if entry.source == "pyro_vae":
                assert entry.factory.__module__ in found, entry.origin


def test_a_new_module_in_the_package_is_found_without_a_list(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "newprior.py").write_text("from x import register\n\n\n@register('prior', 'n')\ndef n(): ...\n")
    (pkg / "quiet.py").write_text("def register_buffer(): ...\n")
    assert builtin_modules(pkg, "pkg") == ["pkg.sub.newprior"]


def test_plugins_key_is_checked_and_kept(plugin_paths: dict[str, Path]) -> None:
    from pyro_vae.spec import from_args, resolve

    with pytest.raises(SpecError, match="plugins: 3 is not valid; expected a list of module names"):
        from_args(None, ["plugins=3"])
    cfg = from_args(None, ["plugins=[e2mod]", "model.prior.kind=e2mod_laplace"])
    assert cfg["plugins"] == ["e2mod"] and list(cfg)[:3] == ["name", "seed", "plugins"]
    assert resolve(cfg) == cfg  # config.yaml resolves to itself
    assert "plugins" not in from_args(None, [])  # a spec without plugins: config.yaml as before
