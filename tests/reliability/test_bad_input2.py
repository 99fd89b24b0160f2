"""Bad input to every command: every class of mistake is one line and exit 2, before any work.

Classes checked here, each by its principle rather than by one instance:

- YAML is read as YAML 1.2 core-schema scalars (no octal ``010`` -> 8, no sexagesimal ``1:30`` -> 90),
  duplicate keys are refused naming the key, and alias bombs are refused before anything expands;
  every message shows a user's value cut to a readable length (:func:`pyro_vae.errors.brief`).
- Command-line arguments and output paths are checked in one place before any run is loaded.
- Sizes that cannot fit are refused with the estimated memory; the estimate's parameter count is the
  real model's, exactly; work estimated to take hours is refused with the estimate.
- Messages say what a path is (directory, FIFO, device) rather than "does not exist", say "corrupt"
  for corrupt files, "beyond float32's range" for 1e39, and name the first mismatched checkpoint key.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_vae.rundir as rundir_mod
import pyro_vae.training.loop as train_mod
from pyro_vae import cli, fit, spec
from pyro_vae.errors import MAX_MESSAGE, DataError, SpecError, brief
from pyro_vae.evaluation import resources
from pyro_vae.models.vae import build_model

from .conftest import TINY, as_sets, one_clear_line


def _exit2(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(args) == 2, args
    return one_clear_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- YAML


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=4))
@settings(max_examples=40, deadline=None)
def test_leading_zeros_are_decimal(n: int, zeros: int) -> None:
    """YAML 1.1 reads 010 as octal 8 (and 09 as a string); YAML 1.2 reads every digit string as decimal."""
    assert spec.parse_yaml("0" * zeros + str(n), "v") == n
    assert spec.apply_overrides(spec.load(None), [f"train.epochs={'0' * zeros}{n}"])["train"]["epochs"] == n


@given(st.integers(min_value=0, max_value=99), st.integers(min_value=0, max_value=59))
@settings(max_examples=30, deadline=None)
def test_sexagesimal_is_a_string_and_refused_where_a_number_is_expected(h: int, m: int) -> None:
    text = f"{h}:{m:02d}"
    assert spec.parse_yaml(text, "v") == text  # YAML 1.1 would give h * 60 + m
    with pytest.raises(SpecError, match="train.epochs"):
        spec.from_args(None, [f"train.epochs={text}"])


@pytest.mark.parametrize(
    "text,value",
    [("1e-3", 1e-3), ("1E3", 1000.0), ("-2.5e+2", -250.0), (".5", 0.5), ("0o17", 15), ("0x1f", 31), ("+7", 7),
     ("yes", "yes"), ("off", "off"), ("2024-01-01", "2024-01-01"), ("~", None), ("True", True), (".inf", float("inf"))],
)  # fmt: skip
def test_core_schema_scalars(text: str, value: Any) -> None:
    assert spec.parse_yaml(text, "v") == value
    assert type(spec.parse_yaml(text, "v")) is type(value)


@given(st.text(alphabet="0123456789abcdefxo:._-+eE ", min_size=1, max_size=12))
@settings(max_examples=100, deadline=None)
def test_config_round_trip_keeps_strings_strings(name: str) -> None:
    """Whatever string config.yaml holds reads back as the same string, in YAML 1.1 and 1.2 alike."""
    doc = spec.to_yaml({"name": name})
    assert spec.parse_yaml(doc, "config") == {"name": name}
    assert yaml.safe_load(doc) == {"name": name}


@pytest.mark.parametrize("where", ["top", "train", "nested"])
def test_duplicate_keys_are_refused_naming_the_key(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = {
        "top": "seed: 1\nname: a\nseed: 2\n",
        "train": "train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n",
        "nested": "model:\n  kind: vae\n  network: {kind: mlp, hidden: [4], hidden: [8]}\n",
    }[where]
    key = {"top": "seed", "train": "lr", "nested": "hidden"}[where]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    line = _exit2(["train", str(path), "--out", str(tmp_path / "out")], capsys)
    assert f"duplicate key '{key}'" in line
    assert not (tmp_path / "out").exists()


def _bomb(width: int, depth: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@given(st.integers(min_value=2, max_value=12), st.integers(min_value=2, max_value=9))
@settings(max_examples=40, deadline=None)
def test_aliases_are_expanded_only_when_small(width: int, depth: int) -> None:
    """Expanded size sum_k width^k decides: small documents load as if written out; large ones are
    refused in well under a second, before anything expands (a 9x9 bomb would be 4e8 values)."""
    sizes = [width + 1]  # a0: the list and its items
    for _ in range(1, depth):
        sizes.append(1 + width * sizes[-1])  # a_i: the list and `width` expansions of a_(i-1)
    expanded = sum(sizes) + depth + 1  # every value in full, the keys, the root mapping
    t0 = time.perf_counter()
    if expanded <= spec.MAX_YAML_NODES:
        doc = spec.parse_yaml(_bomb(width, depth), "v")
        assert len(doc[f"a{depth - 1}"]) == width
    else:
        with pytest.raises(SpecError, match="alias") as info:
            spec.parse_yaml(_bomb(width, depth), "v")
        assert len(str(info.value)) < MAX_MESSAGE + 100
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("key", ["name", "train.lr", "data", "model.network.hidden"])
def test_alias_bomb_in_any_value_is_one_short_line(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 9x9 list bomb in --set, and a 9x9 dict bomb in a spec file: refused, with a short line."""
    items = ["&b0 [" + ",".join(["lol"] * 9) + "]"]
    items += [f"&b{i} [" + ",".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, 9)]
    line = _exit2(["train", "--set", f"{key}=[{', '.join(items)}]", "--out", str(tmp_path / "o")], capsys)
    assert "alias" in line and len(line) < MAX_MESSAGE + 100
    levels = ["      l0: &l0 {" + ", ".join(f"k{j}: lol" for j in range(9)) + "}"]
    levels += [f"      l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(9)) + "}" for i in range(1, 9)]
    text = "model:\n  kind: vae\n  network:\n    kind: mlp\n    hidden:\n" + "\n".join(levels) + "\n"
    (tmp_path / "s.yaml").write_text(text)
    line = _exit2(["train", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert "alias" in line and len(line) < MAX_MESSAGE + 100
    assert not (tmp_path / "o").exists()


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(SpecError, match="refers to its own anchor"):
        spec.parse_yaml("a: &x [1, *x]\n", "v")


@pytest.mark.parametrize("key", ["name", "train.lr", "model.network.hidden", "elbo.kind", "data.name", "nope"])
@pytest.mark.parametrize("size", [20_000, pytest.param(400_000, marks=pytest.mark.slow)])
def test_huge_values_give_a_readable_line(
    tmp_path: Path, key: str, size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value of 100 kB to 2 MB (a string or a list) is cut in the message: the line stays under MAX_MESSAGE."""
    for value in ("x" * (5 * size), "[" + ", ".join(["7"] * size) + "]"):
        line = _exit2(["train", "--set", f"{key}={value}", "--out", str(tmp_path / "o")], capsys)
        assert len(line) <= MAX_MESSAGE + len("pyro-vae: error: ")


@given(st.one_of(st.text(max_size=5000), st.lists(st.integers(), max_size=3000), st.binary(max_size=3000),
                 st.dictionaries(st.text(max_size=50), st.text(max_size=500), max_size=50)))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_brief_is_bounded(value: Any) -> None:
    assert len(brief(value)) <= 140
    assert len(str(SpecError(f"v: {value!r} is bad"))) <= MAX_MESSAGE + 60


@pytest.mark.parametrize("target", ["spec", "config"])
def test_non_utf8_is_one_line(run: Path, tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = b"name: caf\xe9\nseed: 1\n"
    if target == "spec":
        (tmp_path / "s.yaml").write_bytes(bad)
        line = _exit2(["train", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")], capsys)
    else:
        (run / "config.yaml").write_bytes(bad)
        line = _exit2(["evaluate", str(run), "--particles", "2", "--device", "cpu"], capsys)
    assert "not UTF-8" in line and "0xe9" in line


# --------------------------------------------------------------------------- paths


def _fifo(tmp_path: Path) -> Path:
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("kind,word", [("dir", "directory"), ("fifo", "named pipe"), ("dev", "device")])
@pytest.mark.parametrize("role", ["spec", "data"])
def test_path_kinds_are_named_and_never_read(
    tmp_path: Path, kind: str, word: str, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO with no writer would block any open(): the check only stats it (a hang fails the test)."""
    path = {"dir": lambda: tmp_path, "fifo": lambda: _fifo(tmp_path), "dev": lambda: Path("/dev/zero")}[kind]()
    args = [str(path)] if role == "spec" else ["--set", "data.name=npz", "--set", f"data.path={path}"]
    t0 = time.perf_counter()
    line = _exit2(["train", *args, *as_sets(TINY), "--out", str(tmp_path / "o")], capsys)
    assert word in line and "does not exist" not in line
    assert time.perf_counter() - t0 < 30


def _corrupt_mnist(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + os.urandom(100))


def test_corrupt_mnist_is_called_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _corrupt_mnist(tmp_path / "data")
    line = _exit2(["train", *as_sets(TINY), "--set", "data.name=mnist", "--set", f"data.root={tmp_path / 'data'}",
                   "--set", "data.download=false", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "corrupt" in line and "could not be downloaded" not in line


# --------------------------------------------------------------------------- data


def _npz(tmp_path: Path, **arrays: Any) -> Path:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.random((40, 16)), "x_test": rng.random((12, 16))}
    base.update(arrays)
    p = tmp_path / "d.npz"
    np.savez(p, **{k: v for k, v in base.items() if v is not None})
    return p


def _train_npz(tmp_path: Path, p: Path, *extra: str) -> list[str]:
    return ["train", *as_sets([*TINY, "model.likelihood.kind=gaussian"]), "--set", "data.name=npz", "--set",
            f"data.path={p}", *[a for e in extra for a in ("--set", e)], "--out", str(tmp_path / "o")]  # fmt: skip


@pytest.mark.parametrize("shape", [(), (40,)])
def test_x_without_a_feature_axis(tmp_path: Path, shape: tuple[int, ...], capsys: pytest.CaptureFixture[str]) -> None:
    line = _exit2(_train_npz(tmp_path, _npz(tmp_path, x_train=np.zeros(shape))), capsys)
    assert "x_train" in line and "shape" in line


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_labels_are_read_as_labels(tmp_path: Path, dtype: Any) -> None:
    """Labels of every unsigned type give the same dataset as int64 labels."""
    from pyro_vae import data

    y = np.arange(40) % 3
    p = _npz(tmp_path, y_train=y.astype(dtype), y_test=(np.arange(12) % 3).astype(dtype))
    ds = data.load({"name": "npz", "path": str(p), "valid_size": 0.0})
    assert ds.num_classes == 3 and ds.y_train is not None
    assert torch.equal(ds.y_train, torch.as_tensor(y))


def test_labels_beyond_int64_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y = np.full(40, 2**63 + 5, dtype=np.uint64)
    line = _exit2(_train_npz(tmp_path, _npz(tmp_path, y_train=y, y_test=np.zeros(12, np.uint64))), capsys)
    assert "y_train" in line and "0..C-1" in line


@pytest.mark.parametrize("value,refused", [(1e39, True), (-3.5e38, True), (3.0e38, False)])
def test_values_beyond_float32_are_named(
    tmp_path: Path, value: float, refused: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyro_vae import data

    x = np.random.default_rng(0).random((40, 16))
    x[3, 4] = value
    p = _npz(tmp_path, x_train=x)
    if refused:
        with pytest.raises(DataError, match="beyond float32's range"):
            data.load({"name": "npz", "path": str(p), "valid_size": 0.0})
    else:
        assert float(data.load({"name": "npz", "path": str(p), "valid_size": 0.0}).x_train.max()) == pytest.approx(3e38)


@pytest.mark.parametrize("missing", ["y_test", "y_valid"])
def test_conditional_model_without_labels_in_a_split_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_step(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a training step ran")

    monkeypatch.setattr(train_mod.step_mod, "train_step", no_step)
    rng = np.random.default_rng(1)
    arrays: dict[str, Any] = {"y_train": np.arange(40) % 3, "y_test": np.arange(12) % 3}
    if missing == "y_valid":
        arrays["x_valid"] = rng.random((6, 16))
    else:
        arrays["y_test"] = None
    line = _exit2(_train_npz(tmp_path, _npz(tmp_path, **arrays), "model.kind=cvae"), capsys)
    assert f"no {missing}" in line
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_mismatched_checkpoint_names_key_and_shapes(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = torch.load(run / "checkpoint.pt", weights_only=True)
    key = sorted(s["model"])[3]
    was = tuple(s["model"][key].shape)
    s["model"][key] = torch.zeros(*was, 2)
    torch.save(s, run / "checkpoint.pt")
    line = _exit2(["evaluate", str(run), "--particles", "2", "--device", "cpu"], capsys)
    assert repr(key) in line and str(was) in line and str((*was, 2)) in line
    assert "Error(s) in loading" not in line
    s["model"]["extra.weight"] = s["model"].pop(key)
    torch.save(s, run / "checkpoint.pt")
    line = _exit2(["sample", str(run), "--num", "2", "--device", "cpu"], capsys)
    assert f"lacks {key!r}" in line


# --------------------------------------------------------------------------- arguments and outputs, before any work


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any command that gets as far as loading a run fails the test: the checks come first."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run was loaded before the arguments were checked")

    for mod in ("pyro_vae.rundir", "pyro_vae.cli", "pyro_vae.compare", "pyro_vae.diagnostics"):
        monkeypatch.setattr(f"{mod}.load_run", refuse, raising=False)
    monkeypatch.setattr(train_mod.data_mod, "load", refuse)


def _bad_outs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "afile").write_text("mine\n")
    return {
        "file": str(tmp_path / "afile"),
        "devnull": "/dev/null",
        "under-a-file": str(tmp_path / "afile" / "x"),
        "long-component": str(tmp_path / ("y" * 300)),
        "proc": "/proc/nope/x",
    }


@pytest.mark.parametrize("case", ["file", "devnull", "under-a-file", "long-component", "proc"])
@pytest.mark.parametrize("command", ["train", "diagnose", "sample", "gradients", "compare"])
def test_bad_output_paths_fail_before_any_work(
    run: Path, tmp_path: Path, no_loading: None, case: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if command == "gradients" and case == "file":
        pytest.skip("gradients --out may name an existing file (section 1's manifest rules decide)")
    out = _bad_outs(tmp_path)[case]
    if command in ("sample", "gradients") and case in ("under-a-file", "long-component", "proc"):
        out += ".png" if command == "sample" else ".json"
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    args = {
        "train": ["train", *as_sets(TINY)],
        "diagnose": ["diagnose", str(run)],
        "sample": ["sample", str(run)],
        "gradients": ["gradients", str(run)],
        "compare": ["compare", "--estimators", "trace", *as_sets(TINY)],
    }[command]
    line = _exit2([*args, "--out", out], capsys)
    assert "--out" in line or str(Path(out).parent)[:40] in line  # names the flag or the path
    assert (tmp_path / "afile").read_text() == "mine\n"
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing touched


@pytest.mark.parametrize(
    "args,flag",
    [(["diagnose", "RUN", "--seed", "-1"], "--seed"), (["diagnose", "RUN", "--seed", str(2**32)], "--seed"),
     (["gradients", "RUN", "--points", "0"], "--points"), (["evaluate", "RUN", "--points", "0"], "--points"),
     (["evaluate", "RUN", "--particles", "0"], "--particles"), (["sample", "RUN", "--num", "0"], "--num"),
     (["sample", "RUN", "--label", "-2"], "--label"), (["diagnose", "RUN", "--chains", "0"], "--chains"),
     (["sample", "RUN", "--out", "s.txt"], "--out"), (["compare", "--estimators", "trace", "--workers", "0"], "--workers"),
     (["compare", "--estimators", "trace", "--budget-seconds", "nan"], "--budget-seconds"),
     (["evaluate", "RUN", "--max-hours", "-1"], "--max-hours")],
)  # fmt: skip
def test_argument_ranges_fail_before_any_work(run: Path, no_loading: None, args: list[str], flag: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    line = _exit2([str(run) if a == "RUN" else a for a in args], capsys)
    assert flag in line


def test_figures_being_a_file_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    fit(overrides=[*TINY, "train.epochs=1", "train.figures=false"], out=out)
    (out / "figures").write_text("not a folder\n")
    metrics = (out / "metrics.jsonl").read_text()
    line = _exit2(
        ["train", "--resume", "--out", str(out), "--set", "train.epochs=2", "--set", "train.figures=true"], capsys
    )
    assert "figures" in line and "not a folder" in line
    assert (out / "figures").read_text() == "not a folder\n"
    assert (out / "metrics.jsonl").read_text() == metrics  # refused before epoch 2 was trained


# --------------------------------------------------------------------------- sizes and durations


SPECS = [
    [],
    ["model.network.kind=conv", "model.network.channels=[4, 8]"],
    ["model.prior.kind=mixture", "model.prior.num_components=7"],
    ["guide.kind=low_rank_normal", "guide.rank=2"],
    ["guide.kind=flow", "model.latent_dim=3"],
    ["model.kind=cvae"],
]


@pytest.mark.parametrize("extra", SPECS, ids=lambda e: ",".join(e) or "default")
def test_meta_parameter_count_is_exact(extra: list[str]) -> None:
    """The memory estimate counts the parameters of the model the spec builds, exactly."""
    try:
        cfg = spec.from_args(None, extra)
    except SpecError as e:  # a component this checkout does not have under that name
        pytest.skip(str(e))
    params, _, how = resources.model_size(cfg, (1, 8, 8), 10)
    real = build_model(cfg, (1, 8, 8), 10)
    expected = sum(t.numel() for t in real.parameters()) + sum(t.numel() for t in real.buffers())
    if how.startswith("at least"):  # a flow's masks need real values: a lower bound from the layer sizes
        assert resources.spec_lower_bound(cfg, (1, 8, 8))[0] == params <= expected
    else:
        assert params == expected


@pytest.mark.parametrize(
    "overrides",
    [["model.latent_dim=1000000000"], ["model.network.hidden=[1000000000000]"],
     ["elbo.kind=iwae", "elbo.num_particles=1000000000"], ["train.batch_size=1000000000000"],
     ["model.prior.kind=mixture", "model.prior.num_components=1000000000"],
     ["guide.kind=flow", "model.latent_dim=1000000000"]],
    ids=["latent", "hidden", "particles", "batch", "mixture", "flow"],
)  # fmt: skip
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before its size was checked")

    monkeypatch.setattr(train_mod, "build_model", no_build)
    t0 = time.perf_counter()
    line = _exit2(["train", *as_sets([*TINY, *overrides]), "--out", str(tmp_path / "o")], capsys)
    assert time.perf_counter() - t0 < 30
    assert "needs about" in line and "available" in line
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_ordinary_models_are_not_refused() -> None:
    """Burda et al.'s MNIST IWAE (two 200-unit layers, 50 latents, k = 50) fits a laptop: never refused."""
    from pyro_vae.evaluation.evaluate import ROW_BUDGET

    cfg = spec.from_args(None, ["model.latent_dim=50", "model.network.hidden=[200, 200]", "elbo.kind=iwae",
                                "elbo.num_particles=50", "train.batch_size=20"])  # fmt: skip
    resources.check_training_fits(cfg, (1, 28, 28), 0, "cpu", ROW_BUDGET)
    assert resources.model_size(cfg, (1, 28, 28))[0] < 2_000_000


def test_strided_convolutions_are_measured_not_bounded() -> None:
    """A 64x64 conv VAE: the meta forward pass counts each layer's real (strided) output, far below
    the channels x pixels bound, so an ordinary CelebA spec is not refused on memory."""
    cfg = spec.from_args(None, ["model.network.kind=conv64", "model.likelihood.kind=gaussian"])
    measured = resources.forward_width(cfg, (3, 64, 64))
    assert measured is not None
    assert 2 * 3 * 64 * 64 < measured < resources.model_size(cfg, (3, 64, 64))[1] / 3


def test_sample_num_beyond_one_grid_is_refused(run: Path, no_loading: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--num" in _exit2(["sample", str(run), "--num", "1000000000"], capsys)


def test_hours_of_evaluation_are_refused_with_an_estimate(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    line = _exit2(["evaluate", str(run), "--particles", "1000000000", "--device", "cpu"], capsys)
    assert time.perf_counter() - t0 < 60
    assert "would take about" in line and "--max-hours" in line
    assert not (run / "eval.json").exists()


def test_the_time_estimate_is_the_right_order(run: Path) -> None:
    """The probe's estimate for a 2-second evaluation is within a factor of 10 of the measured time."""
    from pyro_vae import evaluate

    loaded = rundir_mod.load_run(run, device="cpu")
    x, y = loaded.data.split("test")
    k = 400
    est, _ = resources.estimate_eval_seconds(loaded.vae, x, y, k, len(x))
    t0 = time.perf_counter()
    evaluate(loaded.vae, loaded.data, "test", k)
    took = time.perf_counter() - t0
    assert took / 10 < est < took * 10


def test_hours_of_final_evaluation_are_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_step(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a training step ran")

    monkeypatch.setattr(train_mod.step_mod, "train_step", no_step)
    line = _exit2(["train", *as_sets([*TINY, "train.eval_particles=1000000000"]), "--out", str(tmp_path / "o")], capsys)
    assert "the final evaluation" in line and "would take about" in line and "train.eval_particles" in line


@pytest.mark.parametrize(
    "args",
    [["diagnose", "RUN", "--samples", "1000000000", "--nuts", "0", "--sbc", "0"],
     ["diagnose", "RUN", "--sbc", "1000000000", "--nuts", "0", "--points", "3", "--samples", "30"],
     ["gradients", "RUN", "--draws", "1000000000"], ["gradients", "RUN", "--particles", "1000000000"],
     # 1e12: at 1e9 the tiny model's evaluation is about a day, on either side of the limit by machine speed
     ["compare", *as_sets(TINY), "--estimators", "trace", "--particles", "1000000000000", "--no-snr", "--out", "OUT"]],
    ids=["psis-samples", "sbc", "gradient-draws", "gradient-particles", "compare-particles"],
)  # fmt: skip
def test_other_commands_refuse_what_cannot_fit_or_finish(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The same class for every command: memory and time estimated from its options, before any work."""
    # the modules whose functions call these names (a package's re-export would not be the one called)
    compare_run, compare_cli = (importlib.import_module(f"pyro_vae.compare.{m}") for m in ("run", "cli"))
    diagnostics_run = importlib.import_module("pyro_vae.diagnostics.run")

    def no_work(*a: Any, **k: Any) -> Any:
        raise AssertionError("the work started")

    monkeypatch.setattr(diagnostics_run, "run_diagnostics", no_work)
    monkeypatch.setattr(compare_cli, "gradient_stats", no_work)
    monkeypatch.setattr(compare_run, "run_job", no_work)
    t0 = time.perf_counter()
    line = _exit2([str(run) if a == "RUN" else str(tmp_path / "c") if a == "OUT" else a for a in args], capsys)
    assert time.perf_counter() - t0 < 60
    assert ("needs about" in line and "available" in line) or "would take about" in line
    assert not (tmp_path / "c").exists()
