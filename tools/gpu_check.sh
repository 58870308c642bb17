#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU: build with CUDA required, run the CUDA tests, the float64-reference
# layer suite on the GPU, the CUDA tests under compute-sanitizer (memcheck, and racecheck on the convolutions),
# and the GPU benchmark. Logs and a summary go to $OUT (default ./gpu_check_logs); the summary is printed last.
#
#   tools/gpu_check.sh                 # everything (about 10-15 minutes on an H100)
#   tools/gpu_check.sh build tests     # or any of: build tests layers slow memcheck racecheck bench
#
# Every step builds first when the installed engine is not this checkout's CUDA build. Each step has a time
# limit (seconds, STEP_LIMIT, default 480) so that one step cannot use up all the machine time. Offline machines
# find real weights and photos only in a cache carried along: a folder gpu_cache/ in the checkout (a copy of
# ~/.cache/pydarknet, i.e. gpu_cache/assets/yolov4-tiny.weights, ...) is used when present; without it the
# real-weights tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$out"
export OUT="$out" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
limit="${STEP_LIMIT:-480}"
[ -d gpu_cache ] && export PYDARKNET_CACHE="$PWD/gpu_cache"
pytest=("$python" -m pytest -p no:cacheprovider -q -rfE --durations=15)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build tests layers slow memcheck racecheck bench)
status=0
touch "$out/summary.txt"

note() { echo "$*" | tee -a "$out/summary.txt"; }

engine_ready() {
    "$python" - <<'EOF' 2> /dev/null
import pathlib, sys
import pydarknet, pydarknet._core as c
here = pathlib.Path("pydarknet").resolve()
ok = c.built_with_cuda and not c.cuda_emulated and c.cuda_device_count() > 0
sys.exit(0 if ok and pathlib.Path(pydarknet.__file__).parent.resolve() == here else 1)
EOF
}

build() {
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
    nvcc --version >> "$out/nvidia-smi.txt" 2>&1
    # Editable, so tests and benchmarks import this checkout with the engine built here; --no-deps because the
    # machine is offline (pycocotools, which only the evaluation needs, is not installed there).
    PYDARKNET_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout "$limit" "$python" -m pip install \
        --no-build-isolation --no-deps -v -e . -C cmake.define.PYDARKNET_CUDA_VERBOSE=ON > "$out/build.log" 2>&1 ||
        { tail -n 30 "$out/build.log"; return 1; }
    grep -E "Compiling entry|registers|spill" "$out/build.log" > "$out/ptxas.txt" || true
    engine_ready || { echo "the build did not give a CUDA engine that sees a GPU"; return 1; }
}

step() {
    local name="$1"
    shift
    if [ "$name" != build ] && ! engine_ready; then
        step build build || return 1
    fi
    local start=$SECONDS rc
    echo "== $name" | tee -a "$out/$name.log"
    "$@" >> "$out/$name.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    note "$(printf '%-10s exit %-3s %4ss  %s' "$name" "$rc" $((SECONDS - start)) "$(tail -n 1 "$out/$name.log")")"
    return $rc
}

for s in "${steps[@]}"; do
    if [[ "$s" == memcheck || "$s" == racecheck ]] && ! command -v compute-sanitizer > /dev/null; then
        note "$s: compute-sanitizer is not on the PATH; skipped"
        continue
    fi
    case "$s" in
        build) step build build ;;
        # every CUDA test except the whole networks, and the planner tests (no GPU needed)
        tests) step tests timeout "$limit" "${pytest[@]}" -m "not slow" tests/test_cuda.py tests/test_cuda_plan.py ;;
        # the CPU engine's float64-reference layer suite, run on the GPU
        layers) step layers env PYDARKNET_TEST_DEVICE=cuda timeout "$limit" "${pytest[@]}" tests/test_layers.py tests/test_activations.py ;;
        # whole networks (random and real weights), detections, the detect command; -s shows the measured errors
        slow) step slow timeout "$limit" "${pytest[@]}" -s -m "cuda and slow" tests/test_cuda.py ;;
        # without the out-of-memory test (the sanitizer counts its intended failed cudaMalloc as an error) and
        # without the tests that repeat the same kernels on the same shapes (split-K, tensor vs SIMT), for time
        memcheck) step memcheck timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
                      "${pytest[@]}" -x -m "cuda and not slow" tests/test_cuda.py -k "not activation_kernel and not cuda_failure and not split_k and not tensor_path" ;;
        # shared-memory races in the convolution kernels (both paths, with and without split-K)
        racecheck) step racecheck timeout "$limit" compute-sanitizer --tool racecheck --error-exitcode 3 --print-limit 20 \
                       "${pytest[@]}" -x tests/test_cuda.py -k "test_convolution and (f130 or 1x1_k300 or groups3 or 3x3_bn)" ;;
        bench) step bench timeout "$limit" "$python" benchmarks/bench_gpu.py ;;
        *) echo "unknown step $s (build tests layers slow memcheck racecheck bench)"; status=1 ;;
    esac
done

echo
echo "== summary ($out)"
cat "$out/summary.txt"
[ -f "$out/bench_gpu.md" ] && { echo; cat "$out/bench_gpu.md"; }
exit $status
