"""Fuzz of the whole command line: argument lists, spec files, config.yaml edits, checkpoint contents.

Hypothesis builds what a careless or hostile user would type or leave on disk; every command runs in
process through :func:`pyro_vae.cli.main` with a tiny model, in a fresh sandbox directory that holds
the user's own files and a trained run. Each example must end with

- exit 0, or exit 2 with exactly one line on stderr and no traceback (an unexpected exception fails
  the example: the real command would print a traceback and exit 1);
- no file created outside the places the command was told to write (its ``--out``, the run directory
  it works on, ``runs/`` for a default output);
- every file the tool did not write (the user's) unchanged and still there.

The default suite runs a few dozen examples per target; ``-m slow`` runs hundreds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import cli
from pyro_vae.registry import REGISTRY

from .conftest import TINY, as_sets

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MANY = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

#: The user's own files in every sandbox: none may change or disappear.
USER_FILES = {
    "user.txt": b"my notes\n",
    "keep/data.bin": b"\x00\x01\x02",
    "run/mine.txt": b"mine, inside a run directory\n",
    "run/figures/v/a.jpg": b"\xff\xd8\xff not really a jpeg",
    "other/notes.md": b"# a directory that is not a run\n",
}


@contextlib.contextmanager
def sandbox(trained: Path) -> Iterator[Path]:
    """A fresh working directory with the user's files and a copy of the trained run, as cwd."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="pyro-vae-fuzz-") as d:
        root = Path(d)
        shutil.copytree(trained, root / "run")
        for rel, data in USER_FILES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(old)


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _allowed(root: Path, args: list[str]) -> list[Path]:
    """Where the command may create files: its --out, the run directory it reads, runs/ by default."""
    places = [root / "runs"]
    if "--out" in args and args.index("--out") + 1 < len(args):
        places.append(root / args[args.index("--out") + 1])
    if args and args[0] in ("evaluate", "sample", "diagnose", "gradients") and len(args) > 1:
        places.append(root / args[1])
    if args and args[0] == "train" and "--resume" in args:
        places.append(root / "run")
    return [Path(os.path.realpath(p)) for p in places]


def check_contract(root: Path, args: list[str]) -> None:
    """Run ``pyro-vae ARGS`` in ``root`` and check the three promises."""
    before = _snapshot(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(args)
        except SystemExit as e:  # argparse: --help (0) or a usage error (2, one line)
            code = int(e.code or 0)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, args, text)
    if code == 2:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1, (args, text)
    after = _snapshot(root)
    for rel in USER_FILES:
        assert after.get(rel) == before[rel], f"{rel} was changed or deleted by {args}"
    for rel, digest in before.items():  # files present before: the run's own may change, never vanish by others'
        if not rel.startswith("run/"):
            assert after.get(rel) == digest, f"{rel} changed: {args}"
    places = _allowed(root, args)
    for rel in set(after) - set(before):
        real = Path(os.path.realpath(root / rel))
        assert any(real == p or p in real.parents for p in places), f"{rel} written outside {places}: {args}"


# --------------------------------------------------------------------------- strategies

_GARBAGE = st.sampled_from(["", "x", "-1", "0", "1e999", "nan", "[]", "{}", "~", "010", "1:30", "&a [*a]", "'", "\x00",
                            "é", "yes", "a" * 300, "[1, [2, [3]]]", "{kind: {kind: x}}", "!!python/name:os.system"])  # fmt: skip
KINDS = {g: REGISTRY.names(g) for g in ("model", "prior", "guide", "likelihood", "elbo")}

_NAMED_OVERRIDES = [
    "train.epochs=0", "train.epochs=2", "train.epochs=010", "train.epochs=1:30", "train.epochs=-1",
    "train.batch_size=1000000000000", "train.batch_size=0", "train.lr=1e-3", "train.lr=1e30", "train.lr=0",
    "train.eval_particles=1000000000", "train.eval_particles=1", "model.latent_dim=1000000000",
    "model.latent_dim=1", "model.latent_dim=0", "model.network.hidden=[1000000000000]", "model.network.hidden=[]",
    "model.network.hidden=[8, 8]", "elbo.num_particles=1000000000", "elbo.num_particles=2", "data.limit=-3",
    "data.valid_size=2000", "data.binarize=static", "data.name=npz", "data.path=user.txt", "data.path=keep",
    "data.path=/dev/zero", "name=../../escape", "name=/abs/x", "name=" + "n" * 300, "seed=-1",
    "train.device=cuda", "model.kind=cvae", "train.figures=true", "train.max_bad_steps=1",
]  # fmt: skip
_KIND_KEYS = {"model": "model.kind", "prior": "model.prior.kind", "likelihood": "model.likelihood.kind",
              "guide": "guide.kind", "elbo": "elbo.kind"}  # fmt: skip
