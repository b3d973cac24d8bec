#!/usr/bin/env bash
# GPU checks in one go (used on a lent H100/H200 machine; needs torch with CUDA, scipy, typer, rich,
# safetensors, pytest, hypothesis). Writes logs to ${OUT:-gpu-out}/. Run from the repository root:
#   bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# 1. GPU tests (skipped on machines without CUDA)
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib tests/test_cuda.py -s \
  2>&1 | tee "$OUT/tests.txt" | tail -15
# 2. engine benchmark in the setting: FCN [32, H, H, 8], 32 trials x 4096 sphere points, 20% magnitude
timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_verify.py --device cuda --widths 32,H,H,8 --hidden 512,2048 \
  --trials 32 --points 4096 --chunk 32 --repeats 3 --matmul fp32,tf32 --forward ${FORWARD:-members,batched} \
  --gemm-n 8192 --profile --selection \
  --torch-profile --json > "$OUT/bench.txt" 2>&1
grep -v '^    \|^  "\|^\[\|^\]\|^  {\|^  }' "$OUT/bench.txt" | head -90
# 3. bound tightness (issue 4) with 64 trials at every width
if [ "${TIGHT:-1}" = 1 ]; then
  timeout ${TIGHT_TIMEOUT:-240} python3 benchmarks/bench_bound_tightness.py --device cuda --widths ${TIGHT_WIDTHS:-128,256,512,1024,2048,4096,8192} \
    --trials 64 --all-trials --chunk 16 > "$OUT/tightness.txt" 2>&1
  cat "$OUT/tightness.txt"
fi
# 4. the default verify job on the GPU (wall time), if time is left
if [ "${DEMO:-0}" = 1 ]; then
  start=$SECONDS
  timeout ${DEMO_TIMEOUT:-150} python3 -m probprune verify --device cuda --runs-dir /tmp/runs > "$OUT/demo.txt" 2>&1
  echo "default verify on cuda: exit $?, wall $((SECONDS - start)) s" | tee -a "$OUT/demo.txt"
  tail -40 "$OUT/demo.txt" | grep -v "^\s*$" | tail -30
fi
