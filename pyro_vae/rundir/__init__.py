"""The run directory contract (see DESIGN.md) and loading a trained run back.

A run is self-describing: its checkpoint holds the resolved spec it was trained with (the authority;
``config.yaml`` is a readable copy that must agree with it) and a fingerprint of the data it saw, and
data paths are stored absolute. A run directory can therefore be moved or loaded from any working
directory and always scores the model and data it was trained on, or refuses with one line.

- this module: the file names (:class:`RunPaths`), the config and data checks, :func:`load_run`;
- :mod:`~pyro_vae.rundir.checkpoint`: checkpoints of tensors and plain containers, atomic writes,
  the layout check a loaded checkpoint must pass;
- :mod:`~pyro_vae.rundir.lock`: the manifest of the files the tool wrote and the one-writer lock.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data as data_mod
from .. import spec as spec_mod
from ..data import Dataset
from ..errors import DataError, RunError
from ..models.vae import VAE, build_model
from . import checkpoint
from .lock import RunDir, open_reader

#: train.* keys that ``train --resume --set`` may change: how long and how the run is shown, logged and
#: guarded; anything else would change the experiment.
RESUMABLE_TRAIN = ("epochs", "progress", "progress_seconds", "figures", "eval_particles", "device", "max_bad_steps",
                   "divergence_nats", "fast_path", "log_to", "mlflow_uri")  # fmt: skip
#: data.* keys that ``train --resume --set`` may change: how the training split is read, not what it holds.
RESUMABLE_DATA = ("stream", "memory_budget_gb", "stream_workers", "cache", "cache_dir", "decode_workers")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """The checkpoint of the epoch with the best held-out bound (valid split, else test)."""
        return self.root / "best.pt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device: 'cuda' requested but no CUDA device is available; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_config(run_dir: Path | str) -> dict[str, Any]:
    """``config.yaml`` of a run, resolved (every default filled in)."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise RunError(f"run directory {str(paths.root)!r} does not exist")
    if not paths.config.is_file():
        raise RunError(f"{str(paths.root)!r} is not a pyro-vae run directory (no config.yaml)")
    raw = spec_mod.read_yaml(paths.config, "config", RunError)  # YAML 1.2 scalars, no duplicate keys, bounded aliases
    return spec_mod.resolve(raw)