_GARBAGE_KEYS = [
    "train.lr",
    "name",
    "elbo.beta",
    "model.prior",
    "guide",
    "data",
    "train",
    "nope.key",
    "model.network.kind",
]
OVERRIDES = st.one_of(
    st.sampled_from(_NAMED_OVERRIDES),
    st.builds(
        lambda g, k: f"{_KIND_KEYS[g]}={k}",
        st.sampled_from(sorted(KINDS)),
        st.sampled_from(sorted({k for v in KINDS.values() for k in v})),
    ),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_GARBAGE_KEYS), _GARBAGE),
)

# Valid choices are listed several times, so that about half of the examples get through to real work.
OUTS = st.sampled_from(["new", "new", "new", "runs/x", "a/b/c", "run", "user.txt", "keep", "other", "/dev/null", "",
                        "n" * 300, "/proc/nope/x", "keep/data.bin/x", "."])  # fmt: skip
SMALL_INTS = st.sampled_from(["1", "2", "3", "2", "3", "0", "-1", "x", "1000000000000"])


def _opt(flag: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), st.just([]), values.map(lambda v: [flag, v]))


@st.composite
def command_lines(draw: Any) -> list[str]:
    cmd = draw(
        st.sampled_from(["train", "evaluate", "sample", "diagnose", "gradients", "compare", "components", "bogus"])
    )
    run = draw(st.sampled_from(["run"] * 8 + ["other", "user.txt", "missing", "/dev/null"]))
    out = draw(_opt("--out", OUTS))
    if cmd == "train":
        sets = [*TINY, "train.epochs=1", *draw(st.lists(OVERRIDES, max_size=2))]
        flags = draw(st.lists(st.sampled_from(["--force", "--resume"]), max_size=2, unique=True))
        spec = draw(st.sampled_from([[]] * 6 + [["user.txt"], ["keep"], ["/dev/zero"], ["missing.yaml"]]))
        return ["train", *spec, *as_sets(sets), *flags, *out]
    if cmd == "evaluate":
        return ["evaluate", run, *draw(_opt("--particles", st.sampled_from(["2", "0", "-5", "1000000000000"]))),
                *draw(_opt("--points", SMALL_INTS)), *draw(_opt("--seed", SMALL_INTS)), "--device", "cpu"]  # fmt: skip
    if cmd == "sample":
        sout = draw(_opt("--out", st.sampled_from(["s.png", "s.txt", "keep/s.png", "run/s.png", "/proc/nope/x.png",
                                                   "user.txt", "keep", "user.txt/x.png"])))  # fmt: skip
        return [
            "sample",
            run,
            *draw(_opt("--num", SMALL_INTS)),
            *draw(_opt("--label", SMALL_INTS)),
            *sout,
            "--device",
            "cpu",
        ]
    if cmd == "diagnose":
        return ["diagnose", run, "--points", draw(st.sampled_from(["3", "3", "3", "0", "x"])), "--samples",
                draw(st.sampled_from(["30", "30", "30", "5", "-1"])), "--nuts", "0", "--sbc", draw(st.sampled_from(["0", "3"])),
                "--gap-points", "0", *draw(_opt("--seed", SMALL_INTS)), *out]  # fmt: skip
    if cmd == "gradients":
        gout = draw(_opt("--out", st.sampled_from(["g.json", "keep/g.json", "user.txt", "/dev/null", "keep"])))
        return ["gradients", run, "--particles", draw(st.sampled_from(["1,2", "1,2", "1,2", "0", "x", ""])), "--draws", "3",
                *draw(_opt("--points", SMALL_INTS)), "--device", "cpu", *gout]  # fmt: skip
    if cmd == "compare":
        return ["compare", *as_sets([*TINY, "train.epochs=1"]), "--estimators",
                draw(st.sampled_from(["trace", "trace", "iwae:num_particles=2", "trace,trace", "nope", "",
                                      "iwae:num_particles=x"])), "--particles", "2",
                "--no-snr", "--curve-particles", "0", *draw(_opt("--workers", SMALL_INTS)), *out]  # fmt: skip
    if cmd == "components":
        return ["components", *draw(st.lists(st.sampled_from(["prior", "guide", "x", "--help"]), max_size=1))]
    return [cmd]


