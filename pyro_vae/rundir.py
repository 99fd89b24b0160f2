"""The run directory contract (see DESIGN.md) and loading a trained run back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from . import data as data_mod
from . import spec as spec_mod
from .data import Dataset
from .errors import RunError
from .models.vae import VAE, build_model


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
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise RunError(f"run directory {str(paths.root)!r} does not exist")
    if not paths.config.is_file():
        raise RunError(f"{str(paths.root)!r} is not a pyro-vae run directory (no config.yaml)")
    raw = spec_mod.read_yaml(paths.config, "config", RunError)  # YAML 1.2 scalars, no duplicate keys, bounded aliases
    return spec_mod.resolve(raw)


@dataclass(frozen=True)
class LoadedRun:
    config: dict[str, Any]
    vae: VAE
    data: Dataset
    paths: RunPaths
    epoch: int


def load_run(run_dir: Path | str, device: str = "auto") -> LoadedRun:
    """Rebuild model, guide and data of a run from ``config.yaml`` and ``checkpoint.pt``."""
    paths = RunPaths(Path(run_dir))
    cfg = read_config(paths.root)
    dev = resolve_device(device)
    state = checkpoint.load(paths.checkpoint, map_location=dev)
    ds = data_mod.load(cfg["data"], dev)
    vae = build_model(cfg, ds.event_shape, ds.num_classes).to(dev)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise RunError(f"checkpoint does not match config.yaml in {str(paths.root)!r}: {str(e).splitlines()[0]}") from None
    vae.eval()
    return LoadedRun(cfg, vae, ds, paths, int(state["epoch"]))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
