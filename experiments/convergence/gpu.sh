#!/usr/bin/env bash
# One timed slice of the convergence experiment on a GPU machine, run from the repository root:
#
#   experiments/convergence/gpu.sh SECONDS GPU_LANE... -- CPU_ROW...
#
# A GPU lane is a comma-separated list of rows trained one after the other on the GPU, each scored (L_5000
# on all test images) on the GPU as soon as it has all its epochs; lanes run in parallel (a few lanes keep
# the GPU busy: the steps of this small MLP are short). Each CPU_ROW trains in its own process on the
# machine's cores (two threads each). Every training process runs under run.py's --until, so it is
# interrupted in time with a checkpoint. At the end it packs the
# run directories, results, cpu_seconds.json and logs into tar files under $OUT (or /tmp/gpu-out), which
# `run.py train ROW` on any machine continues. Data: $PYRO_VAE_DATA, else MNIST's IDX files carried
# gzipped in .mnist/; Python packages the machine lacks (pyro-ppl, pyro-api): wheels carried in .whl/.
set -u
budget=$1; shift
start=$(date +%s)
here=experiments/convergence
out=${OUT:-/tmp/gpu-out}
logs=/tmp/gpu-logs
mkdir -p "$out" "$logs"
export PYTHONUNBUFFERED=1
if [ -z "${PYRO_VAE_DATA:-}" ]; then
  mkdir -p /tmp/data/MNIST/raw
  for f in .mnist/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
  export PYRO_VAE_DATA=/tmp/data
fi
if ! python3 -c "import pyro" 2> /dev/null && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi; python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__, torch.cuda.get_device_name())"; nproc; } > "$logs/machine.txt" 2>&1
elapsed() { echo $(( $(date +%s) - start )); }
train_for=$(( budget - 75 ))   # training stops here; scoring of finished rows may go on to budget - 25
gpu_rows=(); cpu_rows=(); side=gpu
for a in "$@"; do
  if [ "$a" = "--" ]; then side=cpu; elif [ $side = gpu ]; then gpu_rows+=("$a"); else cpu_rows+=("$a"); fi
done
pids=()
for lane in "${gpu_rows[@]}"; do
  ( export OMP_NUM_THREADS=1
    for row in ${lane//,/ }; do
      left=$(( train_for - $(elapsed) ))
      [ $left -gt 20 ] || break
      python3 $here/run.py train "$row" --until $left
      left=$(( budget - 25 - $(elapsed) ))
      [ $left -gt 15 ] && python3 $here/run.py evaluate "$row" --device auto --until $left
    done
  ) > "$logs/lane_${lane//,/_}.log" 2>&1 &
  pids+=($!)
done
for row in "${cpu_rows[@]}"; do
  ( export OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES=""
    python3 $here/run.py train "$row" --until $train_for --time-key train_gpu_host
  ) > "$logs/$row.log" 2>&1 &
  pids+=($!)
done
( while true; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> "$logs/gpu_util.csv"; uptime >> "$logs/load.txt"; sleep 15; done ) &
sampler=$!
wait "${pids[@]}"
kill $sampler
echo "rows done at $(elapsed) s" >> "$logs/machine.txt"
# pack: at most 3 run directories per tar (about 5 MB each), results and logs in one more
rows=()
for row in ${gpu_rows[@]//,/ } "${cpu_rows[@]}"; do [ -d "$here/runs/$row" ] && rows+=("$row"); done
i=0
while [ $i -lt ${#rows[@]} ]; do
  group=("${rows[@]:$i:3}")
  tar cf "$out/runs_$i.tar" --exclude best.pt --exclude .pyro-vae.lock -C $here "${group[@]/#/runs/}"
  i=$(( i + 3 ))
done
cp $here/results/*.json "$logs/" 2>/dev/null
cp $here/cpu_seconds.json "$logs/"
tar czf "$out/logs.tgz" -C /tmp gpu-logs
ls -la "$out"
echo "packed at $(elapsed) s"
