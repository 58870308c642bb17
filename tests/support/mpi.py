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