def checkpoint_config(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The resolved spec a checkpoint was trained with (stored in it as YAML text)."""
    try:
        return spec_mod.resolve(spec_mod.parse_yaml(state["config"], "the checkpoint's config", RunError))
    except ValueError as e:
        reason = " ".join(str(e).split())[:200]
        raise RunError(f"checkpoint {str(path)!r}: its stored config is not a valid spec ({reason})") from None


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted) at which two resolved specs differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    return None if a == b else (where or "spec", a, b)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_config_agrees(on_disk: dict[str, Any], trained: dict[str, Any], paths: RunPaths) -> None:
    """``config.yaml`` must say what the checkpoint was trained with; an edit is refused, never trusted.

    The settings ``train --resume --set`` may change (epochs, display, how data is streamed) are
    written to config.yaml when a resumed run starts, before its next checkpoint: they may differ.
    """

    def without_resumable(cfg: dict[str, Any]) -> dict[str, Any]:
        return {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in RESUMABLE_TRAIN},
                "data": {k: v for k, v in cfg["data"].items() if k not in RESUMABLE_DATA}}  # fmt: skip

    d = first_difference(without_resumable(trained), without_resumable(on_disk))
    if d is not None:
        key, was, now = d
        raise RunError(
            f"{str(paths.config)!r} disagrees with the checkpoint at {key}: {_short(now)} but the model was trained "
            f"with {_short(was)}; undo the edit (the checkpoint's config is authoritative; to continue training "
            "with other settings use train --resume --set)"
        )


def pin_data_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """The spec with ``data.path``, ``data.cache_dir`` and ``data.root`` made absolute (``data.root``
    unset: the root in use now, ``$PYRO_VAE_DATA`` or ``./data``), so that the run does not depend on
    the working directory."""
    data = dict(cfg["data"])
    for key in ("path", "cache_dir"):  # npz, image_folder, hf; a decoded-image cache
        if isinstance(data.get(key), str) and data[key]:
            data[key] = os.path.abspath(os.path.expanduser(data[key]))
    if "root" in data and (data["root"] is None or isinstance(data["root"], str)):
        data["root"] = os.path.abspath(data_mod.data_root(data["root"]))
    return {**cfg, "data": data}


def data_fingerprint(ds: Dataset) -> str:
    """A hash of every split's values and labels: equal exactly when the data is the same."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("x_train", "x_valid", "x_test", "y_train", "y_valid", "y_test"):
        t = getattr(ds, name)
        if t is not None and not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        h.update(f"{name}:{'none' if t is None else (tuple(t.shape), str(t.dtype))};".encode())
        if t is None:
            continue
        flat = t.detach().reshape(-1)
        step = 1 << 22
        for s in range(0, flat.numel(), step):
            h.update(flat[s : s + step].cpu().contiguous().numpy().tobytes())
    return "blake2b:" + h.hexdigest()


def check_data_agrees(state: dict[str, Any], ds: Dataset, cfg: dict[str, Any], paths: RunPaths) -> None:
    """The data loaded now must be the data the checkpoint was trained on."""
    want = state.get("data_fingerprint")
    if want is not None and want != data_fingerprint(ds):
        where = cfg["data"].get("path") or cfg["data"].get("root") or cfg["data"]["name"]
        raise DataError(
            f"the data of run {str(paths.root)!r} ({cfg['data']['name']}: {str(where)!r}) is not the data it was "
            "trained on (its contents changed); restore that data to use this run"
        )


@dataclass(frozen=True)
class LoadedRun:
    config: dict[str, Any]
    vae: VAE
    data: Dataset
    paths: RunPaths
    epoch: int  # the checkpoint's epoch: every result file records it
    checkpoint_path: Path | None = None  # the file loaded: checkpoint.pt (last epoch) or best.pt


def load_run(run_dir: Path | str, device: str = "auto", which: str = "last") -> LoadedRun:
    """Rebuild model, guide and data of a run from its checkpoint (whose config is authoritative).

    Refused with one line when ``config.yaml`` disagrees with the checkpoint's config, when the data
    is not the data it was trained on, or while another process is writing the run. ``which``:
    ``last`` loads ``checkpoint.pt`` (the last epoch), ``best`` loads ``best.pt`` (the best held-out bound).
    """
    if which not in ("last", "best"):
        raise RunError(f"checkpoint {which!r} is not valid; valid choices: last, best")
    paths = RunPaths(Path(run_dir))
    ckpt = paths.checkpoint if which == "last" else paths.best
    with open_reader(paths.root, "load"):  # a run being trained is refused, not half-read
        on_disk = read_config(paths.root)
        dev = resolve_device(device)
        if which == "best" and not ckpt.is_file() and paths.checkpoint.is_file():
            raise RunError(
                f"{str(paths.root)!r} has no best.pt (no epoch ended with a finite held-out bound, or an older "
                "pyro-vae trained it); use --checkpoint last"
            )
        state = checkpoint.load(ckpt, map_location=dev)
    cfg = checkpoint_config(state, ckpt)
    check_config_agrees(on_disk, cfg, paths)
    ds = data_mod.load(cfg["data"], dev)
    check_data_agrees(state, ds, cfg, paths)
    vae = build_model(cfg, ds.event_shape, ds.num_classes).to(dev)
    checkpoint.load_model_state(
        vae, state.get("model"), f"checkpoint of {str(paths.root)!r}"
    )  # names the first mismatch
    vae.eval()
    return LoadedRun(cfg, vae, ds, paths, int(state["epoch"]), ckpt)


def trained_config(run_dir: Path | str) -> dict[str, Any]:
    """The config a run continues with: its checkpoint's (``config.yaml`` must agree with it), or
    ``config.yaml`` when the run was stopped before its first checkpoint."""
    paths = RunPaths(Path(run_dir))
    on_disk = read_config(paths.root)
    if not paths.checkpoint.is_file():
        return on_disk
    trained = checkpoint_config(checkpoint.load(paths.checkpoint), paths.checkpoint)
    check_config_agrees(on_disk, trained, paths)
    return trained


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "RESUMABLE_DATA",
    "RESUMABLE_TRAIN",
    "LoadedRun",
    "RunDir",
    "RunPaths",
    "check_config_agrees",
    "checkpoint_config",
    "data_fingerprint",
    "load_run",
    "pin_data_paths",
    "read_config",
    "read_metrics",
    "resolve_device",
    "trained_config",
]
