#!/usr/bin/env bash
# Every benchmark that can use a GPU, in one command, on a machine with CUDA:
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default benchmarks/results/gpu)
#
# writes, under OUT_DIR, the JSON + markdown of each script and summary.md (all of them, in order):
#   test_gpu_sync.txt  the training step under torch.cuda.set_sync_debug_mode("error") (tests/test_gpu_sync.py)
#   epoch_cuda.*       one MNIST epoch through fit() at batch 128 (bench_epoch.py; goal: under 1.0 s)
#   eval_cuda.*        L_5000 on the 10,000 MNIST test images beside the decoder's arithmetic lower
#                      bound (bench_eval.py; goal: under 30 s on an H100/H200-class GPU)
#   compile_cuda.*     torch.compile of the training loss vs eager (bench_compile.py)
# bench_step.py and bench_iwae.py time CPU steps (one torch thread against a hand-written CPU step)
# and are not part of this script. MNIST is read from $PYRO_VAE_DATA (default /work/shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYRO_VAE_DATA=${PYRO_VAE_DATA:-/work/shared/data}
export MPLBACKEND=Agg
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device here (torch.cuda.is_available() is False); nothing was measured")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true

status=0
python -m pytest tests/test_gpu_sync.py -q -rs -m "slow or not slow" > "$OUT/test_gpu_sync.txt" 2>&1 || status=1
tail -n 3 "$OUT/test_gpu_sync.txt"
python benchmarks/bench_epoch.py --device cuda --batch 128 --out "$OUT" || status=1
python benchmarks/bench_eval.py --device cuda --out "$OUT" || status=1
python benchmarks/bench_compile.py --device cuda --batches 20,128,1024 --out "$OUT" || status=1

{
  echo "# GPU benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo '```'
  cat "$OUT/nvidia-smi.csv"
  echo '```'
  echo
  echo "tests/test_gpu_sync.py: $(tail -n 1 "$OUT/test_gpu_sync.txt")"
  for f in epoch_cuda eval_cuda compile_cuda; do
    if [ -f "$OUT/$f.md" ]; then echo; cat "$OUT/$f.md"; else echo; echo "$f: did not complete (see the output above)"; fi
  done
} > "$OUT/summary.md"
echo "gpu.sh: results in $OUT (summary.md); exit $status"
exit $status
