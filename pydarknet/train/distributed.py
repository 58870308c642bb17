"""Synchronous data-parallel training over MPI (``mpirun -n N pydarknet train ...`` or SLURM's ``srun``).

The transport is MPI (mpi4py); this module only decides what is exchanged and when:

* **Launch**: a process started by ``mpirun``/``mpiexec`` (MPICH, Open MPI) or ``srun`` sees its world size in
  the environment; with a world of one (a plain ``pydarknet train``) MPI is never imported, so mpi4py is an
  optional extra (``pip install "pydarknet[dist]"``).
* **What each rank computes**: rank ``r`` of ``N`` loads and augments only its shard of each global batch
  (:func:`shard_slots`) and runs forward and backward on it; the gradient buffers are summed by an all-reduce
  before the optimizer step. Darknet's update divides the summed gradient by the cfg's ``batch`` (the global
  batch here), so the sum over ranks is the gradient of the single-process batch: the same images, the same
  augmentation, the same update, up to the order of float additions.
* **Time-outs**: every exchange is non-blocking and polled against a deadline (``timeout`` seconds). When it
  passes, the ranks that are still alive take a roll call and the error names the ranks that did not answer
  (hung, stopped, or dead under a launcher that does not end the job by itself).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pydarknet.errors import DistributedError

__all__ = [
    "Communicator",
    "GradientExchange",
    "device_for_rank",
    "fingerprint",
    "launched_world_size",
    "local_rank",
    "shard_slots",
]

# Environment variables that launchers set to the number of processes they started.
WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")
ROLL_CALL_TAG = 7301
ROLL_CALL_SECONDS = 5.0  # how long the live ranks wait for each other's answer after a time-out


def launched_world_size(environ: Optional[Dict[str, str]] = None) -> int:
    """How many processes the launcher started (1 when none did), from the launchers' environment variables."""
    environ = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.strip().isdigit() and int(value) > 1:
            return int(value)
    return 1


def shard_slots(rank: int, world: int, batch: int, subdivisions: int) -> List[int]:
    """The slots of each global batch that ``rank`` computes. The global batch of ``batch`` images runs in
    ``subdivisions`` mini-batches of ``m = batch / subdivisions``; each rank takes ``m / world`` consecutive slots
    of every mini-batch, so that one synchronized mini-batch over all ranks holds exactly the images of the
    single-process mini-batch (what synchronized batch-norm needs). With one subdivision rank ``r`` gets slots
    ``r*b .. (r+1)*b - 1`` (``b = batch / world``)."""
    if batch % subdivisions:
        raise DistributedError(f"batch {batch} is not a multiple of subdivisions {subdivisions}")
    mini = batch // subdivisions
    if mini % world:
        raise DistributedError(
            f"the mini-batch (batch/subdivisions = {mini}) is not a multiple of the {world} ranks: every rank must "
            f"get the same number of images; change batch, subdivisions or the number of processes"
        )
    local = mini // world
    return [s * mini + rank * local + j for s in range(subdivisions) for j in range(local)]


