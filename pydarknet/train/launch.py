"""``pydarknet train ... --gpus 0,1,2,3``: data-parallel training on the GPUs of one machine without typing
``mpirun`` (Darknet's ``-gpus``).

The launcher is a thin layer over the MPI ranks of :mod:`pydarknet.train.distributed`: it starts one rank per
listed GPU through MPICH's ``mpirun`` (the one beside the running Python first, then the one on ``PATH``), waits,
and returns the ranks' exit status. Each rank gets its GPU on its own command line: the command is an MPMD one,
``mpirun -n 1 RANK0 : -n 1 RANK1 : ...``, where rank ``r`` runs the same train command with ``--device cuda:<the
r-th listed GPU>`` (MPI numbers the parts of an MPMD command in order, so the ranks take the GPUs in list order;
an explicit ``cuda:N`` is what :func:`~pydarknet.train.distributed.device_for_rank` keeps as it is). The same GPU
may be listed twice: the ranks then share it and sum their gradients through host memory over MPI (NCCL refuses
two ranks on one GPU, so ``--dist-backend auto`` does not pick it).

Signals: the ranks run in a session of their own, so a Ctrl-C in the terminal reaches only the launcher, which
passes SIGINT and SIGTERM on to ``mpirun`` once per signal received (MPICH's ``mpirun`` hands them to every
rank; a second Ctrl-C makes it force the end), and kills ``mpirun`` if it has not ended ``grace`` seconds later.
``mpirun`` is started with the parent-death signal SIGTERM (Linux), so a launcher that is killed outright
(SIGKILL) still takes ``mpirun`` and, with it, every rank down.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from typing import Dict, List, Optional, Sequence

from pydarknet.errors import DeviceError, LaunchError, UsageError
from pydarknet.train.distributed import launched_world_size

__all__ = [
    "check_gpus",
    "check_not_launched",
    "find_launcher",
    "find_mpirun",
    "mpirun_command",
    "parse_gpus",
    "rank_environment",
    "run_ranks",
]

INSTALL_HINT = 'pip install "pydarknet[dist]"'
# The folder that holds this pydarknet package: each rank imports exactly this copy of pydarknet (not a source
# checkout that happens to be its working folder, which `python -m` would put first on the import path).
PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
RANK_MAIN = "import sys; sys.path[0] = {root!r}; from pydarknet.cli.main import main; sys.exit(main())"


def parse_gpus(text: str) -> List[int]:
    """``"0,1,2,3"`` -> ``[0, 1, 2, 3]``. As Darknet's ``-gpus``, the value is a list of GPU indices: ``"4"`` is
    GPU 4 alone, not four GPUs. An index may repeat (those ranks share the GPU)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise UsageError("--gpus needs GPU indices separated by commas, e.g. --gpus 0,1,2,3")
    for p in parts:
        if not p.isdigit():
            what = "an empty item" if not p else repr(p)
            raise UsageError(f"--gpus {text}: {what} is not a GPU index (0, 1, ...); write e.g. --gpus 0,1,2,3")
    return [int(p) for p in parts]


def check_gpus(gpus: Sequence[int], count: int, built_with_cuda: bool = True) -> None:
    """A :class:`DeviceError` naming the first listed GPU that this machine does not have (``count``: the
    engine's ``cuda_device_count()``, which counts the GPUs that ``CUDA_VISIBLE_DEVICES`` leaves visible)."""
    listed = ",".join(str(g) for g in gpus)
    if count < 1:
        raise DeviceError(
            f"--gpus {listed}: no CUDA GPU is available on this machine"
            + ("" if built_with_cuda else " (and this build of the engine has no CUDA support)")
        )
    for g in gpus:
        if g >= count:
            have = "GPU 0" if count == 1 else f"GPUs 0 to {count - 1}"
            raise DeviceError(f"--gpus {listed}: there is no GPU {g}; this machine has {count} CUDA GPU(s), {have}")


def find_mpirun(python: Optional[str] = None) -> Optional[str]:
    """MPICH's ``mpirun`` beside ``python`` (where ``pip install mpich`` puts it in a virtual environment), else
    the one on ``PATH``; None when there is none."""
    python = sys.executable if python is None else python
    return shutil.which("mpirun", path=os.path.dirname(python)) or shutil.which("mpirun")


