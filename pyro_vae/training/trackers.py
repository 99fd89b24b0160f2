"""Experiment trackers: TensorBoard event files and an MLflow store, next to the run directory's own files.

``train.log_to: [tensorboard, mlflow]`` sends, from rank 0:

- every optimization step's training objective (``train_objective``, the estimator's loss per data
  point at the scheduled KL weight: the quantity ``metrics.jsonl`` averages per epoch), at the global
  step number;
- every epoch's record (the numbers of ``metrics.jsonl`` under the same names, at the epoch number);
- the final summary (``summary/<key>``), the figures (``figures/*.png``) and the resolved spec.

TensorBoard writes event files to ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUN_DIR``); they are
recorded in the run directory's manifest, so ``--force`` removes them. MLflow logs one run to
``train.mlflow_uri`` (default: a local file store, ``file:RUN_DIR/mlruns``, no server; ``mlflow ui
--backend-store-uri RUN_DIR/mlruns``), in an experiment named after the spec, with the spec flattened
into parameters, ``config.yaml`` and the figures as artifacts. MLflow 3 keeps its file store in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; for a ``file:`` URI it is set for this process
(unless already set). A resumed run continues the same MLflow run (found by its run-directory tag) and
TensorBoard hides the steps logged after the checkpoint it resumes from (``purge_step``).

Both libraries are optional extras: ``pip install "pyro-vae[tensorboard]"`` / ``"pyro-vae[mlflow]"``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from .. import _internals
from ..errors import PyroVAEError, RunError, SpecError

#: The trackers ``train.log_to`` accepts, with the Python module each needs and the extra that installs it.
TRACKERS: dict[str, tuple[str, str]] = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
#: MLflow tag holding the run directory (absolute): how a resumed run finds its MLflow run again.
RUN_DIR_TAG = "pyro_vae.run_dir"


@dataclass(frozen=True)
class Tracking:
    """Where a run is filed in the trackers: MLflow experiment (default: the spec's ``name``) and tags."""

    experiment: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def check_available(names: Iterable[str]) -> None:
    """Raise a one-line :class:`SpecError` naming the ``pip install`` for a tracker that is not installed."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise SpecError(
                f"train.log_to: {name} needs the {module} package, which is not installed; "
                f'pip install "pyro-vae[{extra}]"'
            )


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"latent_dim": 2}}`` -> ``{"model.latent_dim": "2"}`` (lists as YAML flow text)."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = (
                v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
            )
    return out


def _numbers(record: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _record_written(root: Path, files: Iterable[Path]) -> None:
    """Name files (and folders) a tracker library created, with names it chose, in the run directory's manifest."""
    from ..rundir.lock import RunDir

    rd = RunDir(root)
    if rd.is_run():
        rd.record_existing(files)


class _TensorBoard:
    def __init__(self, root: Path, cfg: Mapping[str, Any], first_step: int, tags: Mapping[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.root, self.logdir = root, root / "tensorboard"
        # purge_step: events at or after it from an interrupted earlier process are hidden on resume
        self.writer = SummaryWriter(str(self.logdir), purge_step=first_step or None)
        _record_written(root, [Path(_internals.tensorboard_event_file(self.writer))])
        text = "\n".join("    " + line for line in yaml.safe_dump(dict(cfg), sort_keys=False).splitlines())
        self.writer.add_text("config", text, first_step)
        if tags:
            self.writer.add_text("tags", "\n\n".join(f"{k}: {v}" for k, v in tags.items()), first_step)

    def steps(self, values: list[tuple[int, float]]) -> None:
        for step, v in values:
            self.writer.add_scalar("step/train_objective", v, step)

    def epoch(self, record: Mapping[str, Any]) -> None:
        for k, v in _numbers(record, ("epoch", "train_loss")).items():
            self.writer.add_scalar(f"epoch/{k}", v, int(record["epoch"]))
        self.writer.flush()

    def summary(self, summary: Mapping[str, Any], step: int) -> None:
        for k, v in _numbers(summary).items():
            self.writer.add_scalar(f"summary/{k}", v, step)

    def figures(self, folder: Path, step: int) -> None:
        import matplotlib.image

        for png in sorted(folder.glob("*.png")):
            img = matplotlib.image.imread(str(png))  # (H, W, 3|4) floats in [0, 1]
            self.writer.add_image(f"figures/{png.stem}", img[..., :3], step, dataformats="HWC")

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, root: Path, cfg: Mapping[str, Any], uri: str | None, tracking: Tracking) -> None:
        if uri is None:
            uri = (root.resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.store = Path(unquote(urlparse(uri).path))
        self.local = uri.startswith("file:")
        self.root = root
        if self.local and not (self.store / ".trash").is_dir():  # new, or removed by --force since MLflow
            from mlflow.store.tracking.file_store import FileStore  # cached its store for this URI: lay it out

            FileStore(uri)
        self.client = MlflowClient(tracking_uri=uri)
        name = tracking.experiment or str(cfg["name"])
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(name)
            except Exception:  # another job created it first (MlflowException)
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        run_dir = str(root.resolve())
        found = [
            r for r in self.client.search_runs([exp_id], max_results=1000) if r.data.tags.get(RUN_DIR_TAG) == run_dir
        ]
        tags = {RUN_DIR_TAG: run_dir, "estimator": str(cfg["elbo"]["kind"]), **tracking.tags}
        if found:  # a resumed run: continue its MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)
        else:
            self.run_id = self.client.create_run(exp_id, run_name=str(cfg["name"]), tags=tags).info.run_id
            from mlflow.entities import Param

            params = [Param(k, v if len(v) <= 6000 else v[:5997] + "...") for k, v in flatten(cfg).items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, dict(cfg), "config.yaml")
        self._record()

    def _log(self, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def steps(self, values: list[tuple[int, float]]) -> None:
        now = int(time.time() * 1000)
        self._log([self.Metric("step_train_objective", v, now, step) for step, v in values])

    def epoch(self, record: Mapping[str, Any]) -> None:
        now = int(time.time() * 1000)
        epoch = int(record["epoch"])
        self._log([self.Metric(k, v, now, epoch) for k, v in _numbers(record, ("epoch", "train_loss")).items()])

    def summary(self, summary: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        self._log([self.Metric(f"summary/{k}", v, now, step) for k, v in _numbers(summary).items()])

    def figures(self, folder: Path, step: int) -> None:
        if any(folder.glob("*.png")):
            self.client.log_artifacts(self.run_id, str(folder), "figures")

    def _record(self) -> None:
        """A local store's files go into the manifest of the run directory holding it, or of the tool's
        directory right above it (a comparison's ``OUT/mlruns``), so ``--force`` removes them."""
        if not (self.local and self.store.is_dir()):
            return
        store, root = self.store.resolve(), self.root.resolve()
        owner = root if store.is_relative_to(root) else store.parent
        _record_written(owner, self.store.rglob("*"))  # files and folders (an empty .trash too)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
        self._record()


def _close_all(backends: list[Any], status: str) -> None:
    for b in backends:
        b.close(status)
    backends.clear()


class Trackers:
    """The trackers of one run (none when ``train.log_to`` is empty or off rank 0).

    Step values are buffered and sent at each epoch end (and on :meth:`close`), so a step costs a
    float conversion, not a file write. Trackers that were never closed (training raised) are closed
    as ``FAILED`` when the object is collected or the process exits.
    """

    def __init__(self, backends: list[Any]) -> None:
        self.backends = backends
        self._steps: list[tuple[int, float]] = []
        self._finalize = weakref.finalize(self, _close_all, backends, "FAILED")

    @property
    def active(self) -> bool:
        return bool(self.backends)

    def step(self, step: int, objective: float) -> None:
        if self.backends:
            self._steps.append((step, objective))

    def _flush(self) -> None:
        if self._steps:
            for b in self.backends:
                b.steps(self._steps)
            self._steps = []

    def epoch(self, record: Mapping[str, Any]) -> None:
        self._flush()
        for b in self.backends:
            b.epoch(record)

    def finish(self, summary: Mapping[str, Any], figures: Path | None, epochs: int) -> None:
        """The final summary and the figures (at the last epoch), then close."""
        self._flush()
        for b in self.backends:
            b.summary(summary, epochs)
            if figures is not None and figures.is_dir():
                b.figures(figures, epochs)
        self.close()

    def close(self, status: str = "FINISHED") -> None:
        """Send what is buffered and end every tracker's run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._flush()
        self._finalize.detach()
        _close_all(self.backends, status)


def open_trackers(
    names: Iterable[str],
    root: Path,
    cfg: Mapping[str, Any],
    *,
    mlflow_uri: str | None = None,
    first_step: int = 0,
    tracking: Tracking | None = None,
) -> Trackers:
    """Open the trackers ``names`` for the run in ``root`` (``first_step``: the next global step)."""
    names = list(names)
    check_available(names)
    tracking = tracking or Tracking()
    backends: list[Any] = []
    try:
        if "tensorboard" in names:
            backends.append(_TensorBoard(root, cfg, first_step, tracking.tags))
        if "mlflow" in names:
            backends.append(_MLflow(root, cfg, mlflow_uri, tracking))
    except PyroVAEError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreachable or unsupported store, an unwritable folder: one line
        Trackers(backends).close("FAILED")
        where = (
            f"train.mlflow_uri {mlflow_uri!r}" if backends or "tensorboard" not in names else str(root / "tensorboard")
        )
        first = " ".join(str(e).split())[:300]
        raise RunError(f"cannot open the experiment tracker at {where}: {type(e).__name__}: {first}") from None
    return Trackers(backends)


__all__ = ["RUN_DIR_TAG", "TRACKERS", "Trackers", "Tracking", "check_available", "flatten", "open_trackers"]
