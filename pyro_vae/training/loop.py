"""The SVI loop: ``fit`` trains a run directory's model epoch by epoch over a :class:`TrainState`.

``fit`` reads as the run's outline: resolve the spec and the run directory, build data, model and
loss, restore the state from the checkpoint on ``--resume``, then one loop over epochs (train the
epoch's steps, evaluate, guard against non-finite or diverging numbers, checkpoint) and the final
evaluation. Everything else is a named function below it; the state and its one save/restore are in
pyro_vae/training/state.py, the step in pyro_vae/training/step.py, what is measured in
pyro_vae/training/metrics.py. Batches come from the training split in memory or streamed through a
DataLoader (pyro_vae/data/streaming.py); progress (progress.py) and experiment trackers
(trackers.py) report it; a SIGINT/SIGTERM stops it after the current step with a checkpoint
(signals.py); under ``torchrun`` every rank runs it and rank 0 alone writes (distributed.py).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from .. import data as data_mod
from .. import spec as spec_mod
from ..data import Dataset, streaming
from ..errors import DataError, RunError, SpecError
from ..estimators.fast import accelerate
from ..evaluation import resources
from ..evaluation.evaluate import ROW_BUDGET, measure_of
from ..models.vae import VAE, build_model
from ..registry import REGISTRY
from ..rundir import (
    RESUMABLE_DATA,
    RESUMABLE_TRAIN,
    RunPaths,
    check_data_agrees,
    checkpoint,
    data_fingerprint,
    pin_data_paths,
    read_metrics,
    resolve_device,
    trained_config,
)
from ..rundir import lock as runlock
from . import distributed as dist_mod  # torchrun: sharding, all-reduce, rank-0 I/O (no-op in one process)
from . import nonfinite, progress, signals, trackers
from . import step as step_mod  # one optimization step with the NaN/inf guard
from .metrics import TRAIN_ELBO_ROWS, curve_eval, epoch_eval, final_summary
from .schedules import kl_factor, lr_factor
from .state import TrainState

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "sgd": torch.optim.SGD,
}
#: Longest final evaluation (summary.json's L_K) a spec may ask for, from a timed probe before training.
FINAL_EVAL_HOURS = 1.0
#: Consecutive non-finite steps tolerated before training stops (default of train.max_bad_steps).
MAX_BAD_STEPS = 20
#: Training steps between host reads of the steps' skip flags and losses on an accelerator.
HOST_READ_STEPS = 20


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns: the trained pair, where it lives and what it measured."""

    vae: VAE
    data: Dataset
    config: dict[str, Any]
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


NonFiniteLoss = nonfinite.NonFiniteLoss  # too many NaN/inf steps in a row, or a NaN/inf held-out ELBO


@dataclass
class _Run:
    """The fixed pieces of one training run: what the loop reads and never replaces."""

    cfg: dict[str, Any]
    tcfg: spec_mod.TrainConfig
    paths: RunPaths
    dctx: dist_mod.Context
    device: torch.device
    data: Dataset
    loss_fn: Any  # the estimator module elbo(vae.model, vae.guide), wrapped for NaN/inf and ranks
    params: list[torch.nn.Parameter]
    fingerprint: str  # of the data, stored in each checkpoint: later loads score the same data
    stop: signals.Stop = field(default_factory=signals.current)  # set by SIGINT/SIGTERM
    source: Any = None  # the training split's batches, in memory or streamed
    bar: Any = None  # progress.Progress
    track: trackers.Trackers = field(default_factory=lambda: trackers.Trackers([]))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.x_train) / self.tcfg.batch_size)


