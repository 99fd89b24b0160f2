"""How the run directories beside this script were made (checkpoint format version 1).

Run once with the package as of commit 2431804 (before the loop was rewritten over TrainState, when
``pyro_vae.data`` was one module), from outside the repository:
``git archive 2431804 pyro_vae | tar -x -C OLD && PYTHONPATH=OLD python make_fixture.py OUT``; then OUT/partial and OUT/epoch1 were copied here without their lock
files, epoch1 without best.pt (resume restores it), and OUT/straight's metrics, summary and final
parameters (``straight/params.pt``). tests/training/test_checkpoint_compat.py resumes both runs
with the current code and requires the straight run's parameters bit for bit.

- ``partial``: a SIGINT inside epoch 2 (checkpoint with ``epoch: 1`` and a ``partial`` entry);
- ``epoch1``: the same spec trained for ``train.epochs=1`` (an end-of-epoch checkpoint);
- ``straight``: the same spec trained for 3 epochs without a stop.

The spec uses Burda et al.'s learning-rate schedule (epoch 1 at lr, epochs 2-4 at lr * 10^(-1/7)) and
a learning curve every 2 epochs, as the long runs in experiments/convergence do.
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from pyro_vae.interrupt import Interrupted

from pyro_vae import data as data_mod  # that version's module: its batches() draws each epoch's order
from pyro_vae import fit

ARGS = [
    "train.epochs=3",
    "train.batch_size=64",
    "train.progress=false",
    "train.eval_particles=4",
    "data.limit=256",
    "model.latent_dim=2",
    "model.network.hidden=[4]",
    "train.figures=false",
    "data.binarize=dynamic",
    "elbo.kind=iwae",
    "elbo.num_particles=3",
    "train.device=cpu",
    "train.lr_schedule=burda",
    "train.curve_every=2",
    "train.curve_points=32",
    "train.curve_particles=5",
]
out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
out.mkdir()
# reference: straight 3 epochs
ref = fit(overrides=ARGS, out=out / "straight")
torch.save({k: v.clone() for k, v in ref.vae.state_dict().items()}, out / "straight_params.pt")
# end-of-epoch checkpoint: 1 epoch
fit(overrides=[*ARGS[1:], "train.epochs=1"], out=out / "epoch1")
# partial epoch: SIGINT while batch 7 (epoch 2, step 2) is drawn
real = data_mod.batches
seen = [0]


def batches(*a, **k):
    for idx in real(*a, **k):
        if seen[0] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        seen[0] += 1
        yield idx


data_mod.batches = batches
try:
    fit(overrides=ARGS, out=out / "partial")
except Interrupted as e:
    print("interrupted:", e)
data_mod.batches = real
