"""Checkpoints hold tensors and plain containers only; a truncated, foreign or code-carrying file is
refused with one clear line by ``evaluate`` and ``train --resume``, and its payload never runs."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pyro_vae import cli, load_run, spec
from pyro_vae.errors import RunError
from pyro_vae.rundir import checkpoint

from .conftest import one_clear_line


class _Touch:
    """Unpickling this creates ``path``: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (exec, (f"open({self.path!r}, 'w').close()",))


def _malicious(run: Path, marker: Path, where: str) -> None:
    """A real checkpoint of this run with a code-executing object planted inside."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if where == "model":
        state["model"]["extra"] = _Touch(marker)
    elif where == "top":
        state["history"] = [_Touch(marker)]
    else:  # a plain pickle, not torch's zip format
        (run / "checkpoint.pt").write_bytes(pickle.dumps({**state, "x": _Touch(marker)}))
        return
    torch.save(state, run / "checkpoint.pt")


def _both_commands(run: Path) -> list[list[str]]:
    return [
        ["evaluate", str(run), "--particles", "2", "--device", "cpu"],
        ["train", "--out", str(run), "--resume"],
        ["sample", str(run), "--num", "2", "--out", str(run / "s.png"), "--device", "cpu"],
    ]


@pytest.mark.parametrize("where", ["model", "top", "plain-pickle"])
def test_code_carrying_checkpoint_is_refused_and_never_runs(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    marker = tmp_path / "PWNED"
    _malicious(run, marker, where)
    # the payload is live: an unsafe load would create the file (so this test can fail)
    torch.load(run / "checkpoint.pt", weights_only=False) if where != "plain-pickle" else pickle.loads(
        (run / "checkpoint.pt").read_bytes()
    )
    assert marker.exists()
    marker.unlink()
    for args in _both_commands(run):
        assert cli.main(args) == 2, args
        line = one_clear_line(capsys.readouterr().err)
        assert "unreadable or unsafe" in line and "checkpoint.pt" in line
        assert not marker.exists()
    with pytest.raises(RunError):
        load_run(run, device="cpu")
    assert not marker.exists()


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 3])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _random_bytes(p: Path) -> None:
    p.write_bytes(bytes(range(256)) * 40)


def _foreign_tensor(p: Path) -> None:
    torch.save(torch.zeros(3), p)  # a valid torch file, not ours


def _foreign_dict(p: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}}, p)


def _zip(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("data.pkl", b"junk")


def _future_version(p: Path) -> None:
    s = torch.load(p, weights_only=True)
    torch.save({**s, "version": 99}, p)


def _wrong_model(p: Path) -> None:
    s = torch.load(p, weights_only=True)
    s["model"] = {k: v[..., :1] if v.ndim else v for k, v in s["model"].items()}
    torch.save(s, p)


def _missing_keys(p: Path) -> None:
    s = torch.load(p, weights_only=True)
    del s["optimizer"], s["rng"]
    torch.save(s, p)


BROKEN = {
    "truncated": (_truncate, "unreadable"),
    "empty": (_empty, "unreadable"),
    "random-bytes": (_random_bytes, "unreadable"),
    "foreign-tensor": (_foreign_tensor, "not a pyro-vae checkpoint"),
    "foreign-dict": (_foreign_dict, "not a pyro-vae checkpoint"),
    "zip": (_zip, "unreadable"),
    "future-version": (_future_version, "version 99"),
    "wrong-model": (_wrong_model, "does not match"),
    "missing-keys": (_missing_keys, "does not match"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_gives_one_clear_line(run: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    damage, words = BROKEN[case]
    damage(run / "checkpoint.pt")
    for args in _both_commands(run):
        if case == "missing-keys" and args[0] != "train":
            continue  # evaluate/sample only need the model
        assert cli.main(args) == 2, args
        line = one_clear_line(capsys.readouterr().err)
        assert words in line, line


def test_yaml_config_cannot_run_code(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    (run / "config.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    for args in _both_commands(run):
        assert cli.main(args) == 2
        assert "config.yaml" in one_clear_line(capsys.readouterr().err)
    assert not marker.exists()


def _walk(obj: Any, path: str = "") -> None:
    """Only tensors, numbers, strings, None and plain containers: nothing that needs pickle's globals."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{path}: key {k!r}"
            _walk(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), f"{path}: {type(obj)}"


def test_checkpoint_is_plain_data_and_spec_is_yaml(trained: Path) -> None:
    raw = (trained / "checkpoint.pt").read_bytes()
    state = torch.load(io.BytesIO(raw), weights_only=True)
    _walk(state)
    assert isinstance(state["config"], str)  # the spec travels as YAML text, never pickled
    assert spec.resolve(yaml.safe_load(state["config"])) == yaml.safe_load((trained / "config.yaml").read_text())
    # and the checkpoint API agrees with a plain weights_only load
    assert checkpoint.load(trained / "checkpoint.pt")["epoch"] == state["epoch"] == 1


@pytest.mark.parametrize("entry", ["format", "version"])
@pytest.mark.parametrize("value", [torch.tensor([]), torch.tensor([1, 1]), True, 1.0, None, [1]])
def test_a_damaged_format_or_version_entry_is_one_line(run: Path, entry: str, value: Any) -> None:
    """The format mark and version are compared by type and value: a tensor there (ambiguous truth
    value) or a look-alike (True == 1, 1.0 == 1) is damage, reported in one line."""
    ck = run / "checkpoint.pt"
    state = torch.load(ck, weights_only=True)
    state[entry] = value
    torch.save(state, ck)
    with pytest.raises(RunError, match="not a pyro-vae checkpoint|has version"):
        checkpoint.load(ck)
