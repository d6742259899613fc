#!/usr/bin/env bash
# One device call: install, run the GPU-compiled kernel tests, then the kernel program-order probe and the
# planning / estimator timings.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./gpu_check_out
#   QUICK=1 bash benchmarks/gpu_check.sh          # tests + the 128K/256K estimator timings only
#
# Writes pytest's summary and each benchmark's JSON under OUT_DIR and prints the benchmarks' tables last.
# Uses no git command: on the device machine the copy's .git can be older than the working tree it came with.
set -uo pipefail
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -2
python - <<'EOF'
import torch, triton
print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
EOF

# kernel tests compiled on the GPU (the interpreter is off when CUDA is present and TRITON_INTERPRET unset)
timeout 300 python -m pytest -q -x -p no:cacheprovider \
  tests/kernels/test_proxy_scores.py tests/kernels/test_last_block_mass.py tests/kernels/test_topk_rank.py \
  tests/kernels/test_mass_budget.py tests/kernels/test_block_sparse.py tests/kernels/test_launch.py \
  tests/core/test_geometry.py \
  -k "packed or kernel_tile_counts or bitwise or chunks or match_naive or triton_equals_torch or order_is or prepared or direct or mass_budget or geometry" 2>&1 | tail -3 | tee "$out/pytest_kernels.txt"
timeout 120 python -m pytest -q -x -p no:cacheprovider tests/hf/test_hf_gpu.py 2>&1 | tail -2 | tee "$out/pytest_hf_gpu.txt"

timeout 200 python benchmarks/probes/kernel_grid_order.py --n 128k --chunks 0 8 16 32 64 --out "$out/grid_order.json" \
  > "$out/grid_order.log" 2>&1
python benchmarks/bench_proxy_split.py --n 32k 128k 256k --splits auto auto+across auto+grouped auto2 \
  --out "$out/proxy_split.json" > "$out/proxy_split.log" 2>&1
if [ -z "${QUICK:-}" ]; then
  python benchmarks/bench_planning.py --n 32k 128k 256k --e2e-n 128k --e2e-gamma 0.95 0.92 0.9 --torch-max-n 0 \
    --mem-n '' --out "$out/planning.json" > "$out/planning.log" 2>&1
fi

echo; echo "== kernel program order (probes/kernel_grid_order)"; tail -12 "$out/grid_order.log"
echo; echo "== estimator (bench_proxy_split)"; tail -20 "$out/proxy_split.log"
if [ -z "${QUICK:-}" ]; then echo; echo "== planning (bench_planning)"; tail -14 "$out/planning.log"; fi
