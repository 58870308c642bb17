"""mAP@0.5 curves of one process against ``mpirun -n N`` training the same run (CPU ranks).

The recipe of the long training test (tests/test_train.py): the starter cfg with CIoU at 128x128, 400 synthetic
training images and 80 held-out ones (seed 0), global batch 16, learning rate 0.004, ``--map`` every
``--map-every`` iterations. The two runs draw the same images in the same order; they differ by the order of
float additions in the summed gradients and batch-norm statistics, so the curves should agree within the noise
of a run (the test's recipe gives 0.455 / 0.810 / 0.888 at 400 / 800 / 1200 on seed 0 and 0.430 / 0.790 /
0.908 on seed 1). Prints both curves side by side; ``--json PATH`` writes them. Needs ``pip install
"pydarknet[dist]"``.

    python benchmarks/dist_map_curve.py --ranks 2 --iterations 1200 --map-every 200 --json curves.json
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from pydarknet.data import synthetic
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.starter import starter_cfg
from pydarknet.train.trainer import read_results


def _curve(results):
    """{iteration: mAP} from a results.csv (its last column is filled where --map evaluated)."""
    return {int(row[0]): float(row[9]) for row in read_results(results) if len(row) > 9 and row[9]}


def _train(command, threads, backup):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return _curve(pathlib.Path(backup) / "results.csv"), time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="cores used in total (per rank: threads / ranks)")
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--map-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    ap.add_argument("--json", help="write the curves here")
    args = ap.parse_args()
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit('mpirun not found: pip install "pydarknet[dist]"')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = synthetic.generate(tmp / "data", n_train=400, n_valid=80, size=128, classes=3, seed=args.seed)
        anchors = calc_anchors(str(data), 6, 128, 128, seed=0).anchors
        cfg = tmp / "shapes-tiny.cfg"
        cfg.write_text(starter_cfg(3, 128, 128, anchors, max_batches=args.iterations, batch=16, learning_rate=0.004))
        common = ["-m", "pydarknet", "train", str(cfg), str(data), "--workers", "1", "--quiet", "--map"]
        common += ["--map-every", str(args.map_every)]
        one, one_s = _train([sys.executable, *common, "--backup", str(tmp / "one")], args.threads, tmp / "one")
        per_rank = max(1, args.threads // args.ranks)
        command = [mpirun, "-n", str(args.ranks), sys.executable, *common, "--backup", str(tmp / "many")]
        many, many_s = _train(command, per_rank, tmp / "many")
    print(f"mAP@0.5, starter cfg 128x128, shapes seed {args.seed}, global batch 16, {args.iterations} iterations")
    print(f"{'iteration':>9s}  {'1 process':>9s}  {f'{args.ranks} ranks':>9s}")
    for iteration in sorted(set(one) | set(many)):
        a, b = one.get(iteration), many.get(iteration)
        print(f"{iteration:9d}  {'-' if a is None else f'{a:.4f}':>9s}  {'-' if b is None else f'{b:.4f}':>9s}")
    print(
        f"wall time: 1 process x {args.threads} threads {one_s:.0f} s, {args.ranks} ranks x {per_rank} {many_s:.0f} s"
    )
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps(
                {"seed": args.seed, "iterations": args.iterations, "one_process": one, f"ranks_{args.ranks}": many},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