@runlock.releases_locks  # the run directory's lock is held until fit returns or raises
@signals.handle_signals
def fit(
    spec: Any = None,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    callbacks: Mapping[str, list[Callable[..., None]]] | None = None,
    tracking: trackers.Tracking | None = None,
) -> FitResult:
    """Train a VAE described by ``spec`` (a YAML path, a spec dict, or None for the default).

    Writes the run directory (config.yaml, metrics.jsonl, checkpoint.pt, best.pt, summary.json,
    figures/). ``resume=True`` continues ``out`` from its checkpoint; only ``train.epochs`` and display
    settings may change. Callbacks: ``{"on_epoch_end": [fn(record, vae)]}``. ``tracking``: the MLflow
    experiment and tags of this run when ``train.log_to`` names trackers (pyro_vae/training/trackers.py).
    """
    hooks: defaultdict[str, list[Callable[..., None]]] = defaultdict(list, callbacks or {})
    dctx = dist_mod.context()  # rank/world size under torchrun; one process otherwise
    cfg, paths = _configure(spec, overrides, out, resume, dctx)
    tcfg = spec_mod.train_config(cfg)
    trackers.check_available(tcfg.log_to)  # a missing optional extra: one line, before any work
    device = dctx.device(resolve_device(tcfg.device))
    pyro.set_rng_seed(cfg["seed"])
    ds = data_mod.load(cfg["data"], device)
    vae = _build_model(cfg, tcfg, ds, device, dctx)
    loss_fn = _build_loss(cfg, tcfg, vae)
    params = list(vae.parameters())
    state = TrainState(vae, make_optimizer(params, tcfg), torch.Generator().manual_seed(cfg["seed"]))
    dctx.broadcast_module(vae)
    run = _Run(cfg, tcfg, paths, dctx, device, ds, loss_fn, params, dctx.on_main(data_fingerprint, ds))
    _open_run_dir(run, state, resume, force)  # lock, restore the checkpoint, config.yaml and metrics.jsonl
    dctx.seed_rank(cfg["seed"], state.epoch)
    run.loss_fn = dctx.wrap_loss(nonfinite.InvalidAsNaN(loss_fn), vae)  # step noise; under torchrun synced
    _open_reporting(run, state, tracking)  # batch source, progress bar, trackers

    vae.train()
    for epoch in range(state.epoch + 1, tcfg.epochs + 1):
        _train_epoch(run, state, epoch)
        if run.stop.requested:  # SIGINT/SIGTERM: save exactly this step, then exit 130/143
            _save(run, state)
            run.bar.close()
            run.track.close("KILLED")
            raise signals.Interrupted(run.stop.signum or 0, paths.root)
        record = _end_epoch(run, state, epoch)  # evaluation, guards, checkpoint.pt, best.pt, metrics.jsonl
        try:
            for fn in hooks["on_epoch_end"]:
                fn(record, vae)
        except BaseException:
            run.track.close("KILLED")
            raise
    run.bar.close()
    run.source.close()
    if not dctx.on_main(paths.checkpoint.is_file):  # epochs: 0 still leaves a loadable run
        _save(run, state)
    if run.stop.requested:  # a signal after the last epoch's checkpoint: resume only writes the summary
        run.track.close("KILLED")
        raise signals.Interrupted(run.stop.signum or 0, paths.root)
    summary = _finish(run, state)  # summary.json and figures; a signal now stops at once
    return FitResult(vae, ds, cfg, paths.root, state.history, summary)


def make_optimizer(params: Any, cfg: spec_mod.TrainConfig) -> torch.optim.Optimizer:
    """The torch optimizer ``train.optimizer`` names, with ``train.lr``, weight decay, momentum or eps."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        kwargs["momentum"] = cfg.momentum
    else:
        kwargs["eps"] = cfg.eps
    params = list(params)
    kwargs.update(step_mod.optimizer_options(_OPTIMIZERS[cfg.optimizer], params))  # fused update where available
    return _OPTIMIZERS[cfg.optimizer](params, **kwargs)


# --------------------------------------------------------------------------- before the first step


def _configure(
    spec: Any, overrides: tuple[str, ...] | list[str], out: str | Path | None, resume: bool, dctx: dist_mod.Context
) -> tuple[dict[str, Any], RunPaths]:
    """The resolved spec and the run directory. On resume the directory is locked first and the spec
    is the checkpoint's (never a hand-edited config.yaml), changed only where :data:`~pyro_vae.rundir.RESUMABLE_TRAIN` allows."""
    if not resume:
        cfg = dctx.on_main(_resolve_spec, spec, overrides)
        paths = RunPaths(Path(out) if out is not None else default_run_dir(cfg["name"]))
        dctx.on_main(runlock.check_out_dir, paths.root if out is None else out)  # a file, a device, '' or too long
        return cfg, paths
    if out is None:
        raise RunError("--resume needs --out RUN_DIR")
    dctx.on_main(runlock.check_out_dir, out)
    dctx.on_main(_prepare_dir, RunPaths(Path(out)), True, False)  # locked before anything is read
    saved = dctx.on_main(trained_config, out)
    cfg = spec_mod.resolve(spec_mod.apply_overrides(saved, list(overrides)))
    changed = [k for k in cfg if k not in ("train", "data") and cfg[k] != saved[k]]
    changed += [f"data.{k}" for k in {**saved["data"], **cfg["data"]}
                if k not in RESUMABLE_DATA and cfg["data"].get(k) != saved["data"].get(k)]  # fmt: skip
    changed += [f"train.{k}" for k in cfg["train"] if k not in RESUMABLE_TRAIN and cfg["train"][k] != saved["train"][k]]
    if changed:
        raise SpecError(f"{changed[0]}: cannot change when resuming (only train.{', train.'.join(RESUMABLE_TRAIN)})")
    return cfg, RunPaths(Path(out))