@given(command_lines())
@FAST
def test_fuzz_command_lines(trained: Path, args: list[str]) -> None:
    with sandbox(trained) as root:
        check_contract(root, args)


# --------------------------------------------------------------------------- spec files

YAML_SCALARS = st.one_of(
    st.integers(-3, 5).map(str), _GARBAGE, st.sampled_from(["true", "null", "1e-3", "0o7", "0x10"])
)
SECTIONS = {
    "train": ["epochs: 1", "epochs: 010", "lr: 1e-3", "batch_size: 32", "progress: false", "figures: false",
              "eval_particles: 2", "device: cpu"],
    "model": ["kind: vae", "latent_dim: 2", "network: {kind: mlp, hidden: [8]}", "likelihood: {kind: bernoulli}"],
    "data": ["name: digits", "limit: 160"],
    "elbo": ["kind: trace", "kind: iwae", "num_particles: 2"],
    "guide": ["kind: diagonal_normal"],
}  # fmt: skip


@st.composite
def spec_files(draw: Any) -> bytes:
    lines = [f"name: {draw(st.sampled_from(['fuzz'] * 6 + ['a/b', '..', '', 'x' * 200, '&a x', '*a']))}"]
    for section, options in SECTIONS.items():
        if draw(st.booleans()):
            continue
        lines.append(f"{section}:")
        chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=4, unique_by=lambda o: o.split(":")[0]))
        lines += [f"  {c}" for c in chosen]
        if draw(st.integers(0, 12)) == 0:  # a wrong value or an unknown key
            lines.append(f"  {draw(st.sampled_from(['epochs', 'lr', 'kind', 'nope']))}: {draw(YAML_SCALARS)}")
    text = "\n".join(lines) + "\n"
    damage = draw(st.sampled_from(["none"] * 8 + ["bytes", "tabs", "truncate", "bomb", "duplicate"]))
    if damage == "duplicate":
        text += lines[0] + "\n"
    if damage == "bytes":
        return text.encode()[:10] + b"\xff\xfe" + text.encode()[10:]
    if damage == "tabs":
        text = text.replace("  ", "\t")
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    if damage == "bomb":
        text += "x0: &x0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
            f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 9)
        )
    return text.encode()


#: Keeps every spec file's run tiny, whatever its sections say (a section in a file replaces the default's).
SPEC_TINY = [
    "train.epochs=1",
    "data.limit=160",
    "train.eval_particles=2",
    "train.progress=false",
    "train.figures=false",
]


@given(spec_files(), st.lists(OVERRIDES, max_size=1))
@FAST
def test_fuzz_spec_files(trained: Path, content: bytes, sets: list[str]) -> None:
    with sandbox(trained) as root:
        (root / "spec.yaml").write_bytes(content)
        check_contract(root, ["train", "spec.yaml", *as_sets([*SPEC_TINY, *sets]), "--out", "new"])


# --------------------------------------------------------------------------- config.yaml edits


@st.composite
def config_edits(draw: Any) -> tuple[str, str]:
    how = draw(st.sampled_from(["set", "delete", "append", "bytes", "truncate", "duplicate"]))
    key = draw(st.sampled_from(["name", "seed", "epochs", "lr", "latent_dim", "kind", "hidden", "binarize", "limit",
                                "eval_particles", "batch_size"]))  # fmt: skip
    return how, f"{key}|{draw(YAML_SCALARS)}"


