#!/usr/bin/env bash
# Everything lrm checks on a CUDA GPU, in one run (no GPU in CI): the CUDA tests (tests/test_cuda.py: presets,
# codecs, fitting; tests/test_cuda_tuning.py: teacher, sampling, distillation, the three tuning methods, each
# against the CPU) and the CUDA benchmarks (benchmarks/tune_step_memory.py: DOLLAR Tab. 8 on the GPU).
# Writes logs and JSON into OUT (default runs/gpu); the taef2 rows need its weights (LRM_WEIGHTS).
#
#     bash benchmarks/gpu.sh runs/gpu
set -uo pipefail
out=${1:-runs/gpu}
mkdir -p "$out"
python=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

status=0
SECONDS=0
"$python" -m pytest tests/test_cuda.py tests/test_cuda_tuning.py -q -rs -p no:cacheprovider 2>&1 \
    | tee "$out/cuda_tests.log" || status=1
echo "cuda tests: ${SECONDS} s" | tee -a "$out/gpu.txt"

SECONDS=0
"$python" benchmarks/tune_step_memory.py --device cuda --threads 8 --time-budget-s 300 \
    --out "$out/tune_step_memory_cuda.json" 2>&1 | tee "$out/tune_step_memory_cuda.log" || status=1
echo "tune_step_memory --device cuda: ${SECONDS} s" | tee -a "$out/gpu.txt"
exit $status
