"""The tool never touches what it did not write, and writes only where it was told.

A run directory carries a manifest of every file pyro-vae wrote there; ``--force`` deletes exactly
those, a directory without a manifest is never written into, and ``--out``/``name`` that would put
files elsewhere (a file, a device, '', a path too long, ``..``) are refused before any work.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import cli, data, fit
from pyro_vae.errors import PyroVAEError, RunError
from pyro_vae.rundir.lock import LOCK, MANIFEST, RunDir

from .conftest import TINY, as_sets, one_clear_line

FAST = [*TINY, "train.epochs=1"]
#: Cheapest settings of each reading command (enough to write every output file).
DIAGNOSE = ["--points", "4", "--samples", "20", "--nuts", "0", "--gap-points", "0", "--sbc", "0"]
GRADIENTS = ["--particles", "1", "--draws", "2", "--points", "2", "--device", "cpu"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tool_files(run: Path) -> set[str]:
    return set(RunDir(run).files())


def command(op: str, run: Path) -> list[str]:
    return {
        "train": ["train", "--out", str(run), *as_sets(FAST)],
        "force": ["train", "--out", str(run), "--force", *as_sets([*FAST, "train.figures=true"])],
        "resume": ["train", "--out", str(run), "--resume", *as_sets(["train.epochs=2"])],
        "evaluate": ["evaluate", str(run), "--particles", "2", "--device", "cpu"],
        "sample": ["sample", str(run), "--num", "4", "--device", "cpu"],
        "gradients": ["gradients", str(run), *GRADIENTS],
        "diagnose": ["diagnose", str(run), *DIAGNOSE],
    }[op]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    """The CLI contract: exit 0, or exit 2 with one line on stderr and no traceback."""
    capsys.readouterr()
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc in (0, 2), (args, rc, err)
    if rc == 2:
        one_clear_line(err)
    return rc


# --------------------------------------------------------------------------- the property


USER_PATHS = [
    "notes.txt", "figures/v/a.jpg", "figures/mine.png", "diagnostics/extra.csv", "diagnostics/figures/x.png",
    "eval.json", "gradients.json", "figures/loss.png", "deep/a/b/c.bin", "runs/keep.txt", "config.yaml.bak",
]  # fmt: skip
OPS = ["train", "force", "resume", "evaluate", "sample", "gradients", "diagnose"]


def check_sequence(box: Path, user: dict[str, bytes], ops: list[tuple[str, list[str]]], capsys: Any) -> None:
    """Run ``ops`` (a command and the user files to add before it) into ``box/run``; after each:
    every user file is byte-identical, nothing appeared outside the run directory, and every file in
    the run directory is either the user's or in the manifest (so --force can remove it)."""
    run = box / "run"
    outside = snapshot(box.parent / "cwd")
    mine: dict[str, bytes] = {}

    def add(paths: dict[str, bytes]) -> None:
        for rel, content in paths.items():
            p = run / rel
            if p.exists() or any(q.is_file() for q in [run, *p.parents] if q != run and run in q.parents):
                continue  # the tool's own file, or a folder that is a file: not the user's to create
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
            mine[rel] = content

    add(user)  # before the first command: a directory pyro-vae did not make
    for op, extra in ops:
        add({rel: f"user {rel}".encode() for rel in extra})
        run_cli(command(op, run), capsys)
        files = snapshot(run)
        for rel, content in mine.items():
            assert files.get(rel) == content, f"{op}: user file {rel} changed or vanished"
        assert sorted(p.name for p in box.iterdir()) == ["run"], f"{op}: wrote beside the run directory"
        assert snapshot(box.parent / "cwd") == outside, f"{op}: wrote into the working directory"
        if (run / MANIFEST).is_file():
            listed = tool_files(run)
            unlisted = set(files) - set(mine) - listed - {MANIFEST, LOCK}
            assert not unlisted, f"{op}: files written but not in the manifest: {sorted(unlisted)}"


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "box").mkdir()
    return tmp_path / "box"


