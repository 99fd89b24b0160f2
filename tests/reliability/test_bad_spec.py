"""Property-based: random keys, values, types and YAML thrown at the spec loader and the CLI.

Every outcome is a resolved spec (which then round-trips through YAML unchanged) or a
:class:`PyroVAEError` with one line; through the CLI, exit 0 or exit 2 with one line on stderr,
never a traceback.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_vae.data as data_mod
from pyro_vae import cli, spec
from pyro_vae.errors import PyroVAEError
from pyro_vae.registry import GROUPS, REGISTRY

from .conftest import one_clear_line, run_cli

KNOWN_KEYS = [
    "name", "seed", "data", "data.name", "data.limit", "data.binarize", "data.valid_size", "data.path", "data.root",
    "model", "model.kind", "model.latent_dim", "model.network", "model.network.kind", "model.network.hidden",
    "model.network.activation", "model.prior", "model.prior.kind", "model.prior.components", "model.likelihood",
    "model.likelihood.kind", "model.likelihood.scale", "guide", "guide.kind", "guide.rank", "elbo", "elbo.kind",
    "elbo.num_particles", "elbo.beta", "elbo.alpha", "train", "train.epochs", "train.lr", "train.batch_size",
    "train.optimizer", "train.device", "train.momentum", "train.eval_particles", "train.max_bad_steps",
    "train.kl_schedule", "train.progress",
]  # fmt: skip
KINDS = sorted({n for g in GROUPS for n in REGISTRY.names(g)})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(KINDS),
    st.sampled_from(["1e-3", "auto", "cuda", "relu", "static", "[1, 2]", "{kind: mlp}", "~", "yes", "0x10"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["kind", "name"])), inner, max_size=4),
    ),
    max_leaves=8,
)
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.text(alphabet=st.characters(blacklist_characters="="), max_size=15),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(KNOWN_KEYS), st.text(max_size=6)),
)


def _check_error(e: PyroVAEError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert len(msg) < 1500, msg


def _resolve_or_error(raw: Any) -> dict[str, Any] | None:
    try:
        resolved = spec.resolve(raw)
    except PyroVAEError as e:
        _check_error(e)
        return None
    # a resolved spec is plain data: it round-trips through config.yaml unchanged
    again = spec.resolve(yaml.safe_load(spec.to_yaml(resolved)))
    assert again == resolved
    return resolved


def _fuzz(fast: int, slow: int, *strategies: Any) -> Any:
    """Two tests from one property: ``fast`` examples by default, ``slow`` under ``-m slow``."""

    def make(fn: Any) -> Any:
        quick = settings(
            max_examples=fast, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )(given(*strategies)(fn))
        long = settings(
            max_examples=slow, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )(given(*strategies)(fn))
        globals()[f"{fn.__name__}_long"] = pytest.mark.slow(long)
        return quick

    return make


@_fuzz(60, 2000, st.lists(st.tuples(keys, values), max_size=4))
def test_overrides(pairs: list[tuple[str, Any]]) -> None:
    """``--set KEY=VALUE`` with random keys and YAML-dumped (or raw text) values."""
    items = []
    for k, v in pairs:
        text = (
            v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
        )
        items.append(f"{k}={text}")
    try:
        raw = spec.apply_overrides(spec.load(None), items)
    except PyroVAEError as e:
        _check_error(e)
        return
    _resolve_or_error(raw)


@_fuzz(
    40,
    1000,
    st.dictionaries(
        st.one_of(st.sampled_from(["name", "seed", "data", "model", "guide", "elbo", "train"]), st.text(max_size=6)),
        values,
        max_size=5,
    ),
)
def test_whole_spec_mappings(raw: dict[str, Any]) -> None:
    _resolve_or_error(raw)


@_fuzz(
    40, 1000, st.one_of(st.text(max_size=200), st.builds(lambda v: yaml.safe_dump(v), values), st.binary(max_size=100))
)
def test_yaml_files(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        raw = spec.load(path)
    except PyroVAEError as e:
        _check_error(e)
        return
    _resolve_or_error(raw)


class _Accepted(BaseException):
    """Raised instead of loading data: the CLI accepted the spec (training itself is not fuzzed)."""


ARGS = st.one_of(
    st.sampled_from(["--set", "--out", "--resume", "--force", "--particles", "--split", "--num", "--label",
                     "--device", "--help", "-h", "--points", "--samples", "train", "evaluate", "sample",
                     "components", "diagnose", "valid", "cpu", "cuda", "-1", "0", "3", "nope", "spec.yaml"]),
    st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=8)),
    st.text(max_size=10),
)  # fmt: skip


@_fuzz(
    40,
    1000,
    st.sampled_from(["train", "evaluate", "sample", "components", "diagnose", "compare", "bogus"]),
    st.lists(ARGS, max_size=6),
)
def test_cli_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written outside

    def accepted(*a: Any, **k: Any) -> None:
        raise _Accepted

    monkeypatch.setattr(data_mod, "load", accepted)
    err, out = io.StringIO(), io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = cli.main([command, *argv])
    except _Accepted:
        return
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        rc = e.code if isinstance(e.code, int) else 2
    assert rc in (0, 2), (rc, err.getvalue())
    if rc == 2:
        one_clear_line(err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_seed_out_of_range_is_a_spec_error() -> None:
    """Found by the properties above: numpy cannot seed from 2**40."""
    with pytest.raises(PyroVAEError, match="seed"):
        spec.resolve({**spec.load(None), "seed": 2**40})


@pytest.mark.slow  # a fresh interpreter per case
@pytest.mark.parametrize(
    "args,words",
    [
        (["train", "--set", "model.latent_dim=-3"], "model.latent_dim"),
        (["train", "--set", "trian.epochs=3"], "trian"),
        (["train", "--set", "elbo.kind=iwea"], "iwea"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
    ],
)
def test_cli_subprocess_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    """The installed entry point (a fresh interpreter) keeps the contract too."""
    r = run_cli([*args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else [])], timeout=120)
    assert r.returncode == 2, r.stderr
    assert words in one_clear_line(r.stderr)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # a fresh interpreter per case
def test_cli_subprocess_bad_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1, 2\nmodel: !!python/object/apply:os.system ['true']\n")
    r = run_cli(["train", str(bad), "--out", str(tmp_path / "r")], timeout=120)
    assert r.returncode == 2 and "not valid YAML" in one_clear_line(r.stderr)
