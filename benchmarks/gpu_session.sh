#!/usr/bin/env bash
# One device call: versions, GPU checks and profile (gpu_check.py), then the GPU table (bench_gpu.py).
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_session.sh [bench_gpu.py options]
export PYTHONPATH=src:. PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, transformers, timm, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__, 'triton', triton.__version__)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -15 | tee "$OUT/test_kernels.log"
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/test_pixels_device.py 2>&1 | tail -15 | tee "$OUT/test_pixels_device.log"
timeout "${CHECK_TIMEOUT:-170}" python3 benchmarks/gpu_check.py 2>&1 | grep -v Warning | tee "$OUT/gpu_check.log"
python3 benchmarks/bench_gpu.py "$@" 2>&1 | tee "$OUT/bench_gpu.log"