def _resolve_spec(spec: Any, overrides: tuple[str, ...] | list[str]) -> dict[str, Any]:
    if spec is None or isinstance(spec, (str, Path)):
        cfg = spec_mod.from_args(None if spec is None else str(spec), list(overrides))
    else:
        cfg = spec_mod.resolve(spec_mod.apply_overrides(dict(spec), list(overrides)))
    return pin_data_paths(cfg)  # absolute data paths: the run scores the same data from any directory


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{spec_mod.check_run_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _build_model(
    cfg: dict[str, Any], tcfg: spec_mod.TrainConfig, ds: Dataset, device: torch.device, dctx: dist_mod.Context
) -> VAE:
    """The model of the spec on ``device``, once the data, memory and final evaluation's duration allow it."""
    # model, batch and particles that cannot fit in memory: one line with the estimate (evaluation/resources.py)
    resources.check_training_fits(cfg, ds.event_shape, ds.num_classes, device, eval_rows=ROW_BUDGET)
    vae = build_model(cfg, ds.event_shape, ds.num_classes).to(device)
    check_data(vae, ds)
    if dctx.is_main and len(ds.x_test) * tcfg.eval_particles > resources.PROBE_ABOVE_ROWS:  # hours at the end?
        seconds, how = resources.estimate_eval_seconds(vae, ds.x_test, ds.y_test, tcfg.eval_particles, len(ds.x_test))
        resources.check_duration(
            seconds,
            FINAL_EVAL_HOURS,
            f"the final evaluation (train.eval_particles: {tcfg.eval_particles})",
            how,
            "lower train.eval_particles; `pyro-vae evaluate RUN_DIR --particles K --max-hours H` scores the run later",
        )
    if tcfg.progress and dctx.is_main:  # how many points went to each split, before any training
        print(ds.describe(), flush=True)
        if ds.stream:
            print(f"data: the training split streams through a DataLoader ({ds.stream_reason})", flush=True)
    return vae


def _build_loss(cfg: dict[str, Any], tcfg: spec_mod.TrainConfig, vae: VAE) -> Any:
    """The estimator module ``elbo(vae.model, vae.guide)``, trace-free and compiled where the spec says."""
    vae.set_kl_weight(cfg["elbo"]["beta"])
    loss_fn = REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide)
    if tcfg.fast_path:  # same loss without Pyro's per-step tracing where supported (pyro_vae/estimators/fast.py)
        loss_fn = accelerate(loss_fn)
    if tcfg.compile:  # train.compile: off by default (measured in benchmarks/README.md)
        loss_fn = torch.compile(loss_fn)
    return loss_fn


def _open_run_dir(run: _Run, state: TrainState, resume: bool, force: bool) -> None:
    """Lock the run directory (a fresh run) and check its files can be written; on resume restore the
    state from checkpoint.pt, repair best.pt and metrics.jsonl; write config.yaml."""
    dctx, paths = run.dctx, run.paths
    if not resume:
        dctx.on_main(_prepare_dir, paths, resume, force)
    dctx.on_main(_check_outputs, paths, run.tcfg.figures)  # a folder where a file goes (or the reverse)
    if resume and dctx.on_main(paths.checkpoint.is_file):
        saved = dctx.on_main(
            checkpoint.load, paths.checkpoint, map_location="cpu" if dctx.is_distributed else run.device
        )
        dctx.on_main(check_data_agrees, saved, run.data, run.cfg, paths)
        state.restore(saved, f"checkpoint {str(paths.checkpoint)!r}")
    if not dctx.is_main:
        return
    if resume and state.history:
        _sync_best(paths, state.history)
    checkpoint.atomic_write_text(paths.config, spec_mod.to_yaml(run.cfg))
    if resume:  # a kill between the checkpoint and metrics.jsonl leaves the latter one epoch behind
        checkpoint.atomic_write_text(paths.metrics, _jsonl(state.history))


