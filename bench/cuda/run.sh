#!/usr/bin/env bash
# bench/cuda/run.sh — for a machine with a GPU: builds Kiln with the CUDA module for
# sm_90 (H100/H200; pass another list as $1, e.g. "80"), runs the CUDA tests (which skip
# without a device), then the fp32 matmul micro-benchmark, Kiln and torch.matmul at
# 4096^3, and prints the ratio. Usage: bench/cuda/run.sh [archs] [build folder]
set -euo pipefail
cd "$(dirname "$0")/../.."
archs="${1:-90}"
build="${2:-build-cuda-bench}"
jobs="$(nproc)"

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$archs" >/dev/null
cmake --build "$build" -j "$jobs" --target kiln_cuda test_cuda test_tensor bench_cuda_matmul >/dev/null
test -f "$build/libkiln_cuda.so" || { echo "no CUDA module was built (is nvcc on the PATH or in /usr/local/cuda?)"; exit 1; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== tests/test_cuda"
"$build/test_cuda" --verbose=0 --jobs 1
echo "== tests/test_tensor"
"$build/test_tensor" --jobs 1 >/dev/null && echo "test_tensor passed"

echo "== matmul 4096^3 fp32 (median of 20, after 3 warm-up)"
kiln_line="$("$build/bench_cuda_matmul" --n 4096 --iters 20)"
echo "$kiln_line"
python="${PYTHON:-python3}"
if "$python" -c 'import torch' 2>/dev/null; then
    torch_line="$("$python" bench/bench_cuda_matmul_torch.py --n 4096 --iters 20)"
    echo "$torch_line"
    kiln_ms="$(sed -n 's/.* ms=\([0-9.]*\).*/\1/p' <<<"$kiln_line")"
    torch_ms="$(sed -n 's/.* ms=\([0-9.]*\).*/\1/p' <<<"$torch_line")"
    if [[ -n "$kiln_ms" && -n "$torch_ms" ]]; then
        awk -v k="$kiln_ms" -v t="$torch_ms" 'BEGIN {
            printf "ratio kiln/torch time = %.3f (target <= 1.05); torch/kiln speed = %.3f\n", k / t, t / k }'
    fi
else
    echo "torch is not installed for $python: no PyTorch figure"
fi

if command -v compute-sanitizer >/dev/null || test -x /usr/local/cuda/bin/compute-sanitizer; then
    echo "== compute-sanitizer memcheck on tests/test_cuda"
    sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
    "$sanitizer" --tool memcheck --error-exitcode 1 "$build/test_cuda" --jobs 1 --verbose=0
fi
