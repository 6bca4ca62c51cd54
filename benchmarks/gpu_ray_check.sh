#!/usr/bin/env bash
# GPU model actors' utilisation on a GPU machine (not run on the CPU box where the ray engine was built):
# the ray engine against the local engine on one GPU, decoding throughput against decoding CPUs, and
# how busy one model actor per GPU stays (target >= 90%). Prints the tables of bench_ray.py.
#   bash benchmarks/gpu_ray_check.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")"
COUNT="${1:-2000}"
GPUS="$(python -c 'import torch; print(torch.cuda.device_count())')"
CPUS="$(nproc)"
PYTHON="${PYTHON:-../.venv/bin/python}"
"$PYTHON" bench_ray.py --count "$COUNT" --photo-size 2000 --variant vitl16 --device cuda --gpus-per-worker 1 \
    --batch-size 128 --actors "$GPUS" --decode-cpus "$(seq -s, 2 2 "$CPUS" | sed 's/,$//')" --num-cpus "$CPUS"