def _open_reporting(run: _Run, state: TrainState, tracking: trackers.Tracking | None) -> None:
    """The batch source, the progress bar (tqdm on a terminal, lines in a log) and the trackers (rank 0)."""
    cfg, tcfg, ds = run.cfg, run.tcfg, run.data
    run.source = _train_batches(ds, cfg, tcfg, run.dctx, run.device)  # in memory, or streamed through a DataLoader
    run.bar = progress.Progress(
        total=run.steps_per_epoch * max(tcfg.epochs - state.epoch, 0),
        desc=cfg["name"],
        epochs=tcfg.epochs,
        steps_per_epoch=run.steps_per_epoch,
        start_epoch=state.epoch,
        enabled=tcfg.progress and run.dctx.is_main,
        interval=tcfg.progress_seconds,
        names=measure_of(state.vae, ds.x_test).display_key,  # a cross-entropy bound is not shown as an ELBO
    )
    if tcfg.log_to and run.dctx.is_main:  # TensorBoard / MLflow from rank 0
        run.track = trackers.open_trackers(tcfg.log_to, run.paths.root, cfg, mlflow_uri=tcfg.mlflow_uri,
                                           first_step=state.global_step(run.steps_per_epoch), tracking=tracking)  # fmt: skip


# --------------------------------------------------------------------------- an epoch


def _train_epoch(run: _Run, state: TrainState, epoch: int) -> None:
    """The steps of ``epoch`` from where it stands (a resumed epoch skips the steps taken), until the
    epoch ends or a signal stops it; ``state.progress`` then holds its steps and sums."""
    tcfg, cfg, stop = run.tcfg, run.cfg, run.stop
    pos = state.begin_epoch(epoch, run.device)
    done = pos.steps
    if done:
        run.bar.update(done)
    for group in state.optimizer.param_groups:  # train.lr_schedule: a function of the epoch (schedules.py)
        group["lr"] = tcfg.lr * lr_factor(tcfg.lr_schedule, epoch)
    book = _StepBook(run, state)
    batches = run.source.epoch(state.data_rng, skip=done)  # this rank's rows of each global batch
    kl_step = (epoch - 1) * run.steps_per_epoch + done  # global step for train.kl_schedule
    for step, batch in enumerate(stop.batches(state.data_rng, batches, skip=done), start=done):
        assert batch is not None  # only the skipped positions of a resumed epoch are None
        noise = run.dctx.noise(cfg["seed"], epoch, step, batch.size)  # per global row: world-size invariant draws
        x = data_mod.as_float(batch.x)  # 8-bit pixels are stored as uint8: x / 255 here, one batch at a time
        if run.data.binarize == "dynamic":
            x = noise.bernoulli(x)
        if tcfg.kl_schedule != "constant":  # beta times the schedule's factor (schedules.py)
            factor = kl_factor(tcfg.kl_schedule, kl_step, tcfg.kl_steps, tcfg.kl_ramp)
            state.vae.set_kl_weight(cfg["elbo"]["beta"] * factor)
            kl_step += 1
        # zero_grad, backward, optimizer.step() unless the loss or a gradient is NaN/inf
        loss, stepped = step_mod.train_step(
            run.loss_fn, state.optimizer, run.params, x, state.vae.cond(batch.y), batch.size
        )
        book.add((epoch - 1) * run.steps_per_epoch + step, loss, stepped, batch.size)
        run.bar.update(1)
        refresh = run.bar.n % 20 == 0 and tcfg.progress
        if refresh or len(book.pending) >= book.read_every:
            book.settle(epoch)
        if refresh:
            run.bar.set_postfix(epoch=epoch, objective=f"{float(pos.total) / max(pos.count, 1):.3f}", refresh=False)
    book.settle(epoch)
    pos.steps, pos.data_state = stop.steps, stop.data_state


