"""What the multi-process tests share: the MPI launcher beside this Python (MPICH's wheel puts it there), the
folder the ranks run in, and the skip mark for machines without mpi4py or mpirun."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
# `python -m pydarknet` puts the working folder first on the import path: the ranks run outside the checkout, so
# that they import the installed package with its compiled engine however it was installed (editable or not).
RUN_DIR = tempfile.gettempdir()


def have_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return MPIRUN is not None


needs_mpi = pytest.mark.skipif(not have_mpi(), reason="needs mpi4py and mpirun (pip install 'pydarknet[dist]')")


def tiny_training_run(folder):
    """A 64x64 starter cfg with 2 classes and 40 synthetic training images: (cfg path, .data path).

    No burn-in and no steps: the 5 updates move the weights at the full rate (loss 58 -> 10). A larger rate makes
    the run chaotic: at 0.01 float rounding differences grow tenfold per step."""
    from pydarknet.data import synthetic
    from pydarknet.train.starter import starter_cfg

    data = synthetic.generate(folder / "data", n_train=40, n_valid=4, size=64, classes=2, seed=5)
    cfg = folder / "tiny.cfg"
    text = starter_cfg(2, 64, 64, max_batches=5, batch=16, learning_rate=0.002)
    cfg.write_text(text.replace("burn_in=200", "burn_in=0").replace("steps=4,4", "steps=1000,2000"))
    return cfg, data
