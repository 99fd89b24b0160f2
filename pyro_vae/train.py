"""The SVI loop: progress, per-epoch metrics, atomic checkpoints, resume.

``fit`` is one short function over plain torch pieces: the estimator module
``elbo(vae.model, vae.guide)``, a torch optimizer, batches of the training split gathered in memory or
streamed through a DataLoader (pyro_vae/streaming.py), progress (pyro_vae/progress.py) and experiment
trackers (pyro_vae/trackers.py).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from . import checkpoint, fastpath, interrupt, nonfinite, progress, resources, runlock, streaming, trackers
from . import data as data_mod
from . import distributed as dist_mod  # torchrun: sharding, all-reduce, rank-0 I/O (no-op in one process)
from . import spec as spec_mod
from .data import Dataset
from .errors import DataError, RunError, SpecError
from .evaluate import ROW_BUDGET, Measure, PointTerms, measure_of, point_terms, summarize
from .models.vae import VAE, build_model
from .registry import REGISTRY
from .rundir import (
    RunPaths,
    check_data_agrees,
    data_fingerprint,
    pin_data_paths,
    read_metrics,
    resolve_device,
    trained_config,
)
from .schedules import kl_factor, lr_factor

pyro.settings.set(module_local_params=True)

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "sgd": torch.optim.SGD,
}
#: train.* keys that may change when resuming; anything else would change the experiment.
_RESUMABLE = ("epochs", "progress", "progress_seconds", "figures", "eval_particles", "device", "max_bad_steps", "divergence_nats",
              "fast_path", "log_to", "mlflow_uri")  # fmt: skip
#: Longest final evaluation (summary.json's L_K) a spec may ask for, from a timed probe before training.
FINAL_EVAL_HOURS = 1.0
#: Consecutive non-finite steps tolerated before training stops (default of train.max_bad_steps).
MAX_BAD_STEPS = 20
#: Training steps between host reads of the steps' skip flags and losses on an accelerator.
HOST_READ_STEPS = 20
#: data.* keys that may change when resuming: how the training split is read, not what it holds.
_RESUMABLE_DATA = ("stream", "memory_budget_gb", "stream_workers", "cache", "cache_dir", "decode_workers")


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


def make_optimizer(params: Any, cfg: spec_mod.TrainConfig) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        kwargs["momentum"] = cfg.momentum
    else:
        kwargs["eps"] = cfg.eps
    params = list(params)
    kwargs.update(fastpath.optimizer_options(_OPTIMIZERS[cfg.optimizer], params))  # fused update where available
    return _OPTIMIZERS[cfg.optimizer](params, **kwargs)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    _np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
        "python": random.getstate(),  # tuples of ints: weights_only-safe
        "numpy": {"keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_gauss), "cached_gaussian": float(np_cached)},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["data"].cpu())
    if "python" in state:
        random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
    that pyro-vae did not make is refused (pyro_vae/runlock.py).
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


def _resolve_spec(spec: Any, overrides: tuple[str, ...] | list[str]) -> dict[str, Any]:
    if spec is None or isinstance(spec, (str, Path)):
        cfg = spec_mod.from_args(None if spec is None else str(spec), list(overrides))
    else:
        cfg = spec_mod.resolve(spec_mod.apply_overrides(dict(spec), list(overrides)))
    return pin_data_paths(cfg)  # absolute data paths: the run scores the same data from any directory


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{runlock.check_run_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"


@runlock.releases_locks  # the run directory's lock is held until fit returns or raises
@interrupt.handle_signals
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

    Writes the run directory (config.yaml, metrics.jsonl, checkpoint.pt, summary.json, figures/).
    ``resume=True`` continues ``out`` from its checkpoint; only ``train.epochs`` and display
    settings may change. Callbacks: ``{"on_epoch_end": [fn(record, vae)]}``. ``tracking``: the MLflow
    experiment and tags of this run when ``train.log_to`` names trackers (pyro_vae/trackers.py).
    """
    hooks: defaultdict[str, list[Callable[..., None]]] = defaultdict(list, callbacks or {})
    dctx = dist_mod.context()  # rank/world size under torchrun; one process otherwise
    if resume:
        if out is None:
            raise RunError("--resume needs --out RUN_DIR")
        dctx.on_main(runlock.check_out_dir, out)
        dctx.on_main(_prepare_dir, RunPaths(Path(out)), True, False)  # locked before anything is read
        saved = dctx.on_main(trained_config, out)  # the checkpoint's config, never a hand-edited config.yaml
        cfg = spec_mod.resolve(spec_mod.apply_overrides(saved, list(overrides)))
        changed = [k for k in cfg if k not in ("train", "data") and cfg[k] != saved[k]]
        changed += [f"data.{k}" for k in {**saved["data"], **cfg["data"]}
                    if k not in _RESUMABLE_DATA and cfg["data"].get(k) != saved["data"].get(k)]  # fmt: skip
        changed += [f"train.{k}" for k in cfg["train"] if k not in _RESUMABLE and cfg["train"][k] != saved["train"][k]]
        if changed:
            raise SpecError(f"{changed[0]}: cannot change when resuming (only train.{', train.'.join(_RESUMABLE)})")
    else:
        cfg = dctx.on_main(_resolve_spec, spec, overrides)
    paths = RunPaths(Path(out) if out is not None else default_run_dir(cfg["name"]))
    if not resume:
        dctx.on_main(runlock.check_out_dir, paths.root if out is None else out)  # a file, a device, '' or too long: before any work
    tcfg = spec_mod.train_config(cfg)
    trackers.check_available(tcfg.log_to)  # a missing optional extra: one line, before any work
    device = dctx.device(resolve_device(tcfg.device))

    pyro.set_rng_seed(cfg["seed"])
    ds = data_mod.load(cfg["data"], device)
    # model, batch and particles that cannot fit in memory: one line with the estimate (pyro_vae/resources.py)
    resources.check_training_fits(cfg, ds.event_shape, ds.num_classes, device, eval_rows=ROW_BUDGET)
    vae = build_model(cfg, ds.event_shape, ds.num_classes).to(device)
    check_data(vae, ds)
    if dctx.is_main and len(ds.x_test) * tcfg.eval_particles > resources.PROBE_ABOVE_ROWS:  # hours at the end?
        seconds, how = resources.estimate_eval_seconds(vae, ds.x_test, ds.y_test, tcfg.eval_particles, len(ds.x_test))
        resources.check_duration(
            seconds, FINAL_EVAL_HOURS, f"the final evaluation (train.eval_particles: {tcfg.eval_particles})", how,
            "lower train.eval_particles; `pyro-vae evaluate RUN_DIR --particles K --max-hours H` scores the run later",
        )
    if tcfg.progress and dctx.is_main:  # how many points went to each split, before any training
        print(ds.describe(), flush=True)
        if ds.stream:
            print(f"data: the training split streams through a DataLoader ({ds.stream_reason})", flush=True)
    vae.set_kl_weight(cfg["elbo"]["beta"])
    loss_fn = REGISTRY.build("elbo", cfg["elbo"])(vae.model, vae.guide)
    if tcfg.fast_path:  # same loss without Pyro's per-step tracing where supported (pyro_vae/fastpath.py)
        loss_fn = fastpath.accelerate(loss_fn)
    if tcfg.compile:  # train.compile: off by default (measured in benchmarks/README.md)
        loss_fn = torch.compile(loss_fn)
    params = list(vae.parameters())
    optimizer = make_optimizer(params, tcfg)
    gen = torch.Generator().manual_seed(cfg["seed"])
    dctx.broadcast_module(vae)

    fingerprint = dctx.on_main(data_fingerprint, ds)  # stored in each checkpoint: later loads score the same data
    if not resume:
        dctx.on_main(_prepare_dir, paths, resume, force)
    dctx.on_main(_check_outputs, paths, tcfg.figures)  # a folder where a file goes (or the reverse): before training
    history: list[dict[str, Any]] = []
    start_epoch = 0
    partial: dict[str, Any] | None = None  # where a SIGINT/SIGTERM stopped inside an epoch
    stop = interrupt.current()
    if resume and dctx.on_main(paths.checkpoint.is_file):
        state = dctx.on_main(checkpoint.load, paths.checkpoint, map_location="cpu" if dctx.is_distributed else device)
        dctx.on_main(check_data_agrees, state, ds, cfg, paths)
        checkpoint.load_model_state(vae, state.get("model"), f"checkpoint {str(paths.checkpoint)!r}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], gen)
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            partial = state.get("partial")
        except Exception as e:  # noqa: BLE001 - whatever a malformed optimizer or RNG state raises is one line
            raise RunError(
                f"checkpoint {str(paths.checkpoint)!r} does not match config.yaml ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]})"
            ) from None
    if resume and history and dctx.is_main:
        _sync_best(paths, history)
    dctx.seed_rank(cfg["seed"], start_epoch)
    if dctx.is_main:
        checkpoint.atomic_write_text(paths.config, spec_mod.to_yaml(cfg))
    if resume and dctx.is_main:  # a kill between the checkpoint and metrics.jsonl leaves the latter one epoch behind
        checkpoint.atomic_write_text(paths.metrics, "".join(json.dumps(r) + "\n" for r in history))
    # step noise + (under torchrun) loss summed over ranks, gradients all-reduced in backward:
    loss_fn = nonfinite.InvalidAsNaN(loss_fn)  # a distribution refusing NaN/inf parameters: a skipped step
    loss_fn = dctx.wrap_loss(loss_fn, vae)
    n = len(ds.x_train)
    steps_per_epoch = math.ceil(n / tcfg.batch_size)
    source = _train_batches(ds, cfg, tcfg, dctx, device)  # in memory, or streamed through a DataLoader
    bar = progress.Progress(  # tqdm's bar on a terminal; plain lines in a log file (pyro_vae/progress.py)
        total=steps_per_epoch * max(tcfg.epochs - start_epoch, 0),
        desc=cfg["name"],
        epochs=tcfg.epochs,
        steps_per_epoch=steps_per_epoch,
        start_epoch=start_epoch,
        enabled=tcfg.progress and dctx.is_main,
        interval=tcfg.progress_seconds,
        names=measure_of(vae, ds.x_test).display_key,  # a cross-entropy bound is not shown as an ELBO
    )
    first_step = start_epoch * steps_per_epoch + (int(partial["steps"]) if partial is not None else 0)
    track = (  # TensorBoard / MLflow from rank 0 (pyro_vae/trackers.py)
        trackers.open_trackers(
            tcfg.log_to, paths.root, cfg, mlflow_uri=tcfg.mlflow_uri, first_step=first_step, tracking=tracking
        )
        if tcfg.log_to and dctx.is_main
        else trackers.Trackers([])
    )
    bad_in_row = 0
    skipped = int(history[-1].get("skipped_steps", 0)) if history else 0
    # Steps whose skip flag and loss the host has not read yet. The step decides on the device
    # (fastpath.train_step); the host books the flags in step order once every ``read_every`` steps,
    # at a progress refresh and at the epoch's end: on a GPU a read per step would wait for each step.
    # On the CPU a read costs nothing: every step is booked at once.
    pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (global step, loss, stepped, rows)
    read_every = 1 if device.type == "cpu" else HOST_READ_STEPS
    total, count = torch.zeros((), device=device), 0  # this epoch's objective sum and rows over the steps taken

    def settle(epoch: int) -> None:
        """Books the pending steps in order with one host read: counts, objective, max_bad_steps, trackers."""
        nonlocal bad_in_row, skipped, total, count
        if not pending:
            return
        flags = torch.stack([s for _, _, s, _ in pending]).tolist()
        losses = torch.stack([loss for _, loss, _, _ in pending]).tolist() if track.active else None
        booked = list(pending)
        pending.clear()
        for i, ((gstep, loss, _, rows), ok) in enumerate(zip(booked, flags, strict=True)):
            if not ok:
                bad_in_row += 1
                skipped += 1
                if bad_in_row >= tcfg.max_bad_steps:
                    bar.close()
                    track.close("FAILED")
                    last = f"the last good checkpoint is in {str(paths.checkpoint)!r}"
                    raise NonFiniteLoss(
                        f"{bad_in_row} consecutive steps had a NaN/inf loss or gradient at epoch {epoch} "
                        f"(train.max_bad_steps: {tcfg.max_bad_steps}); likely causes: a learning rate too large "
                        f"(train.lr: {tcfg.lr:g}) or a likelihood scale that collapsed (model.likelihood: "
                        f"{cfg['model'].get('likelihood', {}).get('kind', '?')}); "
                        + (last if paths.checkpoint.is_file() else "no checkpoint was written")
                    )
                continue
            bad_in_row = 0
            total += loss * rows
            count += rows
            if losses is not None:
                track.step(gstep, losses[i])

    vae.train()
    for epoch in range(start_epoch + 1, tcfg.epochs + 1):
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        count = 0
        done = 0  # steps of this epoch already taken before an interrupt (resume)
        if partial is not None and partial["epoch"] == epoch:
            total, count, done = partial["total"].to(device), int(partial["count"]), int(partial["steps"])
            t0 -= float(partial["seconds"])
            skipped, bad_in_row = int(partial["skipped"]), int(partial["bad_in_row"])
            bar.update(done)
        for group in optimizer.param_groups:  # train.lr_schedule: a function of the epoch (pyro_vae/schedules.py)
            group["lr"] = tcfg.lr * lr_factor(tcfg.lr_schedule, epoch)
        batches = source.epoch(gen, skip=done)  # this rank's rows of each global batch (pyro_vae/streaming.py)
        kl_step = (epoch - 1) * steps_per_epoch + done  # global step for train.kl_schedule
        for step, batch in enumerate(stop.batches(gen, batches, skip=done), start=done):
            assert batch is not None  # only the skipped positions of a resumed epoch are None
            noise = dctx.noise(cfg["seed"], epoch, step, batch.size)  # per global row: world-size invariant draws
            x = data_mod.as_float(batch.x)  # 8-bit pixels are stored as uint8: x / 255 here, one batch at a time
            if ds.binarize == "dynamic":
                x = noise.bernoulli(x)
            y = batch.y
            if tcfg.kl_schedule != "constant":  # beta times the schedule's factor (pyro_vae/schedules.py)
                vae.set_kl_weight(cfg["elbo"]["beta"] * kl_factor(tcfg.kl_schedule, kl_step, tcfg.kl_steps, tcfg.kl_ramp))
                kl_step += 1
            # zero_grad, backward, optimizer.step() unless the loss or a gradient is NaN/inf (pyro_vae/fastpath.py)
            loss, stepped = fastpath.train_step(loss_fn, optimizer, params, x, vae.cond(y), batch.size)
            pending.append(((epoch - 1) * steps_per_epoch + step, loss, stepped, batch.size))
            bar.update(1)
            refresh = bar.n % 20 == 0 and tcfg.progress
            if refresh or len(pending) >= read_every:
                settle(epoch)
            if refresh:
                bar.set_postfix(epoch=epoch, objective=f"{float(total) / max(count, 1):.3f}", refresh=False)
        settle(epoch)
        if stop.requested:  # SIGINT/SIGTERM: save exactly this step, then exit 130/143
            assert stop.signum is not None and stop.data_state is not None
            part = {"epoch": epoch, "steps": stop.steps, "total": total.detach(), "count": count,
                    "seconds": time.perf_counter() - t0, "skipped": skipped, "bad_in_row": bad_in_row}  # fmt: skip
            dctx.on_main(
                checkpoint.save,
                paths.checkpoint,
                {"epoch": epoch - 1, "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": {**_rng_state(gen), "data": stop.data_state}, "history": history,
                 "config": spec_mod.to_yaml(cfg), "data_fingerprint": fingerprint, "partial": part},
            )  # fmt: skip
            bar.close()
            track.close("KILLED")
            raise interrupt.Interrupted(stop.signum, paths.root)
        seconds = time.perf_counter() - t0
        # train_objective: the estimator's loss at the scheduled KL weight, averaged over the steps taken
        # (NaN, not 0, when every step was skipped); not the -ELBO under a KL schedule, beta != 1 or an
        # IWAE-type estimator. train_loss is its earlier name, kept for readers of metrics.jsonl.
        objective = float(total) / count if count else math.nan
        record = {"epoch": epoch, "train_objective": objective, "train_loss": objective, "seconds": seconds,
                  "lr": optimizer.param_groups[0]["lr"]}
        record.update(dctx.on_main(_epoch_eval, vae, ds))
        if tcfg.curve_every and (epoch % tcfg.curve_every == 0 or epoch == tcfg.epochs):
            record.update(dctx.on_main(_curve_eval, vae, ds, tcfg))
        record = dctx.broadcast(record)  # rank 0's timings everywhere: callbacks (budgets) decide alike
        record["skipped_steps"] = skipped
        nonfinite.check_record(record, cfg, paths.checkpoint)  # a blown-up model is never checkpointed
        nonfinite.check_divergence(history, record, cfg, paths.checkpoint)  # nor a diverged one
        history.append(record)
        bar.epoch_end(record)
        state = {
            "epoch": epoch,
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(gen),
            "history": history,
            "config": spec_mod.to_yaml(cfg), "data_fingerprint": fingerprint,
        }
        dctx.on_main(checkpoint.save, paths.checkpoint, state)
        if nonfinite.best_epoch(history) is record:  # best held-out bound so far: best.pt, after checkpoint.pt
            dctx.on_main(checkpoint.save, paths.best, state)
        dctx.on_main(checkpoint.atomic_write_text, paths.metrics, "".join(json.dumps(r) + "\n" for r in history))
        track.epoch(record)
        try:
            for fn in hooks["on_epoch_end"]:
                fn(record, vae)
        except BaseException:
            track.close("KILLED")
            raise
    bar.close()
    source.close()
    if not dctx.on_main(paths.checkpoint.is_file):  # epochs: 0 still leaves a loadable run
        dctx.on_main(
            checkpoint.save,
            paths.checkpoint,
            {"epoch": 0, "model": vae.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(gen),
             "history": history, "config": spec_mod.to_yaml(cfg), "data_fingerprint": fingerprint},
        )  # fmt: skip
    if stop.requested:  # a signal after the last epoch's checkpoint: resume only writes the summary
        track.close("KILLED")
        raise interrupt.Interrupted(stop.signum or 0, paths.root)
    # a signal now stops at once: every epoch is checkpointed; --resume only redoes what follows
    again = f"{interrupt.resume_command(paths.root)} writes the rest"
    try:
        with interrupt.stage("the final evaluation", f"the checkpoint of epoch {len(history)} is kept; {again}"):
            summary = dctx.on_main(_summary, vae, ds, history, tcfg)
            dctx.on_main(checkpoint.atomic_write_text, paths.summary, json.dumps(summary, indent=2) + "\n")
        if tcfg.figures:
            from .plots import run_figures

            with interrupt.stage("the figures", f"the checkpoint and summary.json are kept; {again}"):
                dctx.on_main(run_figures, vae, ds, history, paths.figures, claim=runlock.RunDir(paths.root).claim)
    except interrupt.Interrupted:
        track.close("KILLED")
        raise
    track.finish(summary, paths.figures if tcfg.figures else None, summary["epochs"])
    return FitResult(vae, ds, cfg, paths.root, history, summary)


def _train_batches(
    ds: Dataset, cfg: Mapping[str, Any], tcfg: spec_mod.TrainConfig, dctx: dist_mod.Context, device: torch.device
) -> streaming.InMemoryBatches | streaming.StreamingBatches:
    """The training split's batch source: the same batches in memory or streamed (pyro_vae/streaming.py)."""
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
    checkpoint.save(paths.best, {k: v for k, v in checkpoint.load(paths.checkpoint).items() if k not in ("format", "version")})


@torch.no_grad()
def _epoch_eval(vae: VAE, ds: Dataset) -> dict[str, float]:
    """One-particle ELBO and its two terms on the test (and valid) split, for the curves, and the
    one-particle ELBO at beta = 1 of a fixed subset of the training split (``train_elbo``)."""
    out: dict[str, float] = {}
    for split in ("test", "valid"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if not len(x):
            continue
        t = _one_draw(vae, x, y)
        out[f"{split}_elbo"] = float(t.elbo.mean())
        if split == "test":
            out["test_reconstruction"] = float(t.reconstruction.mean())
            out["test_kl"] = float(t.kl.mean())
    if len(ds.x_train):
        x, y = _train_rows(ds)
        # its own seeded draws: the training's random stream (and so every other number) is unchanged
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(0)
            out["train_elbo"] = float(_one_draw(vae, x, y).elbo.mean())
    vae.train()
    return out


def _curve_eval(vae: VAE, ds: Dataset, tcfg: spec_mod.TrainConfig) -> dict[str, float]:
    """The learning-curve point: mean L_K (K = ``curve_particles``) over the first ``curve_points``
    test points, with its own seeded draws so that the training's random stream is unchanged."""
    n = min(len(ds.x_test), tcfg.curve_points)
    if not n:
        return {}
    x, y = ds.x_test[:n], None if ds.y_test is None else ds.y_test[:n]
    with torch.random.fork_rng(devices=[ds.x_test.device] if ds.x_test.is_cuda else []):
        torch.manual_seed(0)
        ll = point_terms(vae, x, y, tcfg.curve_particles, means=False).log_likelihood
    vae.train()
    return {"curve_ll": float(ll.mean()), "curve_particles": tcfg.curve_particles, "curve_points": n}


#: Training rows behind ``train_elbo`` in metrics.jsonl: the first rows of the training split.
TRAIN_ELBO_ROWS = 2000


def _train_rows(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first :data:`TRAIN_ELBO_ROWS` training points, as the model sees them; under dynamic
    binarization one fixed binarization of them (the same every epoch)."""
    m = min(len(ds.x_train), TRAIN_ELBO_ROWS)
    x = data_mod.as_float(ds.x_train[:m]).to(ds.x_test.device)
    y = None if ds.y_train is None else ds.y_train[:m].to(ds.x_test.device)
    if ds.binarize == "dynamic":
        x = data_mod.binarize(x.cpu(), torch.Generator().manual_seed(data_mod.SPLIT_SEED + 1)).to(x.device)
    return x, y


def _one_draw(vae: VAE, x: torch.Tensor, y: torch.Tensor | None) -> PointTerms:
    """point_terms with one particle; NaN where parameters so large that a distribution gets NaN/inf arguments."""
    try:
        return point_terms(vae, x, y, num_particles=1, means=False)
    except ValueError as e:
        if not nonfinite.is_invalid_values(e):
            raise
        nan = torch.full((len(x),), math.nan)
        return PointTerms(nan, nan, nan, nan, nan)


def _summary(vae: VAE, ds: Dataset, history: list[dict[str, Any]], tcfg: spec_mod.TrainConfig) -> dict[str, Any]:
    res = summarize(point_terms(vae, ds.x_test, ds.y_test, tcfg.eval_particles), "test", tcfg.eval_particles)
    extra_metrics: Callable[..., dict[str, Any]] | None = getattr(vae.guide, "extra_metrics", None)
    best = nonfinite.best_epoch(history)
    out = {
        "test_elbo": res.elbo,
        "test_log_likelihood": res.log_likelihood,
        "test_log_likelihood_stderr": res.log_likelihood_stderr,
        "eval_particles": tcfg.eval_particles,
        "test_kl": res.kl,
        "test_reconstruction": res.reconstruction,
        "active_units": res.active_units,
        "epochs": history[-1]["epoch"] if history else 0,
        "train_seconds": sum(r["seconds"] for r in history),
        # the estimator's loss at the last epoch's KL weight: a training objective, not a -ELBO
        "final_train_objective": _objective(history[-1]) if history else None,
        "best_epoch": None if best is None else best["epoch"],  # the epoch saved in best.pt
        "skipped_steps": history[-1]["skipped_steps"] if history else 0,
        # model-specific figures, e.g. VQ-VAE codebook usage/perplexity/dead codes (guide.extra_metrics)
        **(extra_metrics(vae, data_mod.as_float(ds.x_test)) if extra_metrics is not None else {}),
    }
    # measure/labels say what test_elbo, test_log_likelihood and test_kl are (pyro_vae.evaluate.Measure)
    return Measure.from_kind(res.measure).fields(out, prefix="test_", k=tcfg.eval_particles)


def _objective(record: Mapping[str, Any]) -> float:
    """A metrics record's training objective (``train_loss`` in runs written before it was named)."""
    return float(record["train_objective"] if "train_objective" in record else record["train_loss"])


__all__ = ["FitResult", "NonFiniteLoss", "fit", "make_optimizer", "read_metrics"]