class _StepBook:
    """Steps whose skip flag and loss the host has not read yet.

    The step decides on the device whether it updated the parameters; the host books the flags in
    step order once every ``read_every`` steps, at a progress refresh and at the epoch's end: on a GPU
    a read per step would wait for each step. On the CPU a read costs nothing: every step is booked at once.
    """

    def __init__(self, run: _Run, state: TrainState) -> None:
        self.run, self.state = run, state
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (global step, loss, stepped, rows)
        self.read_every = 1 if run.device.type == "cpu" else HOST_READ_STEPS

    def add(self, step: int, loss: torch.Tensor, stepped: torch.Tensor, rows: int) -> None:
        self.pending.append((step, loss, stepped, rows))

    def settle(self, epoch: int) -> None:
        """Book the pending steps with one host read: the objective's sums, the skip counters
        (``train.max_bad_steps`` in a row stop the run) and the trackers' per-step values."""
        if not self.pending:
            return
        run, state, pos = self.run, self.state, self.state.progress
        assert pos is not None
        flags = torch.stack([s for _, _, s, _ in self.pending]).tolist()
        losses = torch.stack([loss for _, loss, _, _ in self.pending]).tolist() if run.track.active else None
        booked, self.pending = self.pending, []
        for i, ((step, loss, _, rows), ok) in enumerate(zip(booked, flags, strict=True)):
            if not ok:
                state.bad_in_row += 1
                state.skipped += 1
                if state.bad_in_row >= run.tcfg.max_bad_steps:
                    run.bar.close()
                    run.track.close("FAILED")
                    raise nonfinite.too_many_bad_steps(state.bad_in_row, epoch, run.cfg, run.paths.checkpoint)
                continue
            state.bad_in_row = 0
            pos.total += loss * rows
            pos.count += rows
            if losses is not None:
                run.track.step(step, losses[i])


def _end_epoch(run: _Run, state: TrainState, epoch: int) -> dict[str, Any]:
    """The epoch's record (metrics.jsonl), once it passes the non-finite and divergence guards: then
    checkpoint.pt, best.pt when its held-out bound is the best so far, metrics.jsonl, trackers."""
    dctx, paths, pos = run.dctx, run.paths, state.progress
    assert pos is not None
    seconds = pos.seconds
    # train_objective: the estimator's loss at the scheduled KL weight, averaged over the steps taken
    # (NaN, not 0, when every step was skipped); not the -ELBO under a KL schedule, beta != 1 or an
    # IWAE-type estimator. train_loss: the same number, the name readers of metrics.jsonl may look for.
    objective = float(pos.total) / pos.count if pos.count else math.nan
    record = {"epoch": epoch, "train_objective": objective, "train_loss": objective, "seconds": seconds,
              "lr": state.optimizer.param_groups[0]["lr"]}  # fmt: skip
    record.update(dctx.on_main(epoch_eval, state.vae, run.data))
    if run.tcfg.curve_every and (epoch % run.tcfg.curve_every == 0 or epoch == run.tcfg.epochs):
        record.update(dctx.on_main(curve_eval, state.vae, run.data, run.tcfg))
    record = dctx.broadcast(record)  # rank 0's timings everywhere: callbacks (budgets) decide alike
    record["skipped_steps"] = state.skipped
    nonfinite.check_record(record, run.cfg, paths.checkpoint)  # a blown-up model is never checkpointed
    nonfinite.check_divergence(state.history, record, run.cfg, paths.checkpoint)  # nor a diverged one
    state.end_epoch(record)
    run.bar.epoch_end(record)
    saved = _save(run, state)
    if nonfinite.best_epoch(state.history) is record:  # best held-out bound so far: best.pt, after checkpoint.pt
        dctx.on_main(checkpoint.save, paths.best, saved)
    dctx.on_main(checkpoint.atomic_write_text, paths.metrics, _jsonl(state.history))
    run.track.epoch(record)
    return record


def _save(run: _Run, state: TrainState) -> dict[str, Any]:
    """Write ``state`` to checkpoint.pt (rank 0) and return what was written."""
    saved = state.checkpoint(spec_mod.to_yaml(run.cfg), run.fingerprint)
    run.dctx.on_main(checkpoint.save, run.paths.checkpoint, saved)
    return saved


def _jsonl(history: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in history)


# --------------------------------------------------------------------------- after the last epoch


