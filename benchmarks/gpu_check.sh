#!/usr/bin/env bash
# On a GPU machine (no internet; torch, lightning, transformers, ninja and nvcc preinstalled):
# build the extension against the torch found there, run the CUDA tests, the op benchmark, then
# fast decoding at the paper's shapes (random weights: a masked LM of Dream-7B's width, depth and
# vocabulary; a Qwen3 reward model of Skywork-Reward-V2-Qwen3-1.7B's shape; K=4, L=128).
# Meant to finish well under 8 minutes. Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/entrgi-gpu}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
start=$(date +%s)
TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -q -e . 2>&1 | tail -5
echo "build: $(( $(date +%s) - start ))s"
python3 -c "import entrgi_core.ops as o; print(o.build_info()); assert o.build_info()['cuda']"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ops.py -k "cuda" 2>&1 | tee "$out/tests.txt" | tail -15 || echo "tests: some failed (the benchmarks still run)"
python3 benchmarks/bench_relax.py --device cuda --repeats 10 2>&1 | tee "$out/bench_relax.txt"
echo "relax: $(( $(date +%s) - start ))s"
timeout 200 python3 benchmarks/bench_fast_decoding.py --device cuda --dtype bfloat16 --hidden 3584 --layers 28 --heads 28 \
  --vocab 152064 --prompt 128 --length 128 --block 32 --samples 4 --repeats 1 --caches none dual \
  --guided --rm-hidden 2048 --rm-layers 28 2>&1 | tee "$out/bench_fast_decoding.txt" || echo "fast decoding: stopped at its limit"
echo "total: $(( $(date +%s) - start ))s"
