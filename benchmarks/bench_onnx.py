"""CPU inference speed: pydarknet's forward against ONNX Runtime (and OpenVINO, when installed) running the model
pydarknet exports (``net.export(..., outputs="raw")``: the same heads as ``net.forward``).

All engines run the same network and weights on the same input, interleaved in one process (the order of the
engines rotates from one round to the next), after warm-up runs, with the same thread count
(``_core.set_cpu_threads`` for pydarknet, ``intra_op_num_threads`` for ONNX Runtime with one inter-op thread and
its default graph optimisations, ``INFERENCE_NUM_THREADS`` with the latency hint for OpenVINO). The table gives the
median of the timed runs, the minimum beside it, and each runtime's time divided by pydarknet's (above 1:
pydarknet faster). The outputs of every runtime are compared with pydarknet's first (max abs difference).

Weights: yolov4-tiny uses the real pretrained file; other models random weights with batch-norm statistics
calibrated so that activations stay of order one (tests/support/netcalib.py, as bench_cpu.py).

    python benchmarks/bench_onnx.py                                   # yolov4-tiny 416 and yolov4 608, 2 threads
    python benchmarks/bench_onnx.py --models yolov4-tiny:416 --threads 1,2 --runs 15
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="yolov4-tiny:416,yolov4:608", help="name:size list (cfg/NAME.cfg)")
    p.add_argument("--threads", default="2", help="comma-separated thread counts")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even when it is installed")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import onnxruntime as ort

    import pydarknet
    from pydarknet import _core
    from pydarknet.hub import assets

    sys.path.insert(0, str(ROOT / "tests"))
    from support.netcalib import calibrate, randomize, with_input_size

    ov = None
    if not args.no_openvino:
        try:
            import openvino as ov
        except ImportError:
            ov = None
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-onnx-") as tmp:
        for spec in args.models.split(","):
            name, size = spec.split(":")
            size = int(size)
            cfg = ROOT / "cfg" / f"{name}.cfg"
            if f"{name}.weights" in assets.ASSETS:
                net = pydarknet.load(str(cfg), str(assets.fetch(f"{name}.weights")), width=size, height=size)
                kind = "real"
            else:
                net = pydarknet.load(str(cfg), width=size, height=size, seed=0)
                x0 = rng.random((1, *net.input_shape), dtype=np.float32)
                randomize(net, rng)
                calibrate(net, with_input_size(cfg.read_text(), size, size), x0, rng)
                kind = "random"
            path = pathlib.Path(tmp) / f"{name}.onnx"
            t = time.perf_counter()
            net.export(path)
            export_s = time.perf_counter() - t
            x = rng.random((1, *net.input_shape), dtype=np.float32)
            want = net.forward(x)
            for threads in [int(v) for v in args.threads.split(",")]:
                _core.set_cpu_threads(threads)
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                engines = {"pydarknet": lambda: net.forward(x), "onnxruntime": lambda: sess.run(None, {"images": x})}
                if ov is not None:
                    core = ov.Core()
                    compiled = core.compile_model(
                        str(path),
                        "CPU",
                        {
                            "INFERENCE_NUM_THREADS": threads,
                            "PERFORMANCE_HINT": "LATENCY",
                            "INFERENCE_PRECISION_HINT": "f32",
                        },
                    )
                    request = compiled.create_infer_request()

                    def run_ov():
                        request.infer({0: x})
                        return [request.get_output_tensor(i).data for i in range(len(compiled.outputs))]

                    engines["openvino"] = run_ov
                diffs = {}
                for engine, fn in engines.items():
                    got = fn()
                    diffs[engine] = max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(got, want))
                for _ in range(args.warmup):
                    for fn in engines.values():
                        fn()
                times = {e: [] for e in engines}
                order = list(engines)
                for r in range(args.runs):
                    for e in order[r % len(order) :] + order[: r % len(order)]:
                        t = time.perf_counter()
                        engines[e]()
                        times[e].append(time.perf_counter() - t)
                base = statistics.median(times["pydarknet"])
                for e, ts in times.items():
                    med = statistics.median(ts)
                    rows.append(
                        (
                            name,
                            f"{size}x{size}",
                            threads,
                            kind,
                            e,
                            med * 1e3,
                            min(ts) * 1e3,
                            med / base,
                            diffs[e],
                            export_s,
                        )
                    )
                    print(
                        f"{name} {size} threads={threads} {e:12s} median {med * 1e3:8.1f} ms  min "
                        f"{min(ts) * 1e3:8.1f} ms  ratio {med / base:5.2f}  max|diff| {diffs[e]:.1e}",
                        flush=True,
                    )
            del net
    versions = [f"Python {platform.python_version()}", f"numpy {np.__version__}", f"onnxruntime {ort.__version__}"]
    if ov is not None:
        versions.append(f"openvino {ov.__version__}")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; " + ", ".join(versions))
    print("\n| model | input | threads | weights | runtime | median ms | min ms | time / pydarknet | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, inp, threads, kind, e, med, mn, ratio, diff, _ in rows:
        print(f"| {name} | {inp} | {threads} | {kind} | {e} | {med:.1f} | {mn:.1f} | {ratio:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
