"""CPU speed of YOLOv4-P7 and its once-for-all sub-networks P7\\P7 and P7\\P7\\P6 (Scaled-YOLOv4 section 5.5).

The sub-networks are made with ``pydarknet.core.subnet`` from cfg/yolov4-p7.cfg. Each network runs at each input
size (batch 1, float32, the engine's default thread count) with the parameters the engine gives a network without
weights: the kernels are dense, so the time does not depend on the values. Reported: the median of ``--runs`` timed
forwards after one warm-up, BFLOPs (Darknet's count) and learnable parameters.

    python benchmarks/bench_subnet.py                      # 384, 512, 640
    python benchmarks/bench_subnet.py --sizes 1536 --nets P7 --runs 1
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="384,512,640")
    parser.add_argument("--nets", default="P7,P7\\P7,P7\\P7\\P6")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    import pydarknet
    from pydarknet.core.subnet import subnet

    full = ROOT / "cfg" / "yolov4-p7.cfg"
    tmp = pathlib.Path(tempfile.mkdtemp())
    cfgs = {"P7": full}
    for name, drop in (("P7\\P7", ["P7"]), ("P7\\P7\\P6", ["P7", "P6"])):
        cfgs[name] = subnet(full, drop).save(tmp / f"p7-{len(drop)}.cfg")
    print(f"| network | input | BFLOPs | parameters | median s ({args.runs} runs) | images/s |")
    print("|---|---|---|---|---|---|")
    for size in [int(s) for s in args.sizes.split(",")]:
        x = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
        for name in args.nets.split(","):
            net = pydarknet.load(cfgs[name], width=size, height=size)
            net.forward(x)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                net.forward(x)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(f"| {name} | {size} | {net.bflops:.1f} | {net.learnable_params:,} | {t:.2f} | {1 / t:.2f} |")
            sys.stdout.flush()
            del net


if __name__ == "__main__":
    main()
