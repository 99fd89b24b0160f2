#!/usr/bin/env bash
# KL schedules and free bits on the embedded digits (experiments/README.md, "KL schedules and free bits").
set -euo pipefail
OUT=${1:-runs/schedules}
S=$(dirname "$0")/beta_vae_digits.yaml
common="--set elbo.beta=1.0 --set train.progress=false --set train.figures=false --force"
pyro-vae train $S --out $OUT/constant --set train.kl_schedule=constant $common
pyro-vae train $S --out $OUT/linear --set train.kl_schedule=linear --set train.kl_steps=1000 $common
pyro-vae train $S --out $OUT/cyclical --set train.kl_schedule=cyclical --set train.kl_steps=400 $common
pyro-vae train $S --out $OUT/cyclical410 --set train.kl_schedule=cyclical --set train.kl_steps=410 $common
pyro-vae train $S --out $OUT/freebits --set train.kl_schedule=constant --set elbo='{kind: free_bits, lam: 0.25, beta: 1.0}' $common