def test_every_command_keeps_user_files_and_lists_its_own(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One sequence through every command, user files added between them (the fast suite's case)."""
    ops = [("train", []), ("evaluate", ["figures/v/a.jpg", "notes.txt"]), ("sample", ["diagnostics/extra.csv"]),
           ("gradients", []), ("diagnose", ["diagnostics/figures/x.png"]), ("force", ["deep/a/b/c.bin"]),
           ("resume", [])]  # fmt: skip
    check_sequence(box, {}, ops, capsys)
    run = box / "run"
    # --force removed the earlier model's diagnostics and gradients, and every listed file exists
    assert not (run / "gradients.json").exists() and not (run / "diagnostics" / "diagnostics.json").exists()
    assert (run / "diagnostics" / "extra.csv").is_file()
    assert all((run / f).is_file() for f in tool_files(run) if f not in ("best.pt",))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    user=st.just({}) | st.dictionaries(st.sampled_from(USER_PATHS), st.binary(max_size=64), max_size=3),
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.lists(st.sampled_from(USER_PATHS), max_size=2)), min_size=1,
                 max_size=6),
)  # fmt: skip
def test_any_sequence_keeps_user_files(
    tmp_path_factory: pytest.TempPathFactory, user: dict[str, bytes], ops: list[tuple[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Whatever sequence of train/--force/--resume/evaluate/sample/gradients/diagnose runs into a
    directory holding user files (before or between commands), every user file survives byte for
    byte, nothing appears outside the run directory, and everything the tool wrote is listed."""
    tmp = tmp_path_factory.mktemp("seq")
    (tmp / "cwd").mkdir()
    (tmp / "box").mkdir()
    old = os.getcwd()
    os.chdir(tmp / "cwd")
    try:
        check_sequence(tmp / "box", user, [("train", []), *ops], capsys)
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- --force


def test_force_refuses_a_directory_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    (out / "figures" / "v").mkdir(parents=True)
    (out / "figures" / "v" / "a.jpg").write_bytes(b"jpeg")
    (out / "config.yaml").write_text("my own config\n")
    before = snapshot(out)
    for flags in (["--force"], [], ["--resume"]):
        assert cli.main(["train", "--out", str(out), *flags, *as_sets(FAST)]) == 2
        line = one_clear_line(capsys.readouterr().err)
        assert "pyro-vae" in line and str(out) in line
    assert snapshot(out) == before  # not even a lock file or manifest was added
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "figures"]


def test_force_removes_exactly_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=[*FAST, "train.figures=true"], out=out)
    old = tool_files(out)
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json", "figures/loss.png"} <= old
    (out / "figures" / "v").mkdir()
    (out / "figures" / "v" / "a.jpg").write_bytes(b"user")
    (out / "gradients.json.mine").write_text("user")
    (out / "stale.json").write_text("{}")  # a file the manifest lists, as an earlier command's output
    with RunDir(out)._editing() as m:
        m["files"].append("stale.json")
    fit(overrides=FAST, out=out, force=True)  # no figures this time
    assert not (out / "stale.json").exists() and not (out / "figures" / "loss.png").exists()
    assert (out / "figures" / "v" / "a.jpg").read_bytes() == b"user"
    assert (out / "gradients.json.mine").read_text() == "user"
    assert tool_files(out) == {"best.pt", "checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json"}


def test_an_emptied_run_directory_has_no_tool_folders_left(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=[*FAST, "train.figures=true"], out=out)
    RunDir(out).clear()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, LOCK]  # figures/ was the tool's and is empty


def test_user_file_where_the_tool_would_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    fit(overrides=FAST, out=out)
    (out / "eval.json").write_text("my notes")
    assert cli.main(command("evaluate", out)) == 2
    assert "eval.json" in one_clear_line(capsys.readouterr().err)
    assert (out / "eval.json").read_text() == "my notes"


def test_compare_into_an_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--estimators", "trace", "--particles", "2", "--curve-particles", "0", "--no-snr",
            "--out", str(out), *as_sets(FAST)]  # fmt: skip
    assert cli.main(args) == 0
    capsys.readouterr()
    (out / "figures" / "mine.png").write_bytes(b"user")
    before = snapshot(out)
    assert cli.main(args) == 2
    assert "--force" in one_clear_line(capsys.readouterr().err)
    assert snapshot(out) == before
    assert cli.main([*args, "--force"]) == 0
    assert (out / "figures" / "mine.png").read_bytes() == b"user"
    assert (out / "compare.json").is_file() and (out / "runs" / "trace-seed0" / "checkpoint.pt").is_file()
    # the job runs are listed as nested runs: clearing the comparison clears them too
    RunDir(out).clear()
    assert set(snapshot(out)) == {"figures/mine.png", MANIFEST, LOCK}


def test_diagnose_out_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    fit(overrides=FAST, out=run)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user")
    assert cli.main(["diagnose", str(run), *DIAGNOSE, "--out", str(mine)]) == 2
    one_clear_line(capsys.readouterr().err)
    assert snapshot(mine) == {"keep.txt": b"user"}
    ext = tmp_path / "diag"
    assert cli.main(["diagnose", str(run), *DIAGNOSE, "--out", str(ext)]) == 0
    assert (ext / "diagnostics.json").is_file() and "diagnostics.json" in tool_files(ext)
    assert not (run / "diagnostics").exists()


# --------------------------------------------------------------------------- outputs stay where put


def _no_data_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("data was loaded before the output path was checked")

    monkeypatch.setattr(data, "load", refuse)


@pytest.mark.parametrize("case", ["empty", "file", "devnull", "under-file", "long-component", "long-path", "proc"])
def test_bad_out_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "a_file").write_text("x")
    out = {
        "empty": "",
        "file": str(tmp_path / "a_file"),
        "devnull": os.devnull,
        "under-file": str(tmp_path / "a_file" / "run"),
        "long-component": str(tmp_path / ("r" * 300)),
        "long-path": str(tmp_path / "/".join(["d" * 200] * 25)),
        "proc": "/proc/nope/run",  # a file system that stores no files (root passes access() checks there)
    }[case]
    before = snapshot(tmp_path)
    _no_data_loading(monkeypatch)
    for cmd in (["train", "--out", out, *as_sets(FAST)],
                ["compare", "--estimators", "trace", "--out", out, *as_sets(FAST)]):  # fmt: skip
        assert cli.main(cmd) == 2, cmd
        one_clear_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    assert list((tmp_path / "cwd").iterdir()) == []


@pytest.mark.parametrize("name", ["../../../x", "/abs/dir", "a/b", "..", ".hidden", "a\nb", "n" * 101, "", "-x"])
def test_unsafe_names_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    _no_data_loading(monkeypatch)
    with pytest.raises(PyroVAEError, match="name"):
        fit(overrides=[*FAST, f"name={json.dumps(name)}"])
    assert cli.main(["train", "--set", f"name={json.dumps(name)}", *as_sets(FAST)]) == 2
    assert "name" in one_clear_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and not list((tmp_path / "cwd").iterdir())


def test_plain_names_land_under_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = fit(overrides=[*FAST, "name=my-run_1.v2"])
    assert res.run_dir.parent == Path("runs") and res.run_dir.name.startswith("my-run_1.v2-")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_sample_and_gradients_outside_the_run_write_only_there(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    fit(overrides=FAST, out=run)
    listed = tool_files(run)
    assert cli.main(["sample", str(run), "--num", "4", "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 0
    assert cli.main(["gradients", str(run), *GRADIENTS, "--out", str(tmp_path / "g.json")]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "g.json").is_file()
    assert tool_files(run) == listed and not (run / "gradients.json").exists()
    for bad in (str(tmp_path), "/proc/nope/x.png", str(tmp_path / "s.png" / "x.png")):
        assert cli.main(["sample", str(run), "--num", "4", "--device", "cpu", "--out", bad]) == 2
        one_clear_line(capsys.readouterr().err)


def test_sample_and_gradients_never_replace_a_file_they_did_not_write(tmp_path: Path, capsys: Any) -> None:
    """An existing --out outside the run is replaced only when it is the same command's earlier output;
    any other file (text, a JSON or PNG from elsewhere, a link) is refused with one line and left as it was."""
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    fit(overrides=FAST, out=run)
    sample = ["sample", str(run), "--num", "4", "--device", "cpu", "--out"]
    gradients = ["gradients", str(run), *GRADIENTS, "--out"]
    mine = {
        "notes.json": b"my notes\n",
        "list.json": b'[{"estimator": "trace"}]\n',  # JSON, but not gradient statistics
        "plot.png": b"",  # a PNG that matplotlib wrote for the user, without pyro-vae's mark
        "text.png": b"not an image",
    }
    for name, content in mine.items():
        (tmp_path / name).write_bytes(content)
    fig = plt.figure()
    fig.savefig(tmp_path / "plot.png")
    plt.close(fig)
    (tmp_path / "link.png").symlink_to(tmp_path / "plot.png")
    before = snapshot(tmp_path)
    for args in ([*gradients, str(tmp_path / "notes.json")], [*gradients, str(tmp_path / "list.json")],
                 [*sample, str(tmp_path / "plot.png")], [*sample, str(tmp_path / "text.png")],
                 [*sample, str(tmp_path / "link.png")]):  # fmt: skip
        assert cli.main(args) == 2, args
        assert "never overwritten" in one_clear_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    # the command's own earlier output is replaced: running it twice works
    for args in ([*gradients, str(tmp_path / "g.json")], [*sample, str(tmp_path / "s.png")]):
        assert cli.main(args) == 0 and cli.main(args) == 0, args
    stats = json.loads((tmp_path / "g.json").read_text())
    assert stats and all("snr" in r and "checkpoint" in r for r in stats)


def test_manifest_paths_are_relative_so_a_run_can_move(tmp_path: Path) -> None:
    fit(overrides=[*FAST, "train.figures=true"], out=tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    m = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert all(not Path(f).is_absolute() and ".." not in Path(f).parts for f in m["files"])
    fit(overrides=FAST, out=tmp_path / "b", force=True)
    assert not (tmp_path / "b" / "figures").exists()


def test_a_forged_manifest_cannot_reach_outside(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=FAST, out=out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    m = json.loads((out / MANIFEST).read_text())
    m["files"].append("../victim.txt")
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(RunError, match="manifest|relative"):
        fit(overrides=FAST, out=out, force=True)
    assert victim.read_text() == "keep"


def test_force_does_not_follow_a_folder_replaced_by_a_link(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(overrides=[*FAST, "train.figures=true"], out=out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "loss.png").write_bytes(b"not the run's")
    shutil.rmtree(out / "figures")
    (out / "figures").symlink_to(elsewhere, target_is_directory=True)
    fit(overrides=FAST, out=out, force=True)
    assert (elsewhere / "loss.png").read_bytes() == b"not the run's"


def test_a_run_made_before_manifests_is_adopted_by_resume_and_force(tmp_path: Path, capsys: Any) -> None:
    """A run directory written by a version without manifests (config.yaml + a pyro-vae checkpoint,
    no manifest) resumes; --force later removes its run files but never the user's."""
    run = tmp_path / "run"
    assert run_cli(command("train", run), capsys) == 0
    (run / MANIFEST).unlink()  # what such a version left behind
    (run / "notes.txt").write_text("mine")
    assert run_cli(command("resume", run), capsys) == 0
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl"} <= tool_files(run)
    assert "notes.txt" not in tool_files(run)
    assert run_cli(command("force", run), capsys) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_a_namesake_config_and_checkpoint_are_not_adopted(tmp_path: Path, capsys: Any) -> None:
    """config.yaml and checkpoint.pt that pyro-vae did not write make no run: refused, untouched."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a: 1\n")
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = snapshot(run)
    assert run_cli(command("resume", run), capsys) == 2
    assert run_cli(command("force", run), capsys) == 2
    assert snapshot(run) == before
