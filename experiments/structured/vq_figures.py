"""After training a VQ-VAE run: fit the independent per-position categorical prior over code indices
on the training split, report codebook metrics on the test split, and draw samples (uniform prior vs
fitted prior) and reconstructions.

Usage: python experiments/structured/vq_figures.py RUN_DIR   (writes RUN_DIR/figures/vq_*.png, vq.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pyro_vae import load_run
from pyro_vae.models.vqvae import fit_code_prior, vq_metrics
from pyro_vae.plots import as_images, save_grid


def main(run_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run = load_run(run_dir, device="cpu")
    vae, ds = run.vae, run.data
    fig = Path(run_dir) / "figures"
    fig.mkdir(exist_ok=True)
    cb = vae.guide.codebook
    cb.usage.fill_(1.0 / cb.num_codes)
    uniform = as_images(vae.sample(64), ds.event_shape)
    before = vq_metrics(vae, ds.x_test)  # code_prior_nll under the uniform prior = P log K
    fit_code_prior(vae, ds.x_train)
    fitted = as_images(vae.sample(64), ds.event_shape)
    after = vq_metrics(vae, ds.x_test)
    save_grid(uniform, 8, 8, fig / "vq_samples_uniform.png", "codes drawn uniformly (the training prior)")
    save_grid(fitted, 8, 8, fig / "vq_samples_fitted.png", "codes from the fitted per-position categorical prior")
    x = ds.x_test[:16]
    save_grid(as_images(torch.cat([x, vae.reconstruct(x)]), ds.event_shape), 2, 16, fig / "vq_reconstructions.png",
              "test inputs (top) and reconstructions from their codes (bottom)")  # fmt: skip
    out = {"test": after, "code_prior_nll_uniform": before["code_prior_nll"]}
    (Path(run_dir) / "vq.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
