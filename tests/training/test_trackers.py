"""Experiment trackers: what train.log_to writes, read back from TensorBoard event files and the MLflow store."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyro_vae.cli import main
from pyro_vae.compare import CompareOptions, compare, plan, run_job
from pyro_vae.errors import SpecError
from pyro_vae.training import fit, trackers

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_tb = pytest.mark.skipif(not HAS_TB, reason='TensorBoard not installed: pip install "pyro-vae[tensorboard]"')
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason='MLflow not installed: pip install "pyro-vae[mlflow]"')

#: 128 points -> 115 train: batches of 32 (32, 32, 32, 19): 4 steps per epoch, the last one ragged.
RUN = [
    "train.epochs=2",
    "train.batch_size=32",
    "train.progress=false",
    "train.eval_particles=2",
    "data.limit=128",
    "model.latent_dim=2",
    "model.network.hidden=[16]",
]
STEPS = 4
SIZES = [32, 32, 32, 19]


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _epoch_means(step_values: list[float]) -> list[float]:
    """The per-epoch train_objective from the per-step values: a mean weighted by batch size."""
    out = []
    for e in range(len(step_values) // STEPS):
        vals = step_values[e * STEPS : (e + 1) * STEPS]
        out.append(sum(v * n for v, n in zip(vals, SIZES)) / sum(SIZES))
    return out


@needs_tb
def test_tensorboard_event_files_hold_steps_epochs_figures_and_config(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    fit(overrides=[*RUN, "train.log_to=[tensorboard]"], out=run)
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    steps = acc.Scalars("step/train_objective")
    assert [s.step for s in steps] == list(range(2 * STEPS))
    metrics = _metrics(run)
    # the per-step values average (by batch size) to the epoch's train_objective in metrics.jsonl
    assert _epoch_means([s.value for s in steps]) == pytest.approx([m["train_objective"] for m in metrics], rel=1e-5)
    for key in ("train_objective", "test_elbo", "test_kl", "valid_elbo"):
        got = acc.Scalars(f"epoch/{key}")
        assert [s.step for s in got] == [1, 2]
        assert [s.value for s in got] == pytest.approx([m[key] for m in metrics], rel=1e-6), key
    summary = json.loads((run / "summary.json").read_text())
    assert acc.Scalars("summary/test_elbo")[0].value == pytest.approx(summary["test_elbo"], rel=1e-6)
    images = set(acc.Tags()["images"])
    assert {f"figures/{p.stem}" for p in (run / "figures").glob("*.png")} == images and "figures/loss" in images
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load("\n".join(line[4:] for line in config.splitlines())) == yaml.safe_load(
        (run / "config.yaml").read_text()
    )
    # the event file is the run's: --force removes it with the rest
    fit(overrides=[*RUN, "train.epochs=1"], out=run, force=True)
    assert not (run / "tensorboard").exists()


def _client(store: Path) -> Any:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.resolve().as_uri())


@needs_mlflow
def test_mlflow_file_store_holds_the_run_and_a_resume_continues_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(overrides=[*RUN, "train.epochs=1", "train.log_to=[mlflow]"], out=run)
    fit(overrides=["train.epochs=2"], out=run, resume=True)  # the same MLflow run continues
    client = _client(run / "mlruns")
    exp = client.get_experiment_by_name("digits-vae")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.data.tags["estimator"] == "trace" and r.data.tags[trackers.RUN_DIR_TAG] == str(run.resolve())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert r.data.params["model.latent_dim"] == "2" and r.data.params["data.name"] == "digits"
    assert r.data.params == {k: v for k, v in trackers.flatten({**cfg, "train": {**cfg["train"], "epochs": 1}}).items()}
    metrics = _metrics(run)
    for key in ("train_objective", "test_elbo", "valid_elbo", "test_reconstruction"):
        hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in hist] == [(m["epoch"], m[key]) for m in metrics], key
    steps = sorted(client.get_metric_history(r.info.run_id, "step_train_objective"), key=lambda m: m.step)
    assert [m.step for m in steps] == list(range(2 * STEPS))  # each step once across the resume
    assert _epoch_means([m.value for m in steps]) == pytest.approx([m["train_objective"] for m in metrics], rel=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert r.data.metrics["summary/test_log_likelihood"] == pytest.approx(summary["test_log_likelihood"])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    figures = {a.path for a in client.list_artifacts(r.info.run_id, "figures")}
    assert "config.yaml" in artifacts and "figures/loss.png" in figures
    local = Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(local.read_text()) == cfg


@needs_mlflow
def test_compare_logs_one_mlflow_run_per_job_tagged_with_its_estimator(tmp_path: Path) -> None:
    tiny = [*RUN, "train.epochs=1", "train.figures=false", "train.log_to=[mlflow]"]
    jobs = plan(None, ["trace", "iwae:num_particles=2"], out=tmp_path, overrides=tiny)
    for job in jobs:
        run_job(job, CompareOptions(eval_particles=2, eval_points=10, curve_particles=0, snr_particles=()))
    client = _client(tmp_path / "mlruns")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert exp.name == "digits-vae"
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["estimator"] for r in runs) == ["iwae:num_particles=2", "trace"]
    by_label = {r.data.tags["estimator"]: r for r in runs}
    for job in jobs:
        r = by_label[job.label]
        assert r.data.params["elbo.kind"] == job.config["elbo"]["kind"] and r.data.tags["seed"] == "0"
        assert r.data.metrics["test_elbo"] == _metrics(Path(job.run_dir))[-1]["test_elbo"]


@needs_mlflow
@pytest.mark.slow
def test_compare_force_removes_the_earlier_comparisons_mlflow_runs(tmp_path: Path) -> None:
    tiny = [*RUN, "train.epochs=1", "train.figures=false", "train.log_to=[mlflow]"]
    opts = CompareOptions(eval_particles=2, eval_points=10, curve_particles=0, snr_particles=())
    out = tmp_path / "cmp"
    for force in (False, True):
        compare(None, ["trace", "iwae:num_particles=2"], out=out, overrides=tiny, options=opts, force=force)
    manifest = json.loads((out / ".pyro-vae-manifest.json").read_text())
    assert any(f.startswith("mlruns/") and f.endswith("/meta.yaml") for f in manifest["files"])
    client = _client(out / "mlruns")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(client.search_runs([exp.experiment_id])) == 2  # not 4


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_one_line_naming_the_pip_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tracker: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(SpecError, match=rf'pip install "pyro-vae\[{tracker}\]"'):
        fit(overrides=[*RUN, f"train.log_to=[{tracker}]"], out=tmp_path / "a")
    assert main(["train", "--out", str(tmp_path / "b"), "--set", f"train.log_to=[{tracker}]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f'pip install "pyro-vae[{tracker}]"' in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


def test_flatten_names_every_leaf_by_its_spec_path() -> None:
    flat = trackers.flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None, "f": "x"}}, "g": math.pi})
    assert flat == {"a": "1", "b.c": "[1, 2]", "b.d.e": "null", "b.d.f": "x", "g": repr(math.pi)}


@needs_mlflow
def test_an_unusable_mlflow_uri_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--out", str(tmp_path / "r"), "--set", "train.log_to=[mlflow]", "--set", "train.mlflow_uri=bogus://x",
            "--set", "train.epochs=1", "--set", "data.limit=64", "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open the experiment tracker at train.mlflow_uri 'bogus://x'" in err


class _Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def steps(self, values: list[tuple[int, float]]) -> None:
        self.calls.append(("steps", list(values)))

    def epoch(self, record: Any) -> None:
        self.calls.append(("epoch", record["epoch"]))

    def close(self, status: str = "FINISHED") -> None:
        self.calls.append(("close", status))


def test_steps_are_sent_at_epoch_end_and_an_unclosed_run_ends_failed() -> None:
    import gc

    b = _Backend()
    t = trackers.Trackers([b])
    t.step(0, 1.0)
    t.step(1, 2.0)
    assert b.calls == []
    t.epoch({"epoch": 1})
    assert b.calls == [("steps", [(0, 1.0), (1, 2.0)]), ("epoch", 1)]
    t.step(2, 3.0)
    del t  # training raised: nobody closed it
    gc.collect()
    assert b.calls[-1] == ("close", "FAILED")
    done = _Backend()
    t2 = trackers.Trackers([done])
    t2.step(0, 1.0)
    t2.close("KILLED")  # an interrupt: the buffered step is sent, the run ends once
    del t2
    gc.collect()
    assert done.calls == [("steps", [(0, 1.0)]), ("close", "KILLED")]