def fingerprint(*parts: Any) -> str:
    """A short digest of arrays, bytes and plain values (for comparing ranks' set-ups)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, bytes):
            digest.update(part)
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class Communicator:
    """The processes of a data-parallel run. ``comm``: an mpi4py communicator, or None for a single process (every
    operation is then a no-op); ``timeout``: seconds any exchange may wait for the other ranks."""

    def __init__(self, comm=None, timeout: float = 600.0):
        if timeout <= 0:
            raise ValueError(f"the distributed time-out must be positive, got {timeout}")
        self.timeout = float(timeout)
        self._comm = comm
        self._control = comm.Dup() if comm is not None else None  # roll calls never mix with the collectives
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @classmethod
    def create(cls, timeout: float = 600.0, environ: Optional[Dict[str, str]] = None) -> Communicator:
        """The communicator of this process: MPI's world when a launcher started several processes, else a
        single-process one (MPI not imported)."""
        launched = launched_world_size(environ)
        if launched == 1:
            return cls(None, timeout)
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise DistributedError(
                f"this process is one of {launched} started by a launcher (mpirun, srun), but mpi4py cannot be "
                f'imported ({exc}); install the distributed extra: pip install "pydarknet[dist]"'
            ) from None
        comm = MPI.COMM_WORLD
        if comm.Get_size() != launched:
            raise DistributedError(
                f"the launcher started {launched} processes but MPI sees a world of {comm.Get_size()}: mpi4py is "
                f"probably built against another MPI than the one that launched it (use that MPI's mpirun)"
            )
        return cls(comm, timeout)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # ----- waiting with a deadline --------------------------------------------------------------------------
    def _wait(self, request, what: str) -> None:
        start = time.monotonic()
        pause = 20e-6
        while not request.Test():
            waited = time.monotonic() - start
            if waited > self.timeout:
                self._timed_out(what)
            # Spin briefly (a collective usually completes within microseconds), then back off to at most 1 ms
            # so that a waiting rank leaves the CPU to ranks that still compute on the same machine.
            if waited > 1e-3:
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)

    def _timed_out(self, what: str) -> None:
        silent = self.roll_call()
        if silent:
            names = ", ".join(str(r) for r in silent)
            raise DistributedError(
                f"rank {self.rank}: rank{'s' if len(silent) > 1 else ''} {names} did not answer within "
                f"{self.timeout:g} s while {what} (killed, hung or stopped)",
                rank=silent[0],
            )
        raise DistributedError(
            f"rank {self.rank}: the other ranks did not complete {what} within {self.timeout:g} s, although all of "
            f"them answer: they are at different points of the run (raise the time-out if one is only slow)"
        )

    def roll_call(self, seconds: float = ROLL_CALL_SECONDS) -> List[int]:
        """Ranks that do not answer within ``seconds``: every live rank sends its number to all others and
        listens for theirs."""
        if not self.distributed:
            return []
        me = np.array([self.rank], np.int64)
        sends = [self._control.Isend(me, dest=r, tag=ROLL_CALL_TAG) for r in range(self.size) if r != self.rank]
        boxes = {r: np.zeros(1, np.int64) for r in range(self.size) if r != self.rank}
        receives = {r: self._control.Irecv(boxes[r], source=r, tag=ROLL_CALL_TAG) for r in boxes}
        deadline = time.monotonic() + seconds
        heard = set()
        while len(heard) < len(receives) and time.monotonic() < deadline:
            for r, req in receives.items():
                if r not in heard and req.Test():
                    heard.add(r)
            time.sleep(0.01)
        del sends  # a dead peer never takes them; the process is about to stop anyway
        return sorted(set(receives) - heard)

    # ----- collectives --------------------------------------------------------------------------------------
    def allreduce_sum(self, array: np.ndarray, what: str = "an all-reduce") -> np.ndarray:
        """Replace ``array`` (contiguous, writable) by its sum over all ranks, in place."""
        if self.distributed:
            from mpi4py import MPI

            self._wait(self._comm.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM), what)
        return array

    def broadcast(self, array: np.ndarray, root: int = 0, what: str = "a broadcast") -> np.ndarray:
        """Replace ``array`` on every rank by root's, in place."""
        if self.distributed:
            self._wait(self._comm.Ibcast(array, root=root), what)
        return array

    def allgather_objects(self, value: Any, what: str = "an all-gather") -> List[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        data = np.frombuffer(pickle.dumps(value), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        sizes[self.rank] = data.size
        self.allreduce_sum(sizes, what)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gathered = np.zeros(int(sizes.sum()), np.uint8)
        gathered[offsets[self.rank] : offsets[self.rank] + data.size] = data
        # Disjoint pieces, zeros elsewhere: a sum is an all-gather that needs no other primitive.
        self.allreduce_sum(gathered, what)
        return [pickle.loads(gathered[o : o + n].tobytes()) for o, n in zip(offsets, sizes)]

    def any(self, flag: bool, what: str = "agreeing on a decision") -> List[int]:
        """The ranks whose ``flag`` is true (the same list on every rank)."""
        flags = np.zeros(self.size, np.int32)
        flags[self.rank] = bool(flag)
        self.allreduce_sum(flags, what)
        return [int(r) for r in np.flatnonzero(flags)]

    def barrier(self, what: str = "a barrier") -> None:
        if self.distributed:
            self._wait(self._comm.Ibarrier(), what)

    def check_same(self, values: Dict[str, Any], what: str = "the set-up") -> None:
        """Raise a DistributedError on every rank when some rank's ``values`` differ from rank 0's (names the
        first rank and field that differ)."""
        everyone = self.allgather_objects(values, f"comparing {what}")
        reference = everyone[0]
        for rank, theirs in enumerate(everyone[1:], start=1):
            for key in reference:
                if theirs.get(key) != reference[key]:
                    raise DistributedError(
                        f"rank {rank} has another {key} than rank 0 ({theirs.get(key)!r} vs {reference[key]!r}): "
                        f"every rank must train the same cfg on the same weights and data",
                        rank=rank,
                    )

    def describe(self) -> List[str]:
        """``rank R: pid P on HOST`` for every rank (for mapping a launcher's PID messages to ranks)."""
        mine = (self.rank, os.getpid(), socket.gethostname())
        return [f"rank {r}: pid {p} on {h}" for r, p, h in self.allgather_objects(mine, "listing the ranks")]

    def abort(self, code: int = 1) -> None:
        """End every process of the run (after an error on this rank: the others may be waiting in a collective
        that can no longer complete). Only for the command line; a single process just returns."""
        if self.distributed:
            self._comm.Abort(code)

    # ----- synchronized batch-norm ----------------------------------------------------------------------------
    def batch_norm_reducer(self):
        """The callable for :func:`pydarknet.core.network.set_batch_norm_reducer`: sums each batch-norm layer's
        partial statistics over the ranks."""

        def reduce(layer: int, phase: int, stats: np.ndarray) -> None:
            self.allreduce_sum(stats, f"the {'forward' if phase == 0 else 'backward'} batch-norm sums of layer {layer}")

        return reduce


def shard_sizes_text(slots: Sequence[int]) -> str:
    """``slots 0-7`` style description of a shard, for the start-up log."""
    runs, start = [], None
    for i, s in enumerate(slots):
        if start is None:
            start = s
        if i + 1 == len(slots) or slots[i + 1] != s + 1:
            runs.append(f"{start}-{s}" if s != start else f"{s}")
            start = None
    return ",".join(runs)


# ----- which GPU each rank uses --------------------------------------------------------------------------------
# Environment variables that launchers set to the rank's index among the ranks on its own machine.
LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK", "SLURM_LOCALID")


def local_rank(environ: Optional[Dict[str, str]] = None) -> int:
    """This process's index among the ranks on its machine (0 when no launcher says)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def device_for_rank(device: str, gpus: int, environ: Optional[Dict[str, str]] = None) -> str:
    """The device a rank trains on: ``cuda`` (no index) gives each rank of a machine its own GPU, ``local rank
    mod gpus``; an explicit ``cuda:N`` or ``cpu`` is kept."""
    if device == "cuda" and gpus > 0:
        return f"cuda:{local_rank(environ) % gpus}"
    return device


def nccl_refusals(places: Sequence[tuple]) -> List[tuple]:
    """(rank, why) for the ranks that cannot join an NCCL communicator, from every rank's (why it cannot load or
    use NCCL or None, host name, GPU index). NCCL refuses two ranks on one GPU; summing through host memory over MPI
    still works there (several ranks on a one-GPU machine)."""
    refusals = [(r, why) for r, (why, _, _) in enumerate(places) if why]
    owner: Dict[tuple, int] = {}
    for r, (_, host, gpu) in enumerate(places):
        if (host, gpu) in owner:
            refusals.append(
                (r, f"it shares GPU {gpu} on {host} with rank {owner[host, gpu]}; NCCL needs a GPU per rank")
            )
        owner.setdefault((host, gpu), r)
    return sorted(refusals)


# ----- summing the gradients of a network ----------------------------------------------------------------------
GRADIENT_BACKENDS = ("auto", "mpi", "nccl")


class GradientExchange:
    """Sums a network's flat gradient buffer over the ranks, in place, once per iteration.

    A network on the CPU: MPI on the buffer itself. A network on a CUDA GPU: NCCL on the device buffer, enqueued on
    the network's stream after the backward pass, when ``backend`` is ``nccl``, or ``auto`` and every rank has a
    real GPU and can load NCCL; otherwise (``mpi``, or ``auto`` in the CUDA emulation or without NCCL) the buffer
    goes through host memory: downloaded, summed over MPI, uploaded. The ranks agree on the choice before any of
    them builds an NCCL communicator.
    """

    def __init__(self, comm: Communicator, net, backend: str = "auto"):
        if backend not in GRADIENT_BACKENDS:
            raise ValueError(f"gradient exchange {backend!r}: use one of {', '.join(GRADIENT_BACKENDS)}")
        self.comm = comm
        self.net = net
        self._nccl = None
        self.backend = "mpi"
        cuda = getattr(net, "_cuda", None)
        if cuda is None:
            if backend == "nccl":
                raise DistributedError("--dist-backend nccl sums device buffers: train on a GPU (--device cuda)")
            return
        if backend == "mpi" or not comm.distributed:
            return
        from pydarknet import _core
        from pydarknet.train.nccl import NcclCommunicator, NcclLibrary

        library, why = None, None
        if _core.cuda_emulated:
            why = "this engine runs its CUDA kernels in the CPU emulation, where NCCL has no GPU to use"
        else:
            try:
                library = NcclLibrary()
            except DistributedError as exc:
                why = str(exc)
        places = comm.allgather_objects((why, socket.gethostname(), cuda.device), "choosing how to sum the gradients")
        missing = nccl_refusals(places)
        if missing:
            if backend == "nccl":
                rank, reason = missing[0]
                raise DistributedError(f"--dist-backend nccl: rank {rank} cannot use NCCL: {reason}", rank=rank)
            return
        self._nccl = NcclCommunicator(comm, cuda.device, _core.cuda_set_device, library)
        self.backend = "nccl"

    def sum(self, what: str = "summing the gradients") -> None:
        if not self.comm.distributed:
            return
        cuda = getattr(self.net, "_cuda", None)
        if cuda is None:
            self.comm.allreduce_sum(self.net.grads, what)
        elif self._nccl is not None:
            from pydarknet.train.nccl import FLOAT32

            count = int(self.net.desc.param_count)
            self._nccl.allreduce_sum(cuda.grads_pointer, count, FLOAT32, cuda.stream_pointer, cuda.stream_idle, what)
        else:
            grads = cuda.grads  # a host copy
            self.comm.allreduce_sum(grads, what)
            cuda.set_grads(grads)

    def close(self) -> None:
        if self._nccl is not None:
            self._nccl.close()
            self._nccl = None
