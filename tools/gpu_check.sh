#!/usr/bin/env bash
# GPU check: build with CUDA required, run the CUDA tests (also once under compute-sanitizer memcheck) and the
# GPU benchmark when there is one. Tests run through the `pytest` script so the installed package is imported. Logs go to $OUT (or ./gpu_check_logs). Run it on a machine with a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$out"
status=0

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

echo "== build (PYDARKNET_CUDA=ON)" | tee "$out/build.log"
PYDARKNET_CUDA=ON python3 -m pip install --no-build-isolation -v . >> "$out/build.log" 2>&1 || {
    echo "build failed; see build.log"; exit 1; }

echo "== CUDA tests" | tee "$out/tests.log"
pytest -q -p no:cacheprovider -m cuda tests/ >> "$out/tests.log" 2>&1 || status=1
tail -n 3 "$out/tests.log"

if command -v compute-sanitizer > /dev/null; then
    echo "== CUDA tests under compute-sanitizer memcheck" | tee "$out/memcheck.log"
    compute-sanitizer --tool memcheck --error-exitcode 3 pytest -q -p no:cacheprovider -m cuda \
        tests/test_cuda.py >> "$out/memcheck.log" 2>&1 || status=1
    tail -n 3 "$out/memcheck.log"
fi

if [ -f benchmarks/bench_gpu.py ]; then
    echo "== GPU benchmark" | tee "$out/bench_gpu.log"
    python3 benchmarks/bench_gpu.py >> "$out/bench_gpu.log" 2>&1 || status=1
    tail -n 20 "$out/bench_gpu.log"
fi
exit $status
