"""Run under ``mpirun -n 2`` by tests/test_distributed.py: a NaN in rank 1's images only. Every rank must skip
the same updates, keep identical parameters, name rank 1, and stop together after max_nonfinite iterations.
Each rank writes its findings to ``BACKUP/rank<R>.txt`` for the test to check (printed lines of two ranks
can interleave)."""

import pathlib
import sys

import numpy as np

from pydarknet.errors import TrainingError
from pydarknet.train.distributed import fingerprint
from pydarknet.train.trainer import Trainer, TrainOptions


def main(cfg, data, backup):
    lines = []
    trainer = Trainer(cfg, data, None, TrainOptions(backup=backup, workers=0, max_nonfinite=3), log=lines.append)
    rank = trainer.comm.rank
    real_batch = trainer.loader.batch

    def poisoned(iteration, width=None, height=None):
        images, truths = real_batch(iteration, width, height)
        if iteration >= 1 and rank == 1:
            images[0, 0, 5, 5] = np.nan
        return images, truths

    trainer.loader.batch = poisoned
    trainer.step()
    before = trainer.net.flat_params.copy()
    entry = trainer.step()
    unchanged = bool(np.array_equal(trainer.net.flat_params, before))
    report = [f"skipped={entry.skipped} unchanged={unchanged} params={fingerprint(before)}"]
    if rank == 0:
        report.append(f"log: {lines[-1]}")
    try:
        trainer.run()
    except TrainingError as e:
        report.append(f"stopped: {e}")
    (pathlib.Path(backup) / f"rank{rank}.txt").write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