def _edit_config(path: Path, how: str, what: str) -> None:
    key, value = what.split("|", 1)
    lines = path.read_text().splitlines()
    hits = [i for i, ln in enumerate(lines) if ln.strip().startswith(f"{key}:")]
    if how == "set" and hits:
        indent = lines[hits[0]][: len(lines[hits[0]]) - len(lines[hits[0]].lstrip())]
        lines[hits[0]] = f"{indent}{key}: {value}"
    elif how == "delete" and hits:
        del lines[hits[0]]
    elif how == "append":
        lines.append(f"{key}: {value}")
    elif how == "duplicate" and hits:
        lines.insert(hits[0], lines[hits[0]])
    text = "\n".join(lines) + "\n"
    if how == "bytes":
        path.write_bytes(text.encode()[:20] + b"\xc3\x28" + text.encode()[20:])
    elif how == "truncate":
        path.write_text(text[: len(text) // 2])
    else:
        path.write_text(text)


READERS = [
    ["evaluate", "run", "--particles", "2", "--device", "cpu"],
    ["sample", "run", "--num", "2", "--device", "cpu"],
    ["train", "--resume", "--out", "run", "--set", "train.epochs=2", "--set", "train.progress=false"],
    ["gradients", "run", "--particles", "1,2", "--draws", "3", "--device", "cpu"],
]


@given(config_edits(), st.sampled_from(range(len(READERS))))
@FAST
def test_fuzz_config_edits(trained: Path, edit: tuple[str, str], reader: int) -> None:
    with sandbox(trained) as root:
        _edit_config(root / "run" / "config.yaml", *edit)
        check_contract(root, READERS[reader])


# --------------------------------------------------------------------------- checkpoint contents

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=5),
    st.sampled_from([torch.zeros(0), torch.zeros(3, 3), torch.tensor(float("nan")), torch.ones(2, dtype=torch.uint8),
                     torch.zeros(2, dtype=torch.int64)]),
)  # fmt: skip
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)  # fmt: skip


@st.composite
def checkpoint_edits(draw: Any) -> list[tuple[str, str, Any]]:
    keys = ["epoch", "model", "optimizer", "rng", "history", "partial", "config", "format", "version", "data_fingerprint",
            "model.<first>", "model.<new>", "rng.torch", "rng.data", "history.<last>", "partial.steps"]  # fmt: skip
    return draw(
        st.lists(st.tuples(st.sampled_from(["set", "delete"]), st.sampled_from(keys), VALUES), min_size=1, max_size=3)
    )


def _edit_checkpoint(path: Path, edits: list[tuple[str, str, Any]]) -> None:
    state = torch.load(path, weights_only=True)
    for how, key, value in edits:
        top, _, sub = key.partition(".")
        holder: Any = state
        name: Any = top
        if sub:
            holder = state.get(top)
            if isinstance(holder, dict):
                name = {"<first>": next(iter(holder), "x"), "<new>": "new.weight"}.get(sub, sub)
            elif isinstance(holder, list) and holder:
                name = len(holder) - 1
            else:
                continue
        if how == "delete":
            if isinstance(holder, dict):
                holder.pop(name, None)
            elif isinstance(holder, list) and holder:
                holder.pop()
        else:
            holder[name] = value
    torch.save(state, path)


@given(checkpoint_edits(), st.sampled_from(range(len(READERS))))
@FAST
def test_fuzz_checkpoint_contents(trained: Path, edits: list[tuple[str, str, Any]], reader: int) -> None:
    with sandbox(trained) as root:
        _edit_checkpoint(root / "run" / "checkpoint.pt", edits)
        check_contract(root, READERS[reader])


# --------------------------------------------------------------------------- many more examples


@pytest.mark.slow
@given(command_lines())
@MANY
def test_fuzz_command_lines_many(trained: Path, args: list[str]) -> None:
    with sandbox(trained) as root:
        check_contract(root, args)


@pytest.mark.slow
@given(
    spec_files(),
    st.lists(OVERRIDES, max_size=3),
    config_edits(),
    checkpoint_edits(),
    st.sampled_from(range(len(READERS))),
)
@MANY
def test_fuzz_files_many(trained: Path, content: bytes, sets: list[str], edit: tuple[str, str],
                         edits: list[tuple[str, str, Any]], reader: int) -> None:  # fmt: skip
    with sandbox(trained) as root:
        (root / "spec.yaml").write_bytes(content)
        check_contract(root, ["train", "spec.yaml", *as_sets([*SPEC_TINY, *sets]), "--out", "new"])
    with sandbox(trained) as root:
        _edit_config(root / "run" / "config.yaml", *edit)
        check_contract(root, READERS[reader])
    with sandbox(trained) as root:
        _edit_checkpoint(root / "run" / "checkpoint.pt", edits)
        check_contract(root, READERS[reader])
