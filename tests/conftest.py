import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

#: Overrides that make any spec tiny: a few seconds per run on CPU.
TINY = [
    "train.epochs=1",
    "train.batch_size=64",
    "train.progress=false",
    "train.eval_particles=4",
    "data.limit=256",
    "model.latent_dim=2",
    "model.network.hidden=[32]",
]


@pytest.fixture(autouse=True)
def _fresh_rng():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def tiny():
    return list(TINY)
