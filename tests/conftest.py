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


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_tmp(tmp_path_factory):
    """Decoded-image caches (pyro_vae/data/image_cache.py) go to a temporary folder, never ~/.cache."""
    old = os.environ.get("PYRO_VAE_CACHE")
    os.environ["PYRO_VAE_CACHE"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("PYRO_VAE_CACHE", None)
    else:
        os.environ["PYRO_VAE_CACHE"] = old


@pytest.fixture
def tiny():
    return list(TINY)
