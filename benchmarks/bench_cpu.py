"""CPU inference speed: pydarknet's forward against OpenCV's DNN module (Darknet importer).

Both engines run the same cfg, the same weights and the same input blob, interleaved in one process
(one pydarknet forward, one OpenCV forward, alternating which goes first), after warm-up runs, with the
same thread count (``OMP_NUM_THREADS`` for pydarknet, set before the engine is imported, and
``cv2.setNumThreads`` for OpenCV).  OpenCV uses ``DNN_BACKEND_OPENCV`` / ``DNN_TARGET_CPU`` with its
default optimisations (layer fusion, Winograd).  The table reports the median of the timed runs.

Weights: yolov4-tiny uses the real pretrained file (``pydarknet.assets``); other models get random
weights of the right size, with batch-norm statistics calibrated so that activations stay of order
one (the default training initialisation makes deep activations shrink towards denormal numbers,
which would distort the timings).

    python benchmarks/bench_cpu.py                         # yolov4-tiny 416 and yolov4 608
    python benchmarks/bench_cpu.py --models yolov4-tiny:416,yolov4:608 --runs 9 --threads 2 --batch 1

GFLOP/s is ``net.bflops`` (Darknet's count of multiply-adds x 2 for one image) x batch / median time.
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
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma-separated cfg names from cfg/, each optionally with :SIZE or :WxH "
                         f"(default {DEFAULT_MODELS})")
    ap.add_argument("--runs", type=int, default=9, help="timed runs per engine (median reported; >= 7 advised)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per engine first")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both engines")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--random-weights", action="store_true",
                    help="use random weights for every model, yolov4-tiny included")
    return ap.parse_args(argv)


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


def main(argv=None):
    args = parse_args(argv)
    # OpenMP reads its thread count once, when the runtime starts: set it before importing the engine.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import cv2

    import pydarknet
    from pydarknet import assets

    # The tests own the cfg resizing and the random-weight calibration; the benchmark reuses them.
    sys.path.insert(0, str(ROOT / "tests"))
    from netcalib import calibrate, randomize, with_input_size

    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        for spec in args.models.split(","):
            name, width, height = parse_model(spec.strip())
            cfg = ROOT / "cfg" / f"{name}.cfg"
            text = cfg.read_text()
            net = pydarknet.load(str(cfg), width=width, height=height)
            c, h, w = net.input_shape
            x = rng.random((args.batch, c, h, w), dtype=np.float32)
            real = f"{name}.weights" in assets.ASSETS and not args.random_weights
            if real:
                weights = assets.fetch(f"{name}.weights")
                net.load_weights(str(weights))
                kind = "real"
            else:
                randomize(net, rng)
                calibrate(net, with_input_size(text, w, h), x[:1], rng)
                weights = tmp / f"{name}.weights"
                net.save_weights(str(weights))
                kind = "random"
            cv_cfg = tmp / f"{name}-{w}x{h}.cfg"
            cv_cfg.write_text(with_input_size(text, w, h))
            cv_net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            out_names = cv_net.getUnconnectedOutLayersNames()

            def run_ours():
                t = time.perf_counter()
                net.forward(x)
                return time.perf_counter() - t

            def run_cv():
                t = time.perf_counter()
                cv_net.setInput(x)
                cv_net.forward(out_names)
                return time.perf_counter() - t

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
            t_ours = statistics.median(ours) * 1e3
            t_cv = statistics.median(theirs) * 1e3
            gflops = net.bflops * args.batch / (t_ours / 1e3)
            rows.append((name, f"{w}x{h}", args.batch, args.threads, kind, t_ours, t_cv, t_ours / t_cv, gflops,
                         net.bflops * args.batch / (t_cv / 1e3), min(ours) * 1e3, min(theirs) * 1e3))
            del net, cv_net

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; pydarknet {getattr(pydarknet, '__version__', '?')}, "
          f"OpenCV {cv2.__version__}, numpy {np.__version__}; median of {args.runs} runs after {args.warmup} "
          f"warm-up runs, interleaved")
    header = ("| model | input | batch | threads | weights | pydarknet ms | OpenCV ms | time ratio (pydarknet/OpenCV) | "
              "pydarknet GFLOP/s | OpenCV GFLOP/s | min ms (pydarknet / OpenCV) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for (name, size, batch, threads, kind, t_ours, t_cv, ratio, gf, gf_cv, m_ours, m_cv) in rows:
        print(f"| {name} | {size} | {batch} | {threads} | {kind} | {t_ours:.1f} | {t_cv:.1f} | {ratio:.2f} | "
              f"{gf:.1f} | {gf_cv:.1f} | {m_ours:.1f} / {m_cv:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
