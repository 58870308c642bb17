"""Concurrent use of one network: what the per-network lock costs, and what per-thread workspaces would gain.

The same total number of forward passes (batch 1, one random image per call) runs four ways, interleaved round
by round so that the machine's changing load hits all of them alike:

* ``serial``: one thread, one network (the reference throughput).
* ``shared+lock``: THREADS threads on one network; calls take turns on its lock (what pydarknet does).
* ``own nets``: THREADS threads, each with its own network sharing the parameters (``Network(desc,
  _share=net)``): its own activation buffers and folded weights, so nothing is shared and nothing waits. This is
  the best case of per-call workspaces (which would also allocate per call).
* ``own nets, 1 omp``: the same with one OpenMP thread per Python thread (no oversubscription of the cores).

Reported: images per second of wall time (median over rounds), process CPU seconds per image, the median and
worst latency of one call, and the resident memory each extra network costs. Weights are Darknet's training
initialisation (``seed=0``): the speed does not depend on the values.

    python benchmarks/bench_threads.py                  # yolov4-tiny 416, 4 threads, 40 calls per way, 3 rounds
    python benchmarks/bench_threads.py --size 320 --calls 80 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov4-tiny.cfg"))
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--calls", type=int, default=40, help="forward passes per way and round (all threads together)")
    ap.add_argument("--rounds", type=int, default=3)
    return ap.parse_args(argv)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_threads(nets, calls_each, x, one_omp_thread=False):
    """Each net in its own thread (the same net may appear several times); returns (wall s, cpu s, latencies)."""
    from pydarknet import _core

    barrier = threading.Barrier(len(nets) + 1)
    latencies = [[] for _ in nets]

    def body(k):
        if one_omp_thread:
            _core.set_cpu_threads(1)  # OpenMP's thread count is per calling thread
        barrier.wait()
        for _ in range(calls_each):
            t0 = time.perf_counter()
            nets[k].forward(x)
            latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(len(nets))]
    for t in threads:
        t.start()
    barrier.wait()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    return time.perf_counter() - wall0, time.process_time() - cpu0, [v for lat in latencies for v in lat]


def main(argv=None):
    import pydarknet
    from pydarknet.core.network import Network

    args = parse_args(argv)
    net = pydarknet.load(args.cfg, width=args.size, height=args.size, seed=0)
    x = np.random.default_rng(0).random((1, *net.input_shape), dtype=np.float32)
    net.forward(x)
    before = rss_mb()
    own = [Network(net.desc, _share=net) for _ in range(args.threads)]
    for n in own:
        n.forward(x)
    per_net_mb = (rss_mb() - before) / args.threads
    each = args.calls // args.threads
    total = each * args.threads
    ways = {
        "serial": lambda: run_threads([net], total, x),
        "shared+lock": lambda: run_threads([net] * args.threads, each, x),
        "own nets": lambda: run_threads(own, each, x),
        "own nets, 1 omp": lambda: run_threads(own, each, x, one_omp_thread=True),
    }
    rows = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            rows[name].append(way())
    print(
        f"{os.path.basename(args.cfg)} {args.size}x{args.size} batch 1, {args.threads} threads, {total} calls per "
        f"way, {args.rounds} rounds, {pydarknet._core.cpu_threads()} OpenMP threads, load average "
        f"{os.getloadavg()[0]:.1f}; each extra network: {per_net_mb:.0f} MB resident"
    )
    print("| way | images/s (median) | CPU s / image | latency median ms | latency max ms |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        rate = statistics.median(total / wall for wall, _, _ in runs)
        cpu = statistics.median(c / total for _, c, _ in runs)
        lat = [v for _, _, lats in runs for v in lats]
        print(f"| {name} | {rate:.1f} | {cpu:.3f} | {1e3 * statistics.median(lat):.0f} | {1e3 * max(lat):.0f} |")


if __name__ == "__main__":
    main()