def check_not_launched(environ: Optional[Dict[str, str]] = None) -> None:
    """A :class:`LaunchError` when this process is already one of several ranks started by a launcher: ``--gpus``
    would start ranks inside a rank."""
    world = launched_world_size(environ)
    if world > 1:
        raise LaunchError(
            f"--gpus starts its own ranks, but this process is already one of {world} started by a launcher "
            "(mpirun, srun): under a launcher use --device cuda (each rank takes its own GPU) instead of --gpus"
        )


def find_launcher(python: Optional[str] = None) -> str:
    """The ``mpirun`` to start the ranks with (:func:`find_mpirun`); a :class:`LaunchError` when it or mpi4py
    (which the ranks need) is missing."""
    if find_spec("mpi4py") is None:
        raise LaunchError(
            f"--gpus with several GPUs runs one process per GPU over MPI: mpi4py is missing ({INSTALL_HINT})"
        )
    mpirun = find_mpirun(python)
    if mpirun is None:
        raise LaunchError(
            f"--gpus with several GPUs runs one process per GPU over MPI, but no mpirun was found beside "
            f"{python or sys.executable} nor on PATH ({INSTALL_HINT} brings MPICH's)"
        )
    return mpirun


def mpirun_command(mpirun: str, rank_argvs: Sequence[Sequence[str]], python: Optional[str] = None) -> List[str]:
    """The MPMD command that starts rank ``r`` as ``python -c RANK_MAIN *rank_argvs[r]``: rank r's arguments are
    its own (its ``--device``), in order."""
    python = sys.executable if python is None else python
    command = [mpirun]
    for r, argv in enumerate(rank_argvs):
        if r:
            command.append(":")
        command += ["-n", "1", python, "-c", RANK_MAIN.format(root=PACKAGE_ROOT), *argv]
    return command


def rank_environment(ranks: int, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The ranks' environment: this one, with ``OMP_NUM_THREADS`` set to the CPUs divided among the ranks unless
    the user set it (each rank's OpenMP would otherwise start a thread per CPU: ranks x CPUs threads)."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, ranks)))
    return env


def _parent_death_signal():
    """libc's ``prctl``, looked up here in the parent (the child between fork and exec should only call it), or
    None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _start_child(prctl, parent: int, signals: Sequence[int]) -> None:
    """In the child before exec: unblock ``signals`` (exec keeps a blocked mask; the handlers this process
    installed are reset to the defaults by exec), then ask Linux to send SIGTERM when the launcher dies, and end
    now if it already has. Without prctl that cannot be asked; the launcher's own signal forwarding still works."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def run_ranks(command: Sequence[str], env: Optional[Dict[str, str]] = None, grace: float = 30.0) -> int:
    """Run the launcher ``command`` (:func:`mpirun_command`) to its end and return its exit status: the ranks'
    status as ``mpirun`` reports it, or 128 + N when it was ended by signal N or when this process received
    SIGINT or SIGTERM (N) and the ranks did not finish cleanly. Those two signals are passed on to ``mpirun``;
    if it still runs ``grace`` seconds after the first, it is killed (and its process manager ends the ranks).

    The two signals are caught from before ``mpirun`` starts (one that arrives while it starts is passed on once
    it runs) and unblocked here and in ``mpirun``: a launcher started with them blocked or ignored, as a
    background job of a script is, still hears them and hands ``mpirun`` their default behaviour."""
    parent, prctl = os.getpid(), _parent_death_signal()
    forwarded = (signal.SIGINT, signal.SIGTERM)
    proc: Optional[subprocess.Popen] = None
    received: List[tuple] = []  # (signal, when)
    early: List[int] = []  # received before mpirun had started

    def forward(signum, frame):
        received.append((signum, time.monotonic()))
        if proc is None:
            early.append(signum)
            return
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    handlers, mask = {}, None
    if threading.current_thread() is threading.main_thread():
        for signum in forwarded:
            handlers[signum] = signal.signal(signum, forward)
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
    try:
        proc = subprocess.Popen(
            list(command),
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches only this process, which passes it on once
            preexec_fn=lambda: _start_child(prctl, parent, forwarded),
        )
        for signum in early:  # the handler no longer adds to it: proc is set
            proc.send_signal(signum)
        while True:
            try:
                status = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if received and time.monotonic() - received[0][1] > grace:
                    proc.kill()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if proc is not None and proc.poll() is None:  # an exception in this process: leave nothing behind
            proc.kill()
            proc.wait()
    if received and status != 0:
        # Interrupted: MPICH's mpirun reports the signal's number (15), a rank its own code (130 after Ctrl-C);
        # a shell's convention tells a script what happened.
        return 128 + received[0][0]
    return 128 - status if status < 0 else status
