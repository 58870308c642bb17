"""Training throughput of 1 process against N MPI ranks on this machine (CPU ranks).

Trains the starter cfg (synthetic shapes, ``--size`` pixels, global batch ``--batch``) for ``--iterations``
iterations, once as one process with ``--threads`` OpenMP threads, once as ``mpirun -n N`` with
``threads / N`` threads per rank (the same cores), and once as one process with one rank's threads; prints
images per second from results.csv (the median iteration after the first two, which warm up). Needs
``pip install "pydarknet[dist]"``.

    python benchmarks/bench_distributed.py --ranks 2 --threads 2 --size 128 --batch 16 --iterations 12
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

from pydarknet.data import synthetic
from pydarknet.train.starter import starter_cfg


def _seconds(backup):
    rows = (pathlib.Path(backup) / "results.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[4]) for r in rows]


def _run(command, threads, backup):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return _seconds(backup)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="cores used in total (per rank: threads / ranks)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=12)
    args = ap.parse_args()
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = synthetic.generate(tmp / "data", n_train=200, n_valid=4, size=args.size, classes=3, seed=0)
        cfg = tmp / "bench.cfg"
        cfg.write_text(starter_cfg(3, args.size, args.size, max_batches=args.iterations, batch=args.batch))
        common = ["-m", "pydarknet", "train", str(cfg), str(data), "--workers", "0", "--quiet"]
        results = {}
        one = _run([sys.executable, *common, "--backup", str(tmp / "one")], args.threads, tmp / "one")
        results[f"1 process x {args.threads} threads"] = one
        per_rank = max(1, args.threads // args.ranks)
        if per_rank != args.threads:
            # One process with one rank's threads: what each rank would do alone.
            results[f"1 process x {per_rank} threads"] = _run(
                [sys.executable, *common, "--backup", str(tmp / "one_small")], per_rank, tmp / "one_small"
            )
        many = _run(
            [mpirun, "-n", str(args.ranks), sys.executable, *common, "--backup", str(tmp / "many")],
            per_rank,
            tmp / "many",
        )
        results[f"{args.ranks} ranks x {per_rank} threads"] = many
    print(f"starter cfg {args.size}x{args.size}, global batch {args.batch}, {args.iterations} iterations")
    base = None
    for name, seconds in results.items():
        median = statistics.median(seconds[2:] or seconds)
        rate = args.batch / median
        base = base or rate
        print(f"{name:28s} {median:7.3f} s/iteration  {rate:7.1f} images/s  ({rate / base:.2f}x)")


if __name__ == "__main__":
    main()
