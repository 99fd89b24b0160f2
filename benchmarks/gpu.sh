#!/usr/bin/env bash
# Every benchmark that can use a GPU, in one command, on a machine with CUDA:
#
#   bash benchmarks/gpu.sh [OUT_DIR]            (default benchmarks/results/gpu)
#   bash benchmarks/gpu.sh --dry-run [OUT_DIR]  (default /tmp/pyro-vae-gpu-dry-run: the same steps on the
#                                                CPU at toy sizes, to check the script itself without a GPU)
#
# writes, under OUT_DIR, the JSON + markdown of each script and summary.md (all of them, in order):
#   test_gpu_sync.txt  the training step under torch.cuda.set_sync_debug_mode("error")
#                      (tests/evaluation/test_gpu_sync.py; on the CPU its CUDA tests are skipped)
#   epoch_cuda.*       one MNIST epoch through fit() at batch 128 (bench_epoch.py; goal: under 1.0 s)
#   eval_cuda.*        L_5000 on the 10,000 MNIST test images beside the decoder's arithmetic lower
#                      bound, with the resident set (bench_eval.py; goal: under 30 s on an H100/H200-class GPU)
#   compile_cuda.*     torch.compile of the training loss vs eager (bench_compile.py)
# bench_step.py and bench_iwae.py time CPU steps (one torch thread against a hand-written CPU step)
# and are not part of this script. MNIST is read from $PYRO_VAE_DATA (default /work/shared/data).
# Every script imports this checkout's pyro_vae (PYTHONPATH), not an installed copy.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DEVICE=cpu; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1; shift ;;
  esac
done
if [ "$DEVICE" = cuda ]; then OUT=${OUT:-benchmarks/results/gpu}; else OUT=${OUT:-/tmp/pyro-vae-gpu-dry-run}; fi
mkdir -p "$OUT"
export PYRO_VAE_DATA=${PYRO_VAE_DATA:-/work/shared/data}
export MPLBACKEND=Agg
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=$DEVICE python - <<'PY'
import os, sys, torch
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device here (torch.cuda.is_available() is False); nothing was measured "
             "(bash benchmarks/gpu.sh --dry-run checks the script on the CPU)")
where = torch.cuda.get_device_name(0) if os.environ["DEVICE"] == "cuda" else "CPU (dry run: toy sizes)"
print("device:", where, "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
  EPOCH=(--batch 128)
  EVAL=()
  COMPILE=(--batches 20,128,1024)
else
  echo "dry run on the CPU: $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg)" > "$OUT/nvidia-smi.csv"
  EPOCH=(--batch 128 --repeats 1)
  EVAL=(--quick)
  COMPILE=(--batches 20 --estimators trace --rounds 1 --round-seconds 0.2)
fi

status=0
python -m pytest tests/evaluation/test_gpu_sync.py -q -rs -p no:randomly -m "slow or not slow" > "$OUT/test_gpu_sync.txt" 2>&1 || status=1
tail -n 3 "$OUT/test_gpu_sync.txt"
python benchmarks/bench_epoch.py --device "$DEVICE" "${EPOCH[@]}" --out "$OUT" || status=1
python benchmarks/bench_eval.py --device "$DEVICE" "${EVAL[@]}" --out "$OUT" || status=1
python benchmarks/bench_compile.py --device "$DEVICE" "${COMPILE[@]}" --out "$OUT" || status=1

if [ "$DEVICE" = cuda ]; then
  results=(epoch_cuda eval_cuda compile_cuda)
else
  results=(epoch_cpu eval_quick compile)
fi
{
  if [ "$DEVICE" = cuda ]; then
    echo "# GPU benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  else
    echo "# gpu.sh dry run ($(date -u '+%Y-%m-%d %H:%M UTC')): the CPU at toy sizes, a check of the script, no GPU numbers"
  fi
  echo
  echo '```'
  cat "$OUT/nvidia-smi.csv"
  echo '```'
  echo
  echo "tests/evaluation/test_gpu_sync.py: $(tail -n 1 "$OUT/test_gpu_sync.txt")"
  for f in "${results[@]}"; do
    if [ -f "$OUT/$f.md" ]; then echo; cat "$OUT/$f.md"; else echo; echo "$f: did not complete (see the output above)"; fi
  done
} > "$OUT/summary.md"
echo "gpu.sh: results in $OUT (summary.md); exit $status"
exit $status
