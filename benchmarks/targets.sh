#!/usr/bin/env bash
# One device call (~5 min on an H100 / H200): the benchmarks behind the speed targets of issues 3, 4 and 6, then
# benchmarks/check_targets.py on their results.
#
#   bash benchmarks/targets.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./targets_out
#
# Writes kernel.json, planning.json, ttft.json and their logs under OUT_DIR and prints the target table last.
# Uses no git command (on the device machine the copy's .git can be older than the working tree).
set -uo pipefail
out="${1:-${OUT:-targets_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -2

timeout 270 python benchmarks/bench_kernel.py --n 8k 32k 128k --out "$out/kernel.json" > "$out/kernel.log" 2>&1
echo "bench_kernel rc=$?"
timeout 150 python benchmarks/bench_planning.py --n 32k 128k --e2e-n 128k --e2e-gamma 0.92 0.9 --torch-max-n 0 \
  --mem-n '' --out "$out/planning.json" > "$out/planning.log" 2>&1
echo "bench_planning rc=$?"
timeout 150 python benchmarks/bench_ttft.py --lengths 128k --budget "fixed(ratio=0.1)" --no-defaults --repeats 2 \
  --no-profile --out "$out/ttft.json" > "$out/ttft.log" 2>&1
echo "bench_ttft rc=$?"

args=()
for kind in kernel planning ttft; do
  [ -f "$out/$kind.json" ] && args+=("--$kind" "$out/$kind.json")
done
if [ ${#args[@]} -gt 0 ]; then
  python benchmarks/check_targets.py "${args[@]}" | tee "$out/targets.txt"
else
  echo "no result file was written: see the logs under $out"
fi
