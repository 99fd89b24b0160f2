#!/usr/bin/env bash
# The MNIST runs behind experiments/README.md's "Conditional and structured models" section.
# Needs MNIST under $PYRO_VAE_DATA (this project: /work/shared/data). OUT defaults to runs/structured.
set -euo pipefail
OUT=${1:-runs/structured}
HERE=$(dirname "$0")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for b in 0.5 1 4; do
  pyro-vae train "$HERE/beta_vae_mnist.yaml" --set elbo.beta=$b --set name=mnist-beta$b --set train.progress=false \
    --out "$OUT/beta$b" --force
done
pyro-vae train "$HERE/cvae_mnist.yaml" --set train.progress=false --out "$OUT/cvae" --force
pyro-vae sample "$OUT/cvae" --label 3 --num 20
# The machine was shared by ~8 jobs on 2 cores: VQ-VAE and the quadrant benchmark ran on 20,000 training
# images with short schedules (the README states them); drop data.limit / --limit for the full set.
for v in loss ema; do
  pyro-vae train "$HERE/vqvae_mnist.yaml" --set train.progress=false --set data.limit=20000 --set train.epochs=2 \
    --set model.hidden=16 --set model.codebook_update=$v --out "$OUT/vq_$v" --force
  python "$HERE/vq_figures.py" "$OUT/vq_$v"
done
python "$HERE/vq_ar_prior.py" "$OUT/vq_ema" --epochs 10 --hidden 256   # autoregressive (MADE) code prior
python "$HERE/cvae_quadrants.py" "$OUT/quadrants" --limit 20000 --epochs 3 --particles 50
