"""CPU inference speed: pydarknet's forward against OpenCV's DNN module (Darknet importer).

Both engines run the same cfg, the same weights and the same input blob, interleaved in one process
(one pydarknet forward, one OpenCV forward, alternating which goes first), after warm-up runs, with the
same thread count (``_core.set_cpu_threads`` for pydarknet's OpenMP kernels, ``cv2.setNumThreads`` for OpenCV).
OpenCV uses ``DNN_BACKEND_OPENCV`` / ``DNN_TARGET_CPU`` with its default optimisations (layer fusion,
Winograd) and always computes in float32; pydarknet runs in each ``--precision`` asked for.  The table
reports the median of the timed runs.

Weights: yolov4-tiny uses the real pretrained file (``pydarknet.assets``); other models get random
weights of the right size, with batch-norm statistics calibrated so that activations stay of order
one (the default training initialisation makes deep activations shrink towards denormal numbers,
which would distort the timings).

    python benchmarks/bench_cpu.py                         # yolov4-tiny 416 and yolov4 608, fp32 and bf16
    python benchmarks/bench_cpu.py --models yolov4-tiny:416 --threads 1,2 --batch 1,8 --precision fp32

GFLOP/s is ``net.bflops`` (Darknet's count of multiply-adds x 2 of a direct convolution, for one image) x batch
/ median time: an effective rate, which the Winograd path can lift above the multiply-add peak. "% peak" divides
it by the float32 FMA peak measured at start-up for the same thread count (bf16 rows: by the bf16 dot-product
peak, twice the float32 one on CPUs with AVX512_BF16). The slowest layers come from a separate profiled pass
(per-layer wall time, or CPU time with --cpu-time; median over the runs).
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
DEFAULT_MODELS = "yolov4-tiny:416,yolov4:608"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated cfg names from cfg/, each optionally with :SIZE or :WxH (default {DEFAULT_MODELS})",
    )
    ap.add_argument("--runs", type=int, default=9, help="timed runs per engine (median reported; >= 7 advised)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per engine first")
    ap.add_argument(
        "--threads", default=str(os.cpu_count() or 1), help="thread counts for both engines, comma-separated (e.g. 1,2)"
    )
    ap.add_argument("--batch", default="1", help="batch sizes, comma-separated (e.g. 1,8)")
    ap.add_argument("--precision", default="fp32,bf16", help="pydarknet precisions, comma-separated")
    ap.add_argument("--layers", type=int, default=5, help="slowest layers to list per row (0: none)")
    ap.add_argument(
        "--peak",
        type=float,
        default=None,
        help="float32 FMA peak in GFLOP/s of all the machine's cores (default: measured at start-up)",
    )
    ap.add_argument("--no-winograd", action="store_true", help="pydarknet without its Winograd path")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time instead of the wall clock: with --threads 1 this is the "
        "work each engine does, unaffected by other processes taking turns on the cores",
    )
    ap.add_argument(
        "--random-weights", action="store_true", help="use random weights for every model, yolov4-tiny included"
    )
    return ap.parse_args(argv)


def int_list(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def parse_model(spec):
    name, _, size = spec.partition(":")
    if not size:
        return name, None, None
    w, _, h = size.partition("x")
    return name, int(w), int(h or w)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peaks(core, thread_counts, fixed):
    """FMA (and bf16) peak per thread count: the best of three short measurements (others' load only lowers it)."""
    peaks = {}
    for t in thread_counts:
        if fixed is not None:
            fp32 = fixed * min(t, os.cpu_count() or t) / (os.cpu_count() or t)
            peaks[t] = (fp32, 2 * fp32 if core.cpu_has_avx512_bf16() else 0.0)
            continue
        fp32 = max(core.cpu_peak_gflops(t, False, 0.2) for _ in range(3))
        bf16 = max(core.cpu_peak_gflops(t, True, 0.2) for _ in range(3)) if core.cpu_has_avx512_bf16() else 0.0
        peaks[t] = (fp32, bf16)
    return peaks


def main(argv=None):
    args = parse_args(argv)
    thread_counts = int_list(args.threads)
    batches = int_list(args.batch)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]

    import cv2
    import numpy as np

    import pydarknet
    from pydarknet import _core
    from pydarknet.hub import assets

    # The tests own the cfg resizing and the random-weight calibration; the benchmark reuses them.
    sys.path.insert(0, str(ROOT / "tests"))
    from support.netcalib import calibrate, randomize, with_input_size

    if args.no_winograd:
        _core.set_cpu_winograd(False)
    peaks = measure_peaks(_core, thread_counts, args.peak)
    rng = np.random.default_rng(0)
    rows, slowest = [], []
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        for spec in args.models.split(","):
            name, width, height = parse_model(spec.strip())
            cfg = ROOT / "cfg" / f"{name}.cfg"
            text = cfg.read_text()
            net = pydarknet.load(str(cfg), width=width, height=height)
            c, h, w = net.input_shape
            x_all = rng.random((max(batches), c, h, w), dtype=np.float32)
            real = f"{name}.weights" in assets.ASSETS and not args.random_weights
            if real:
                weights = assets.fetch(f"{name}.weights")
                kind = "real"
            else:
                randomize(net, rng)
                calibrate(net, with_input_size(text, w, h), x_all[:1], rng)
                weights = tmp / f"{name}.weights"
                net.save_weights(str(weights))
                kind = "random"
            del net
            nets = {
                p: pydarknet.load(str(cfg), str(weights), width=width, height=height, precision=p) for p in precisions
            }
            cv_cfg = tmp / f"{name}-{w}x{h}.cfg"
            cv_cfg.write_text(with_input_size(text, w, h))
            cv_net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            out_names = cv_net.getUnconnectedOutLayersNames()

            for threads in thread_counts:
                _core.set_cpu_threads(threads)
                cv2.setNumThreads(threads)
                for batch in batches:
                    x = np.ascontiguousarray(x_all[:batch])

                    clock = time.process_time if args.cpu_time else time.perf_counter

                    def run_cv():
                        t = clock()
                        cv_net.setInput(x)
                        cv_net.forward(out_names)
                        return clock() - t

                    for precision, net in nets.items():

                        def run_ours():
                            t = clock()
                            net.forward(x)
                            return clock() - t

                        for _ in range(args.warmup):
                            run_ours()
                            run_cv()
                        ours, theirs = [], []
                        for r in range(args.runs):
                            if r % 2 == 0:
                                ours.append(run_ours())
                                theirs.append(run_cv())
                            else:
                                theirs.append(run_cv())
                                ours.append(run_ours())
                        t_ours = statistics.median(ours)
                        t_cv = statistics.median(theirs)
                        gflops = net.bflops * batch / t_ours
                        peak = peaks[threads][1 if precision == "bf16" else 0]
                        rows.append(
                            (
                                name,
                                f"{w}x{h}",
                                batch,
                                threads,
                                precision,
                                kind,
                                t_ours * 1e3,
                                t_cv * 1e3,
                                t_ours / t_cv,
                                gflops,
                                100 * gflops / peak if peak else float("nan"),
                                net.bflops * batch / t_cv,
                                min(ours) * 1e3,
                                min(theirs) * 1e3,
                            )
                        )
                        if args.layers:
                            slowest.append((rows[-1], profile(net, x, args.runs, args.layers, args.cpu_time)))
            del nets, cv_net

    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, kernels {_core.cpu_isa()}"
        f"{' + AVX512_BF16' if _core.cpu_has_avx512_bf16() else ''}; pydarknet "
        f"{getattr(pydarknet, '__version__', '?')}{' (Winograd off)' if args.no_winograd else ''}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}; median of {args.runs} runs after {args.warmup} "
        f"warm-up runs, interleaved{'; CPU time' if args.cpu_time else ''}"
    )
    print(
        "measured peak GFLOP/s: "
        + ", ".join(
            f"{t} thread{'s' if t > 1 else ''}: fp32 {p[0]:.0f}" + (f", bf16 {p[1]:.0f}" if p[1] else "")
            for t, p in peaks.items()
        )
        + (" (given)" if args.peak is not None else "")
    )
    header = (
        "| model | input | batch | threads | precision | weights | pydarknet ms | OpenCV ms | "
        "time ratio (pydarknet/OpenCV) | pydarknet GFLOP/s | % peak | OpenCV GFLOP/s | "
        "min ms (pydarknet / OpenCV) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, size, batch, threads, precision, kind, t_ours, t_cv, ratio, gf, pct, gf_cv, m_ours, m_cv in rows:
        print(
            f"| {name} | {size} | {batch} | {threads} | {precision} | {kind} | {t_ours:.1f} | {t_cv:.1f} | "
            f"{ratio:.2f} | {gf:.1f} | {pct:.0f} | {gf_cv:.1f} | {m_ours:.1f} / {m_cv:.1f} |"
        )
    for row, layers in slowest:
        name, size, batch, threads, precision = row[:5]
        print(
            f"\nslowest layers: {name} {size} batch {batch}, {threads} thread{'s' if threads > 1 else ''}, {precision}"
        )
        for index, desc, ms, gf in layers:
            print(f"  {index:4d} {desc:<58s} {ms:8.2f} ms {gf:8.1f} GFLOP/s")
    return 0


def profile(net, x, runs, count, cpu_time=False):
    """The `count` slowest layers of a forward pass: (index, description, median ms, GFLOP/s)."""
    import numpy as np

    core = net._core
    core.profile = True
    try:
        times = []
        for _ in range(runs):
            net.forward(x)
            times.append(list(core.layer_cpu_seconds if cpu_time else core.layer_seconds))
    finally:
        core.profile = False
    median = np.median(np.array(times), axis=0)
    out = []
    for i in np.argsort(-median)[:count]:
        layer = net.layers[int(i)]
        desc = layer.type
        if layer.type == "convolutional":
            o = layer.options
            (ic, ih, iw), (oc, oh, ow) = layer.in_shape, layer.out_shape
            desc = f"conv {o['size']}x{o['size']}/{o['stride_x']} {ic}x{ih}x{iw} -> {oc}x{oh}x{ow} {o['activation']}"
        elif layer.in_shape:
            (ic, ih, iw), (oc, oh, ow) = layer.in_shape, layer.out_shape
            desc = f"{layer.type} {ic}x{ih}x{iw} -> {oc}x{oh}x{ow}"
        seconds = float(median[i])
        flops = layer.bflops * x.shape[0]
        out.append((int(i), desc, seconds * 1e3, flops / seconds if seconds > 0 else 0.0))
    return out


if __name__ == "__main__":
    sys.exit(main())
