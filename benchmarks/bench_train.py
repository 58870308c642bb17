"""CPU training speed: one training step (forward_train + backward) against the inference forward.

For each model the same network, at the same batch, runs interleaved in one process: an inference ``forward``,
then a training step (``zero_grads``, ``forward_train``, ``backward`` from a fixed random gradient at every
[yolo] layer), repeated after warm-up; the table reports medians. The machine is shared, so absolute times move
with its load; the ratios to the inference forward measured in the same run move much less and are the figures
to compare between versions. "step CPU ms" is the process's CPU time per step: on one thread it is close to the
step's time on an idle machine (other work still shares the caches and memory bandwidth); on more threads it
also counts threads spinning while they wait for each other.

Weights are Darknet's training initialisation (``Network(seed=0)``); inputs are uniform random images. The yolo
loss itself (numpy, ``pydarknet.yolo_loss``) is not part of the step timed here.

    python benchmarks/bench_train.py                                  # starter cfg 160 b16, yolov4-tiny 416 b4
    python benchmarks/bench_train.py --models yolov4-tiny:416:4 --runs 9 --profile

Models are ``NAME:SIZE:BATCH``; NAME is a cfg in cfg/ or ``starter`` (the cfg ``pydarknet synthetic`` writes,
5 classes). ``--profile`` adds each layer's median time in the three passes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "starter:160:16,yolov4-tiny:416:4"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"comma-separated NAME:SIZE:BATCH (default {DEFAULT_MODELS})"
    )
    ap.add_argument("--runs", type=int, default=7, help="timed runs (medians reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--profile", action="store_true", help="print per-layer median times")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    return ap.parse_args(argv)


def build(name, size, tmp):
    import pydarknet
    from pydarknet.train.starter import starter_cfg

    if name == "starter":
        cfg = tmp / "starter.cfg"
        cfg.write_text(starter_cfg(5, size, size))
    else:
        cfg = ROOT / "cfg" / f"{name}.cfg"
    return pydarknet.load(str(cfg), width=size, height=size, seed=0)


def layer_label(layer):
    o = layer.options
    c, h, w = layer.out_shape
    if layer.type == "convolutional":
        return f"conv {o['size']}x{o['size']}/{o['stride_x']} {layer.in_shape[0]}->{c} {w}x{h}"
    return f"{layer.type} {c}x{h}x{w}"


def main(argv=None):
    args = parse_args(argv)
    # OpenMP reads its thread count once, when the runtime starts: set it before importing the engine.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-train-") as tmp:
        for spec in args.models.split(","):
            name, size, batch = spec.strip().split(":")
            size, batch = int(size), int(batch)
            net = build(name, size, pathlib.Path(tmp))
            net.profile = args.profile
            rng = np.random.default_rng(0)
            c, h, w = net.input_shape
            x = rng.random((batch, c, h, w), dtype=np.float32)
            heads = net.yolo_layers or [len(net.layers) - 1]
            grads = {
                i: (0.01 * rng.standard_normal((batch, *net.layers[i].out_shape))).astype(np.float32) for i in heads
            }
            times = {"forward": [], "forward_train": [], "backward": []}
            per_layer = {k: [] for k in times}
            step_cpu = []
            for r in range(args.warmup + args.runs):
                t0 = time.perf_counter()
                net.forward(x)
                t1 = time.perf_counter()
                net.zero_grads()
                c2, t2 = time.process_time(), time.perf_counter()
                net.forward_train(x, seed=1, iteration=r)
                t3 = time.perf_counter()
                net.backward(grads)
                c4, t4 = time.process_time(), time.perf_counter()
                if r < args.warmup:
                    continue
                times["forward"].append(t1 - t0)
                times["forward_train"].append(t3 - t2)
                times["backward"].append(t4 - t3)
                step_cpu.append(c4 - c2)
                if args.profile:
                    for k, v in net.layer_times().items():
                        per_layer[k].append(v)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            step = statistics.median(a + b for a, b in zip(times["forward_train"], times["backward"])) * 1e3
            rows.append(
                (
                    name,
                    size,
                    batch,
                    med["forward"],
                    med["forward_train"],
                    med["backward"],
                    step,
                    batch / step * 1e3,
                    step / med["forward"],
                    med["forward_train"] / med["forward"],
                    med["backward"] / med["forward"],
                    statistics.median(step_cpu) * 1e3,
                )
            )
            if args.profile:
                print(f"\n{name} {size}x{size} batch {batch}: per-layer median ms (forward / forward_train / backward)")
                for i, layer in enumerate(net.layers):
                    f, ft, b = (
                        statistics.median(run[i] for run in per_layer[k]) * 1e3
                        for k in ("forward", "forward_train", "backward")
                    )
                    print(f"{i:4d} {layer_label(layer):<34s} {f:8.2f} {ft:8.2f} {b:8.2f}")
            del net

    print(f"\n{args.threads} threads, {args.runs} runs after {args.warmup} warm-up, medians")
    header = (
        "model",
        "size",
        "batch",
        "forward ms",
        "forward_train ms",
        "backward ms",
        "step ms",
        "images/s",
        "step/forward",
        "forward_train/forward",
        "backward/forward",
        "step CPU ms",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r[0]} | {r[1]}x{r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | "
            f"{r[7]:.1f} | {r[8]:.2f} | {r[9]:.2f} | {r[10]:.2f} | {r[11]:.1f} |"
        )
    if args.json:
        keys = (
            "model",
            "size",
            "batch",
            "forward_ms",
            "forward_train_ms",
            "backward_ms",
            "step_ms",
            "images_per_s",
            "step_over_forward",
            "forward_train_over_forward",
            "backward_over_forward",
            "step_cpu_ms",
        )
        rows_out = [dict(zip(keys, r)) for r in rows]
        pathlib.Path(args.json).write_text(
            json.dumps({"threads": args.threads, "runs": args.runs, "rows": rows_out}, indent=1)
        )


if __name__ == "__main__":
    main()