def _finish(run: _Run, state: TrainState) -> dict[str, Any]:
    """The final evaluation (summary.json) and the figures; a signal stops either at once, keeping
    every checkpointed epoch (``--resume`` only redoes what follows)."""
    dctx, paths, tcfg, history = run.dctx, run.paths, run.tcfg, state.history
    again = f"{signals.resume_command(paths.root)} writes the rest"
    try:
        with signals.stage("the final evaluation", f"the checkpoint of epoch {len(history)} is kept; {again}"):
            summary = dctx.on_main(final_summary, state.vae, run.data, history, tcfg)
            dctx.on_main(checkpoint.atomic_write_text, paths.summary, json.dumps(summary, indent=2) + "\n")
        if tcfg.figures:
            from ..plots import run_figures

            with signals.stage("the figures", f"the checkpoint and summary.json are kept; {again}"):
                dctx.on_main(
                    run_figures, state.vae, run.data, history, paths.figures, claim=runlock.RunDir(paths.root).claim
                )
    except signals.Interrupted:
        run.track.close("KILLED")
        raise
    run.track.finish(summary, paths.figures if tcfg.figures else None, summary["epochs"])
    return summary


# --------------------------------------------------------------------------- checks and the run directory


def check_data(vae: VAE, ds: Dataset) -> None:
    """Let the likelihood reject data it cannot score, and a conditional model data without its
    condition in some split, before any training."""
    for split in ("train", "valid", "test"):
        x = getattr(ds, f"x_{split}")
        if getattr(vae, "conditional", False) and len(x) and getattr(ds, f"y_{split}") is None:
            raise DataError(
                f"{ds.name}: the model is conditioned on y, but the {split} split has no y_{split}; "
                f"give y_{split} with the data, or train an unconditional model"
            )
        if x.dtype == torch.uint8:  # x / 255: in [0, 1] on the 8-bit grid by construction; check shapes on a few
            x = data_mod.as_float(x[:256])
        if len(x):
            vae.model.likelihood.check_data(x, f"the {split} split")


def _prepare_dir(paths: RunPaths, resume: bool, force: bool) -> None:
    """Lock the run directory for this process (until :func:`fit` returns) and record its files.

    ``force`` deletes exactly the files an earlier run wrote (its manifest); a non-empty directory
    that pyro-vae did not make is refused (pyro_vae/rundir/lock.py).
    """
    run = runlock.open_writer(paths.root, force=force, resume=resume, command="train")
    if resume:  # killed before its first checkpoint: --resume starts it over from config.yaml
        checkpoint.remove_stale_temps(paths.root)
    for p in (paths.config, paths.metrics, paths.checkpoint, paths.best, paths.summary):
        run.path(p.name)  # recorded before they are written: a kill mid-write leaves nothing unlisted


def _check_outputs(paths: RunPaths, figures: bool) -> None:
    """Every place the run will write must be able to take it: files where files go, a folder for figures."""
    for p in (paths.config, paths.metrics, paths.checkpoint, paths.best, paths.summary):
        if p.exists() and not p.is_file():
            raise RunError(f"{str(p)!r} is not a file, so the run cannot write it; move it away")
    if figures and paths.figures.exists() and not paths.figures.is_dir():
        raise RunError(
            f"{str(paths.figures)!r} is not a folder, so the figures cannot be written there; move it away "
            "or set train.figures=false"
        )


def _train_batches(
    ds: Dataset, cfg: Mapping[str, Any], tcfg: spec_mod.TrainConfig, dctx: dist_mod.Context, device: torch.device
) -> streaming.InMemoryBatches | streaming.StreamingBatches:
    """The training split's batch source: the same batches in memory or streamed (pyro_vae/data/streaming.py)."""
    if not ds.stream:
        return streaming.InMemoryBatches(ds.x_train, ds.y_train, tcfg.batch_size, dctx.shard)
    workers = cfg["data"].get("stream_workers")
    return streaming.StreamingBatches(
        ds.x_train, ds.y_train, tcfg.batch_size, dctx.shard, device,
        workers=streaming.default_workers() if workers is None else int(workers),
        seed=dist_mod.derive_seed(cfg["seed"], dctx.rank),
    )  # fmt: skip


def _sync_best(paths: RunPaths, history: list[dict[str, Any]]) -> None:
    """On resume: a kill between checkpoint.pt and best.pt leaves best.pt one best epoch behind;
    when the checkpoint's epoch is the best one, copy it to best.pt."""
    best = nonfinite.best_epoch(history)
    if best is None or best is not history[-1]:
        return
    if paths.best.is_file() and int(checkpoint.load(paths.best).get("epoch", -1)) == int(best["epoch"]):
        return
    checkpoint.save(
        paths.best, {k: v for k, v in checkpoint.load(paths.checkpoint).items() if k not in ("format", "version")}
    )


__all__ = ["TRAIN_ELBO_ROWS", "FitResult", "NonFiniteLoss", "check_data", "fit", "make_optimizer", "read_metrics"]
