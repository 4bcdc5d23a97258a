#!/usr/bin/env bash
# The CUDA path on one GPU machine, in one go (CI has no GPU, so this is where it is proven):
#   1. versions: GPU, driver, torch + CUDA, nccl, fbgemm-gpu (must be the CUDA variant), TorchRec, Ray;
#   2. tests/test_cuda.py: every model's forward + backward on the GPU equal the CPU's; DMP over
#      nccl with fbgemm-gpu's fused CUDA kernels steps like the in-process CPU trainer, per sharding type;
#   3. `lifelong train` on configs/gpu-one.yaml: the Ray TorchTrainer job, one worker per GPU, nccl;
#   4. benchmarks/lifelong_scale.py --device cuda: samples/s and GSU cost at L = 10^4 and 10^5
#      (SYNTHETIC planted logs);
#   5. `lifelong shard-bench` on the GPU: every plan TorchRec allows on CUDA, one worker.
# Each step has a time limit and its own log; a failed step does not stop the next.
#
#     bash benchmarks/gpu_check.sh OUT_DIR     # python3 (or $PYTHON) with CUDA torch, fbgemm-gpu, TorchRec, Ray
set -u
OUT=${1:-gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
RUNS=$(mktemp -d)  # checkpoints and samples stay out of OUT
export PYTHONUNBUFFERED=1 RAY_DATA_DISABLE_PROGRESS_BARS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, print its tail
  local name=$1 limit=$2 start rc
  shift 2
  echo "=== $name: $*"
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  grep -v "is_fx_tracing\|compat_table\|cannot determine compat\|^ *$\|\[0m\|\[33m" "$OUT/$name.log" | tail -n "${TAIL:-12}"
}

step versions 60 "$PY" -c "
import torch, fbgemm_gpu, torchrec, ray
print('gpu', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())
print('fbgemm_gpu', fbgemm_gpu.__version__, fbgemm_gpu.__variant__, '| torchrec', torchrec.__file__, '| ray', ray.__version__)
assert fbgemm_gpu.__variant__ == 'cuda', 'fbgemm-gpu is not the CUDA build'
"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
TAIL=25 step cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step train 240 "$PY" -m lifelong.jobs.cli train --config configs/gpu-one.yaml --output-dir "$RUNS"
TAIL=20 step scale 300 "$PY" benchmarks/lifelong_scale.py --device cuda --lens 10000,100000 \
    --models "${SCALE_MODELS:-din_full,sim_hard,eta+cache+dedup,twin,twin+cache+dedup,lic+cache+dedup,sdim}" \
    --json "$OUT/scale.json"
TAIL=15 step shard_bench 240 "$PY" -m lifelong.jobs.cli shard-bench --config configs/gpu-one.yaml --world-sizes 1 --name gpu-one-bench \
    --steps 20 --warmup 3 --output-dir "$RUNS"
cp "$RUNS"/gpu-one-bench/shard_bench.md "$OUT"/ 2>/dev/null
echo "=== summary"
cat "$OUT/summary.txt"
