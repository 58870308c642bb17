"""NCCL and the gradient exchange of data-parallel training, as far as a machine without a GPU can run them: the
library is found in the nvidia-nccl wheel and loaded at run time (version, unique ids), bad library paths are
refused with a DistributedError, rank 0's unique id reaches every rank over MPI, each rank of a machine gets its
own GPU, and a CUDA network (the CPU emulation of CUDA here) sums its device gradients over two MPI ranks through
host memory. Joining an NCCL communicator and its all-reduce need real GPUs: tools/gpu_check.sh runs them there."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pydarknet
from pydarknet import _core
from pydarknet.errors import DistributedError
from pydarknet.train.distributed import Communicator, GradientExchange, device_for_rank, local_rank, nccl_refusals

MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")


def _nccl_wheel():
    try:
        return importlib.metadata.version("nvidia-nccl-cu13")
    except importlib.metadata.PackageNotFoundError:
        return None


needs_nccl = pytest.mark.skipif(_nccl_wheel() is None, reason="needs the nvidia-nccl-cu13 wheel")
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="needs mpi4py and mpirun (pip install 'pydarknet[dist]')")
needs_cuda = pytest.mark.skipif(_core.cuda_device_count() == 0, reason="needs a CUDA device (or the CUDA emulation)")


@needs_nccl
def test_the_wheels_library_loads_and_reports_its_version(monkeypatch):
    from pydarknet.train.nccl import NcclLibrary, find_nccl

    monkeypatch.delenv("PYDARKNET_NCCL_LIBRARY", raising=False)
    assert find_nccl().endswith(os.path.join("nccl", "lib", "libnccl.so.2"))
    library = NcclLibrary()
    major, minor, patch = library.version
    assert _nccl_wheel().split(".")[:2] == [str(major), str(minor)]
    first, second = library.unique_id(), library.unique_id()
    assert len(first) == 128 and first != second and any(first)


def test_a_bad_library_path_is_refused(monkeypatch, tmp_path):
    from pydarknet.train.nccl import NcclLibrary, find_nccl

    monkeypatch.setenv("PYDARKNET_NCCL_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(DistributedError, match="missing.so: no such file"):
        find_nccl()
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"not a shared object")
    with pytest.raises(DistributedError, match="cannot be loaded"):
        NcclLibrary(str(junk))
    libm = "libm.so.6"  # a real shared library without NCCL's functions
    with pytest.raises(DistributedError, match="is not an NCCL library"):
        NcclLibrary(libm)


def test_each_rank_of_a_machine_gets_its_own_gpu():
    assert local_rank({}) == 0
    assert local_rank({"MPI_LOCALRANKID": "3"}) == 3
    assert local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == 1
    assert local_rank({"SLURM_LOCALID": "5"}) == 5
    assert device_for_rank("cuda", 4, {"MPI_LOCALRANKID": "6"}) == "cuda:2"
    assert device_for_rank("cuda:1", 4, {"MPI_LOCALRANKID": "6"}) == "cuda:1"  # an explicit index is kept
    assert device_for_rank("cpu", 4, {"MPI_LOCALRANKID": "6"}) == "cpu"


def test_ranks_that_cannot_use_nccl_are_named():
    assert nccl_refusals([(None, "a", 0), (None, "a", 1), (None, "b", 0)]) == []
    assert nccl_refusals([(None, "a", 0), ("no library", "a", 1)]) == [(1, "no library")]
    # two ranks on one GPU of a machine (a one-GPU machine with two ranks): NCCL refuses that
    assert nccl_refusals([(None, "a", 0), (None, "a", 0)]) == [
        (1, "it shares GPU 0 on a with rank 0; NCCL needs a GPU per rank")
    ]


def test_nccl_needs_a_network_on_a_gpu():
    net = pydarknet.load("cfg/yolov3-tiny.cfg")
    single = Communicator(None)
    with pytest.raises(DistributedError, match="train on a GPU"):
        GradientExchange(single, net, backend="nccl")
    with pytest.raises(ValueError, match="use one of auto, mpi, nccl"):
        GradientExchange(single, net, backend="gloo")
    exchange = GradientExchange(single, net, backend="auto")
    assert exchange.backend == "mpi"
    before = net.grads.copy()
    exchange.sum()  # one process: nothing to sum
    np.testing.assert_array_equal(net.grads, before)


RANKS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import pydarknet
    from pydarknet import _core
    from pydarknet.errors import DistributedError
    from pydarknet.train.distributed import Communicator, GradientExchange

    comm = Communicator.create(timeout=60)
    if sys.argv[1] == "unique-id":
        from pydarknet.train.nccl import NcclLibrary, share_unique_id

        uid = share_unique_id(comm, NcclLibrary())
        everyone = comm.allgather_objects(uid)
        assert len(uid) == 128 and any(uid) and everyone == [uid] * comm.size, everyone
        print(f"rank {comm.rank} unique id {uid[:8].hex()}")
    else:
        net = pydarknet.load("cfg/yolov3-tiny.cfg", device="cuda")
        try:
            GradientExchange(comm, net, backend="nccl")
        except DistributedError as exc:
            print(f"rank {comm.rank} refused: {exc}")
        exchange = GradientExchange(comm, net, backend="auto")
        n = net.desc.param_count
        mine = np.arange(n, dtype=np.float32) * (comm.rank + 1)
        net._cuda.set_grads(mine)
        exchange.sum()
        summed = net.grads
        expected = np.arange(n, dtype=np.float32) * sum(r + 1 for r in range(comm.size))
        assert np.array_equal(summed, expected), np.abs(summed - expected).max()
        print(f"rank {comm.rank} summed {n} device gradients through {exchange.backend}")
    """
)


def _ranks(tmp_path, mode):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        env.pop(name, None)
    return subprocess.run(
        [MPIRUN, "-n", "2", sys.executable, str(script), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


@needs_mpi
@needs_nccl
def test_rank_zeros_unique_id_reaches_every_rank(tmp_path):
    run = _ranks(tmp_path, "unique-id")
    assert run.returncode == 0, run.stdout + run.stderr
    # The launcher forwards both ranks' output to one stream, where their lines can run together.
    found = dict(re.findall(r"rank (\d) unique id ([0-9a-f]{16})", run.stdout))
    assert sorted(found) == ["0", "1"] and found["0"] == found["1"], run.stdout


@needs_mpi
@needs_cuda
def test_device_gradients_are_summed_over_two_ranks(tmp_path):
    run = _ranks(tmp_path, "sum")
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.count("summed") == 2
    if _core.cuda_emulated:
        # No GPU for NCCL in the emulation: every rank refuses the explicit choice the same way, and auto falls back
        # to host memory over MPI.
        assert out.count("refused: --dist-backend nccl: rank 0 cannot use NCCL: this engine runs its CUDA") == 2
        assert out.count("through mpi") == 2
    else:
        assert out.count("through nccl") == 2
