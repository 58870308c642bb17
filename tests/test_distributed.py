"""Data-parallel training: the shard of each rank, synchronized batch-norm in the engine, and real multi-process
runs under ``mpirun`` (2 ranks x batch 8 against 1 rank x batch 16, a resume across a stop, a killed rank, a
hung rank, ranks that disagree). The multi-process tests need mpi4py and an ``mpirun`` beside the Python
interpreter (``pip install "pydarknet[dist]"``) and are skipped without them."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from support.mpi import MPIRUN, RUN_DIR, needs_mpi, tiny_training_run

import pydarknet
from pydarknet.core.network import set_batch_norm_reducer
from pydarknet.data import synthetic
from pydarknet.data.dataset import load_dataset
from pydarknet.data.loader import Loader
from pydarknet.errors import DistributedError
from pydarknet.train.distributed import Communicator, fingerprint, launched_world_size, shard_slots


# ----- shards ----------------------------------------------------------------------------------------------------
def test_shard_slots_cover_every_minibatch_once_in_order():
    assert shard_slots(0, 2, 16, 1) == list(range(8))
    assert shard_slots(1, 2, 16, 1) == list(range(8, 16))
    # Two subdivisions of 8: each rank takes 4 consecutive slots of each mini-batch.
    assert shard_slots(1, 2, 16, 2) == [4, 5, 6, 7, 12, 13, 14, 15]
    every = sorted(s for r in range(4) for s in shard_slots(r, 4, 24, 3))
    assert every == list(range(24))
    with pytest.raises(DistributedError, match="not a multiple of the 3 ranks"):
        shard_slots(0, 3, 16, 1)


def test_launched_world_size_reads_the_launchers_variables():
    assert launched_world_size({}) == 1
    assert launched_world_size({"PMI_SIZE": "1"}) == 1
    assert launched_world_size({"PMI_SIZE": "4"}) == 4
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert launched_world_size({"SLURM_STEP_NUM_TASKS": "8"}) == 8


def test_single_process_communicator_needs_no_mpi():
    comm = Communicator.create(environ={})
    assert (comm.rank, comm.size, comm.distributed) == (0, 1, False)
    a = np.arange(4, dtype=np.float32)
    assert comm.allreduce_sum(a) is a and a.tolist() == [0, 1, 2, 3]
    assert comm.allgather_objects({"x": 1}) == [{"x": 1}]
    comm.check_same({"cfg": "abc"})
    assert fingerprint(np.zeros(3)) != fingerprint(np.zeros(4))
    with pytest.raises(ValueError):
        Communicator(None, timeout=0)


def test_launched_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `from mpi4py import MPI` fail as if not installed
    with pytest.raises(DistributedError, match=r"one of 4 started by a launcher.*pydarknet\[dist\]"):
        Communicator.create(environ={"PMI_SIZE": "4"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_training_run(tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_shards_are_the_single_process_batch(tiny, workers):
    cfg, data = tiny
    ds = load_dataset(str(data))
    with Loader.from_dataset(ds, str(cfg), batch=16, seed=3, problems=None) as whole:
        images, truths = whole.batch(2)
    for rank in range(2):
        slots = shard_slots(rank, 2, 16, 2)
        with Loader.from_dataset(ds, str(cfg), batch=16, seed=3, workers=workers, slots=slots, problems=None) as part:
            mine, my_truths = part.batch(2)
        assert mine.shape == (8, 3) + images.shape[2:]
        np.testing.assert_array_equal(mine, images[slots])
        for a, s in zip(my_truths, slots):
            np.testing.assert_array_equal(a, truths[s])
    with pytest.raises(ValueError, match="slots"):
        Loader.from_dataset(ds, str(cfg), batch=16, slots=[16], problems=None)


# ----- synchronized batch-norm in the engine ---------------------------------------------------------------------
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(pydarknet._core.cuda_device_count() < 1, reason="no CUDA device (or emulation)"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_reducer_makes_a_half_batch_train_like_the_whole(tiny, device):
    """Two identical ranks simulated in one process: a reducer that doubles the local sums (what an all-reduce over
    two ranks holding the same images returns) makes a batch of 4 give the outputs and input gradients of the batch
    of 8 that repeats it, and half its parameter gradients."""
    cfg, _ = tiny
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 64, 64), dtype=np.float32)
    calls = []

    def double(layer, phase, stats):
        calls.append((layer, phase, stats.size))
        stats *= 2

    def run(images, reducer):
        net = pydarknet.load(str(cfg), seed=11, device=device)
        set_batch_norm_reducer(reducer)
        try:
            outs = net.forward_train(images, seed=1, iteration=0)
            grads = {i: np.ascontiguousarray(o) * 0.01 for i, o in outs.items() if i in net.yolo_layers}
            net.zero_grads()
            gin = net.backward(grads, input_grad=True)
        finally:
            set_batch_norm_reducer(None)
        rolling = net.flat_params.copy()
        return outs, np.array(net.grads), gin, rolling

    ref_outs, ref_grads, ref_gin, ref_params = run(np.concatenate([x, x]), None)
    outs, grads, gin, params = run(x, double)
    bn_layers = sum(1 for l in pydarknet.load(str(cfg)).desc.layers if int(l.options.get("batch_normalize", 0)))
    assert {c[1] for c in calls} == {0, 1} and len(calls) >= 2 * bn_layers > 0
    for i in outs:
        np.testing.assert_allclose(outs[i], ref_outs[i][:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gin, ref_gin[:4], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(2 * grads, ref_grads, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(params, ref_params, rtol=1e-6, atol=1e-7)  # the rolling statistics
    # Without the reducer the half batch has its own statistics: the reducer is what made them equal.
    plain_outs, _, _, _ = run(x, None)
    assert not all(np.allclose(plain_outs[i], ref_outs[i][:4], rtol=1e-5, atol=1e-6) for i in outs)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_reducer_errors_propagate(tiny, device):
    cfg, _ = tiny
    net = pydarknet.load(str(cfg), seed=11, device=device)

    def fail(layer, phase, stats):
        raise DistributedError(f"no answer at layer {layer}")

    set_batch_norm_reducer(fail)
    try:
        with pytest.raises(DistributedError, match="no answer at layer"):
            net.forward_train(np.zeros((2, 3, 64, 64), np.float32))
    finally:
        set_batch_norm_reducer(None)


# ----- real processes --------------------------------------------------------------------------------------------
def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        env.pop(name, None)
    return env


def _train_args(cfg, data, backup, *extra, weights=None):
    return [
        "-m",
        "pydarknet",
        "train",
        str(cfg),
        str(data),
        *([str(weights)] if weights else []),
        "--backup",
        str(backup),
        "--workers",
        "0",
        "--seed",
        "3",
        "--save-last-every",
        "1",
        *extra,
    ]


def _mpirun(n, args, timeout=300, **kwargs):
    return subprocess.run(
        [MPIRUN, "-n", str(n), sys.executable, *args],
        env=_env(),
        cwd=RUN_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def _single(args, timeout=300):
    return subprocess.run(
        [sys.executable, *args], env=_env(), cwd=RUN_DIR, capture_output=True, text=True, timeout=timeout
    )


def _losses(backup):
    rows = (pathlib.Path(backup) / "results.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def _weights(backup, name="tiny_final.weights"):
    return np.fromfile(pathlib.Path(backup) / name, dtype=np.uint8)[20:].view(np.float32)


@needs_mpi
@pytest.mark.parametrize("subdivisions", [1, 2])
def test_two_ranks_of_8_train_like_one_process_of_16(tiny, tmp_path, subdivisions):
    cfg, data = tiny
    split = ["--subdivisions", str(subdivisions)]
    one = _single(_train_args(cfg, data, tmp_path / "one", *split))
    assert one.returncode == 0, one.stderr
    two = _mpirun(2, _train_args(cfg, data, tmp_path / "two", *split))
    assert two.returncode == 0, two.stdout + two.stderr
    assert f"data-parallel: 2 ranks x {8 // subdivisions} images" in two.stdout
    w0 = pydarknet.load(str(cfg), seed=3).flat_params
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.shape == w2.shape == w0.shape and np.all(np.isfinite(w1))
    moved = float(np.max(np.abs(w1 - w0)) / np.max(np.abs(w0)))
    relative = float(np.max(np.abs(w1 - w2)) / np.max(np.abs(w1)))
    to_update = float(np.max(np.abs(w1 - w2)) / np.max(np.abs(w1 - w0)))
    print(
        f"subdivisions {subdivisions}: 5 updates moved the weights by max |w5 - w0| / max |w0| = {moved:.3g}; "
        f"2 ranks x 8 vs 1 x 16: max |dw| / max |w| = {relative:.3g}, max |dw| / max |w5 - w0| = {to_update:.3g}"
    )
    assert moved > 1e-3  # the updates are not negligible
    assert relative < 1e-5
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    # Only rank 0 wrote files: one results.csv with one row per iteration.
    assert len(_losses(tmp_path / "two")) == 5
    if subdivisions == 1:
        # Without synchronized batch-norm each rank normalizes with its own 8 images: another run.
        nosync = _mpirun(2, _train_args(cfg, data, tmp_path / "nosync", "--no-sync-bn"))
        assert nosync.returncode == 0, nosync.stderr
        assert float(np.max(np.abs(_weights(tmp_path / "nosync") - w1)) / np.max(np.abs(w1))) > 100 * relative


@needs_mpi
def test_two_rank_run_resumed_from_last_is_the_uninterrupted_run(tiny, tmp_path):
    cfg, data = tiny
    whole = _mpirun(2, _train_args(cfg, data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    first = _mpirun(2, _train_args(cfg, data, tmp_path / "parts", "--iterations", "3"))
    assert first.returncode == 0, first.stderr
    last = tmp_path / "parts" / "tiny_last.weights"
    second = _mpirun(2, _train_args(cfg, data, tmp_path / "parts", weights=last))
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(_weights(tmp_path / "parts"), _weights(tmp_path / "whole"))
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole")
    # Another world size resumes the same run too (its sums are added in another order: equal within rounding).
    single = _single(_train_args(cfg, data, tmp_path / "parts1", weights=last))
    assert single.returncode == 0, single.stderr
    w = _weights(tmp_path / "whole")
    assert float(np.max(np.abs(_weights(tmp_path / "parts1") - w)) / np.max(np.abs(w))) < 1e-5


@needs_mpi
def test_a_nonfinite_value_on_one_rank_skips_the_update_on_every_rank(tiny, tmp_path):
    cfg, data = tiny
    script = pathlib.Path(__file__).parent / "support" / "mpi_nonfinite.py"
    run = _mpirun(2, [str(script), str(cfg), str(data), str(tmp_path / "b")])
    assert run.returncode == 0, run.stdout + run.stderr
    reports = [(tmp_path / "b" / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    for report in reports:
        assert report[0].split()[:2] == ["skipped=True", "unchanged=True"]
        assert report[-1].startswith("stopped: 3 iterations in a row produced non-finite values")
    assert reports[0][0].split("params=")[1] == reports[1][0].split("params=")[1]  # the same parameters
    # The NaN is in rank 1's images; synchronized batch-norm carries it into rank 0's statistics as well.
    assert "layer 0 [convolutional] (cfg line" in reports[0][1] and "output on ranks 0, 1" in reports[0][1]


@needs_mpi
def test_ranks_with_different_data_are_refused(tiny, tmp_path):
    cfg, data = tiny
    other = synthetic.generate(tmp_path / "other", n_train=40, n_valid=4, size=64, classes=2, seed=6)
    a = _train_args(cfg, data, tmp_path / "b")
    b = _train_args(cfg, other, tmp_path / "b")
    run = subprocess.run(
        [MPIRUN, "-n", "1", sys.executable, *a, ":", "-n", "1", sys.executable, *b],
        env=_env(),
        cwd=RUN_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "rank 1 has another data than rank 0" in run.stderr
    assert not (tmp_path / "b" / "tiny_last.weights").exists()


def _start(cfg, data, backup, *extra):
    args = _train_args(cfg, data, backup, "--max-batches", "100000", *extra)
    return subprocess.Popen(
        [MPIRUN, "-n", "2", sys.executable, *args],
        env=_env(),
        cwd=RUN_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _rank_pids(proc, backup):
    """Reads the start-up lines 'rank R: pid P on HOST' and waits for a few saved iterations."""
    pids, lines = {}, []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("rank ") and ": pid " in line:
            rank, pid = line.split(":")[0].split()[1], line.split("pid ")[1].split()[0]
            pids[int(rank)] = int(pid)
        if line.startswith(" 3:"):
            return pids, lines
    raise AssertionError("the run did not reach iteration 3:\n" + "".join(lines))


def _finish(proc, seconds):
    start = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"the other rank did not exit within {seconds} s") from None
    return out, time.monotonic() - start


@needs_mpi
def test_a_killed_rank_ends_the_run_and_is_named(tiny, tmp_path):
    cfg, data = tiny
    proc = _start(cfg, data, tmp_path / "k")
    pids, _ = _rank_pids(proc, tmp_path / "k")
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    out, took = _finish(proc, 60)
    assert proc.returncode != 0
    # The launcher ends the others at once and names the process; the start-up lines map it to rank 1.
    assert f"PID {pids[1]}" in out or "rank 1" in out, out
    print(f"the run ended {took:.1f} s after rank 1 was killed")
    # The last checkpoint is whole: it loads, and it resumes.
    last = tmp_path / "k" / "tiny_last.weights"
    net = pydarknet.load(str(cfg), str(last))
    assert np.all(np.isfinite(net.flat_params))
    resumed = _single(
        _train_args(cfg, data, tmp_path / "k", "--max-batches", "100000", "--iterations", "1", weights=last)
    )
    assert resumed.returncode == 0, resumed.stderr


@needs_mpi
def test_a_hung_rank_is_named_after_the_timeout(tiny, tmp_path):
    cfg, data = tiny
    proc = _start(cfg, data, tmp_path / "h", "--dist-timeout", "5")
    pids, _ = _rank_pids(proc, tmp_path / "h")
    os.kill(pids[1], signal.SIGSTOP)
    try:
        out, took = _finish(proc, 60)
    finally:
        try:
            os.kill(pids[1], signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode != 0
    assert "rank 1 did not answer within 5 s" in out, out
    print(f"the run ended {took:.1f} s after rank 1 was stopped")


@needs_mpi
@pytest.mark.skipif(pydarknet._core.cuda_device_count() < 1, reason="no CUDA GPU on this machine")
def test_two_gpu_ranks_sum_their_gradients_like_two_cpu_ranks(tiny, tmp_path):
    """With --device cuda each rank's device gradients are summed over the ranks (NCCL on GPUs of their own, else
    through host memory: the CUDA emulation takes that path), and synchronized batch-norm (on by default) hands the
    device batch-norm's sums to the same reducer as the CPU's, so both runs normalize over the global batch."""
    cfg, data = tiny
    runs = {}
    for device in ("cpu", "cuda"):
        args = _train_args(cfg, data, tmp_path / device, "--device", device, "--max-batches", "2")
        run = _mpirun(2, args)
        assert run.returncode == 0, run.stdout + run.stderr
        if device == "cuda":
            backend = "mpi" if pydarknet._core.cuda_emulated else "nccl"
            assert f"gradients summed over the ranks with {backend}" in run.stdout, run.stdout
        runs[device] = _weights(tmp_path / device)
    w0 = pydarknet.load(str(cfg), seed=3).flat_params.astype(np.float64)
    cpu, gpu = runs["cpu"].astype(np.float64), runs["cuda"].astype(np.float64)
    moved = float(np.sum((cpu - w0) ** 2) / np.sum(w0**2))
    error = float(np.sum((gpu - cpu) ** 2) / np.sum(cpu**2))
    # The bound of the other device tests (normalized MSE 1e-6): the device's summation order moves near-ties of
    # the maxpool windows (flat synthetic backgrounds), so a max-abs bound as for CPU ranks would not hold, and
    # the runs drift apart with each update (loss 2.4e-6 relative after 2 updates, 5.4e-5 after 3 measured).
    print(
        f"2 GPU ranks vs 2 CPU ranks (synchronized batch-norm), 2 updates: normalized MSE {error:.3g} "
        f"(training moved them {moved:.3g})"
    )
    assert moved > 1e-4 and error <= 1e-6
    np.testing.assert_allclose(_losses(tmp_path / "cuda"), _losses(tmp_path / "cpu"), rtol=1e-5)
