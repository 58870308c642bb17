"""NCCL for summing device buffers across the ranks of a GPU run, loaded at run time.

The engine is not linked against NCCL: it builds, imports and trains without it. A GPU run that sums its
gradients with NCCL loads ``libnccl.so.2`` when the run starts, from (in this order) the file named by
``$PYDARKNET_NCCL_LIBRARY``, the ``nvidia-nccl-cu13`` wheel (``pip install "pydarknet[dist]"``), or the system's
library path. The communicator is built the way NCCL documents: rank 0 creates the unique id, MPI broadcasts it
(:class:`pydarknet.train.distributed.Communicator`), every rank joins on its own GPU.

Every call is checked; NCCL's failures become :class:`~pydarknet.errors.DistributedError` with NCCL's own text.
A collective is enqueued on the network's CUDA stream and then waited for by polling (the stream's state and
NCCL's asynchronous error) against the run's time-out, so a dead or hung peer ends in an error naming the silent
ranks instead of a hang: on a time-out the communicator is aborted, which frees the GPU work stuck in it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pathlib
import time
from typing import Callable, List, Optional

import numpy as np

from pydarknet.errors import DistributedError

__all__ = ["NcclLibrary", "NcclCommunicator", "find_nccl", "share_unique_id", "FLOAT32", "FLOAT64"]

UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES
FLOAT32, FLOAT64 = 7, 8  # ncclFloat32, ncclFloat64
SUM = 0  # ncclSum
IN_PROGRESS = 7  # ncclInProgress: an asynchronous operation has not finished yet
REQUIRED_FUNCTIONS = (
    "ncclGetErrorString",
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclAllReduce",
    "ncclCommGetAsyncError",
    "ncclCommAbort",
    "ncclCommDestroy",
)


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * UNIQUE_ID_BYTES)]


def _wheel_candidates() -> List[pathlib.Path]:
    """libnccl.so.2 inside the nvidia-nccl-cu* wheels (the namespace package ``nvidia``), without importing them."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [pathlib.Path(p) / "nccl" / "lib" / "libnccl.so.2" for p in spec.submodule_search_locations]


def find_nccl() -> str:
    """The path (or loader name) of the NCCL library this process should load; DistributedError when none."""
    named = os.environ.get("PYDARKNET_NCCL_LIBRARY")
    if named:
        if not os.path.isfile(named):
            raise DistributedError(f"PYDARKNET_NCCL_LIBRARY={named}: no such file")
        return named
    for candidate in _wheel_candidates():
        if candidate.is_file():
            return str(candidate)
    system = ctypes.util.find_library("nccl")
    if system:
        return system
    raise DistributedError(
        'NCCL was not found: install it with pip install "pydarknet[dist]" (the nvidia-nccl-cu13 wheel), or name '
        "the library file in PYDARKNET_NCCL_LIBRARY"
    )


class NcclLibrary:
    """The functions of a loaded NCCL library, each checked."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or find_nccl()
        try:
            lib = ctypes.CDLL(self.path)
        except OSError as exc:
            raise DistributedError(f"NCCL library {self.path} cannot be loaded: {exc}") from None
        for name in REQUIRED_FUNCTIONS:
            if not hasattr(lib, name):
                raise DistributedError(f"{self.path} is not an NCCL library (it has no {name})")
        self._lib = lib
        lib.ncclGetErrorString.restype = ctypes.c_char_p
        lib.ncclGetErrorString.argtypes = [ctypes.c_int]
        lib.ncclGetVersion.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.ncclGetUniqueId.argtypes = [ctypes.POINTER(_UniqueId)]
        lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, _UniqueId, ctypes.c_int]
        lib.ncclAllReduce.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.ncclCommGetAsyncError.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        lib.ncclCommAbort.argtypes = [ctypes.c_void_p]
        lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            text = self._lib.ncclGetErrorString(int(result)).decode(errors="replace")
            raise DistributedError(f"NCCL failed while {what}: {text} (ncclResult {result})")

    @property
    def version(self) -> tuple:
        """(major, minor, patch)."""
        code = ctypes.c_int()
        self.check(self._lib.ncclGetVersion(ctypes.byref(code)), "reading its version")
        v = code.value
        # NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + minor*100 + patch before.
        return (v // 10000, v % 10000 // 100, v % 100) if v >= 20900 else (v // 1000, v % 1000 // 100, v % 100)

    def unique_id(self) -> bytes:
        uid = _UniqueId()
        self.check(self._lib.ncclGetUniqueId(ctypes.byref(uid)), "creating the communicator's unique id")
        return bytes(uid)  # the whole 128 bytes (the .internal field would stop at the first zero byte)


def share_unique_id(comm, library: NcclLibrary) -> bytes:
    """Rank 0's new NCCL unique id, on every rank (broadcast over MPI)."""
    box = np.zeros(UNIQUE_ID_BYTES, np.uint8)
    if comm.is_root:
        box[:] = np.frombuffer(library.unique_id(), np.uint8)
    comm.broadcast(box, 0, "sharing the NCCL unique id")
    return box.tobytes()


class NcclCommunicator:
    """An NCCL communicator over the ranks of ``comm`` (a Communicator), one GPU per rank.

    ``set_device``: makes the rank's GPU current in this thread (NCCL creates its state on the current device).
    """

    def __init__(self, comm, device: int, set_device: Callable[[int], None], library: Optional[NcclLibrary] = None):
        self.comm = comm
        self.library = library or NcclLibrary()
        self._handle = ctypes.c_void_p()
        unique = share_unique_id(comm, self.library)
        set_device(int(device))
        # Joining blocks until every rank has joined; the broadcast above has just shown that all of them are alive.
        uid = _UniqueId.from_buffer_copy(unique)
        self.library.check(
            self.library._lib.ncclCommInitRank(ctypes.byref(self._handle), comm.size, uid, comm.rank),
            f"rank {comm.rank} joined the communicator of {comm.size} ranks on GPU {device}",
        )

    def allreduce_sum(
        self, pointer: int, count: int, dtype: int, stream: int, idle: Callable[[], bool], what: str
    ) -> None:
        """Sum ``count`` values of ``dtype`` at the device address ``pointer`` over the ranks, in place, enqueued on
        ``stream`` after the work already there; returns when ``idle()`` says the stream has finished."""
        lib = self.library._lib
        self.library.check(
            lib.ncclAllReduce(
                ctypes.c_void_p(pointer),
                ctypes.c_void_p(pointer),
                ctypes.c_size_t(count),
                dtype,
                SUM,
                self._handle,
                ctypes.c_void_p(stream),
            ),
            what,
        )
        self._wait(idle, what)

    def _wait(self, idle: Callable[[], bool], what: str) -> None:
        start = time.monotonic()
        pause = 20e-6
        state = ctypes.c_int()
        while not idle():
            self.library.check(self.library._lib.ncclCommGetAsyncError(self._handle, ctypes.byref(state)), what)
            if state.value not in (0, IN_PROGRESS):
                self.abort()
                self.library.check(state.value, what)
            waited = time.monotonic() - start
            if waited > self.comm.timeout:
                self.abort()  # frees the GPU work stuck in the collective
                self.comm._timed_out(what)
            if waited > 1e-3:
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)

    def abort(self) -> None:
        if self._handle:
            self.library._lib.ncclCommAbort(self._handle)
            self._handle = ctypes.c_void_p()

    def close(self) -> None:
        if self._handle:
            self.library._lib.ncclCommDestroy(self._handle)
            self._handle = ctypes.c_void_p()
