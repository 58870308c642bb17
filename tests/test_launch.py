"""``pydarknet train ... --gpus LIST`` (pydarknet.train.launch): the list, the ranks' command lines, the errors, the
signals, and real runs: ``--gpus 0,0`` trains two ranks on the one GPU of the CUDA emulation through the MPI host
path like ``mpirun -n 2 ... --device cuda``, and a killed launcher leaves no rank behind. The runs need mpi4py
and an ``mpirun`` beside the Python interpreter (``pip install "pydarknet[dist]"``) and a CUDA device (a GPU or
the emulation build); they are skipped without them."""

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
from pydarknet import _core
from pydarknet.cli import train as train_cli
from pydarknet.cli.main import build_parser, main
from pydarknet.errors import DeviceError, LaunchError, UsageError
from pydarknet.train import launch
from pydarknet.train.starter import starter_cfg

needs_cuda = pytest.mark.skipif(_core.cuda_device_count() < 1, reason="no CUDA device (or emulation)")


# ----- the list ----------------------------------------------------------------------------------------------
def test_gpus_is_a_list_of_indices_as_darknets():
    assert launch.parse_gpus("0,1,2,3") == [0, 1, 2, 3]
    assert launch.parse_gpus("4") == [4]  # GPU 4 alone, as Darknet's -gpus 4; not four GPUs
    assert launch.parse_gpus(" 1, 0 ") == [1, 0]
    assert launch.parse_gpus("0,0") == [0, 0]  # two ranks sharing GPU 0
    for bad, said in [("", "GPU indices"), (",", "GPU indices"), ("0,,1", "an empty item"), ("a", "'a'"),
                      ("-1", "'-1'"), ("1.5", "'1.5'")]:  # fmt: skip
        with pytest.raises(UsageError, match=said):
            launch.parse_gpus(bad)


def test_gpus_that_do_not_exist_are_named():
    launch.check_gpus([0, 1, 1], 2)
    with pytest.raises(DeviceError, match="--gpus 0,2: there is no GPU 2; this machine has 2 CUDA GPU"):
        launch.check_gpus([0, 2], 2)
    with pytest.raises(DeviceError, match="no CUDA GPU is available on this machine$"):
        launch.check_gpus([0], 0)
    with pytest.raises(DeviceError, match="this build of the engine has no CUDA support"):
        launch.check_gpus([0], 0, built_with_cuda=False)


def test_gpus_refuses_to_start_ranks_inside_a_rank():
    launch.check_not_launched({})
    launch.check_not_launched({"PMI_SIZE": "1"})
    with pytest.raises(LaunchError, match="already one of 4 started by a launcher.*--device cuda"):
        launch.check_not_launched({"OMPI_COMM_WORLD_SIZE": "4"})


def test_missing_mpi_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(LaunchError, match=r"mpi4py is missing \(pip install \"pydarknet\[dist\]\"\)"):
        launch.find_launcher()
    monkeypatch.setattr(launch, "find_spec", lambda name: object())  # mpi4py present, no mpirun anywhere
    monkeypatch.setenv("PATH", "")
    with pytest.raises(LaunchError, match=r"no mpirun was found beside /nowhere/python nor on PATH.*\[dist\]"):
        launch.find_launcher("/nowhere/python")


# ----- the ranks' command lines ------------------------------------------------------------------------------
def test_a_ranks_command_line_parses_back_to_the_launchers_with_its_device():
    parser = build_parser()
    typed = ["train", "my.data", "my.cfg", "start.conv.29", "--gpus", "0,1", "--backup=-odd folder", "--seed", "0",
             "--batch", "32", "--no-sync-bn", "--progress", "--dist-timeout", "5.5", "--dist-backend", "mpi", "-q",
             "--map", "--lenient", "--precision", "bf16", "--workers", "0", "--iterations", "7"]  # fmt: skip
    args = parser.parse_args(typed)
    rank = train_cli.rank_argv(args, "cuda:1")
    assert "--gpus" not in " ".join(rank) and rank[-2:] == ["--device", "cuda:1"]
    again = parser.parse_args(rank)
    expected = dict(vars(args), gpus=None, device="cuda:1")
    assert {k: v for k, v in vars(again).items() if k != "func"} == {k: v for k, v in expected.items() if k != "func"}
    # Options left at their defaults are not written (the rank computes the same defaults).
    assert train_cli.rank_argv(parser.parse_args(["train", "a.cfg", "b.data", "--gpus", "0,1"]), "cuda:0") == [
        "train", "a.cfg", "b.data", "--device", "cuda:0"]  # fmt: skip


def test_rank_r_runs_on_the_rth_listed_gpu(tmp_path, monkeypatch, capsys):
    """Through the command line: the MPMD command starts one rank per listed GPU, in list order, each with its own
    --device and without --gpus, and the command returns what the launcher returned."""
    (tmp_path / "a.cfg").write_text("[net]\n")
    (tmp_path / "a.data").write_text("classes=1\n")
    seen = {}

    def fake_run(command, env=None, grace=30.0):
        seen["command"], seen["env"] = command, env
        return 7

    monkeypatch.setattr(_core, "cuda_device_count", lambda: 4)
    monkeypatch.setattr(launch, "find_launcher", lambda python=None: "/opt/mpi/mpirun")
    monkeypatch.setattr(launch, "run_ranks", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = main(["train", str(tmp_path / "a.cfg"), str(tmp_path / "a.data"), "--gpus", "2,0,3", "--seed", "1"])
    assert code == 7
    command = seen["command"]
    assert command[0] == "/opt/mpi/mpirun"
    parts, part = [], []
    for token in command[1:] + [":"]:
        if token == ":":
            parts.append(part)
            part = []
        else:
            part.append(token)
    assert len(parts) == 3
    for part, gpu in zip(parts, [2, 0, 3]):
        assert part[:5] == ["-n", "1", sys.executable, "-c", launch.RANK_MAIN.format(root=launch.PACKAGE_ROOT)]
        assert part[5:] == ["train", str(tmp_path / "a.cfg"), str(tmp_path / "a.data"), "--seed=1", "--device",
                            f"cuda:{gpu}"]  # fmt: skip
    # Each rank's OpenMP gets its share of the CPUs (unless OMP_NUM_THREADS is set).
    assert seen["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    assert "rank 0 on cuda:2, rank 1 on cuda:0, rank 2 on cuda:3" in capsys.readouterr().err


def test_one_gpu_trains_in_this_process(tmp_path, monkeypatch):
    (tmp_path / "a.cfg").write_text("[net]\n")
    (tmp_path / "a.data").write_text("classes=1\n")
    devices = []
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(launch, "run_ranks", lambda *a, **k: pytest.fail("--gpus N must not start mpirun"))
    monkeypatch.setattr(train_cli, "_train", lambda args, comm: devices.append((args.device, comm.size)) or 0)
    assert main(["train", str(tmp_path / "a.cfg"), str(tmp_path / "a.data"), "--gpus", "1"]) == 0
    assert devices == [("cuda:1", 1)]


@pytest.mark.parametrize(
    "extra, env, said",
    [
        (["--gpus", "0,1", "--device", "cpu"], {}, "--gpus 0,1 --device cpu: --gpus chooses each rank's GPU"),
        (["--gpus", "0,1", "--device", "cuda:1"], {}, "--gpus chooses each rank's GPU"),
        (["--gpus", "0,5"], {}, "there is no GPU 5; this machine has 2 CUDA GPU"),
        (["--gpus", "0,1"], {"PMI_SIZE": "2"}, "already one of 2 started by a launcher"),
        (["--gpus", "0,0", "--dist-backend", "nccl"], {}, "NCCL needs a GPU per rank"),
        (["--gpus", "0,x"], {}, "'x' is not a GPU index"),
    ],
)
def test_gpus_errors_exit_with_the_usage_code(tmp_path, monkeypatch, capsys, extra, env, said):
    (tmp_path / "a.cfg").write_text("[net]\n")
    (tmp_path / "a.data").write_text("classes=1\n")
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(launch, "find_launcher", lambda python=None: "/opt/mpi/mpirun")
    monkeypatch.setattr(launch, "run_ranks", lambda *a, **k: pytest.fail("nothing may start"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["train", str(tmp_path / "a.cfg"), str(tmp_path / "a.data"), *extra]) == 2
    assert said in capsys.readouterr().err


def test_a_batch_the_ranks_cannot_share_is_refused_before_any_rank_starts(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.cfg").write_text(starter_cfg(2, 64, 64, batch=16))
    (tmp_path / "a.data").write_text("classes=2\n")
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(launch, "find_launcher", lambda python=None: "/opt/mpi/mpirun")
    started = []
    monkeypatch.setattr(launch, "run_ranks", lambda *a, **k: started.append(a) or 0)
    files = [str(tmp_path / "a.cfg"), str(tmp_path / "a.data")]
    assert main(["train", *files, "--gpus", "0,1", "--batch", "6", "--subdivisions", "2"]) == 2
    assert "--gpus 0,1: the mini-batch (batch/subdivisions = 3) is not a multiple of the 2 ranks" in (
        capsys.readouterr().err
    )
    assert not started
    # A batch they can share starts the ranks.
    assert main(["train", *files, "--gpus", "0,1", "--batch", "8", "--subdivisions", "2"]) == 0
    assert len(started) == 1


def test_gpus_without_mpi_says_what_to_install(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.cfg").write_text("[net]\n")
    (tmp_path / "a.data").write_text("classes=1\n")
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 2)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert main(["train", str(tmp_path / "a.cfg"), str(tmp_path / "a.data"), "--gpus", "0,1"]) == 2
    assert 'mpi4py is missing (pip install "pydarknet[dist]")' in capsys.readouterr().err


# ----- signals (a stand-in for mpirun: no MPI needed) --------------------------------------------------------
CHILD = """
import os, signal, sys, time
out = sys.argv[1]
watched = (signal.SIGINT, signal.SIGTERM)
blocked = sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) if s in watched)
ignored = sorted(s.name for s in watched if signal.getsignal(s) == signal.SIG_IGN)
def stop(signum, frame):
    with open(out, "w") as f:
        f.write(signal.Signals(signum).name)
    sys.exit(5)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print(os.getpid(), ",".join(blocked) or "-", ",".join(ignored) or "-", flush=True)
time.sleep(120)
"""
# The command ends within milliseconds of the signal; the grace before the launcher kills it is only room for a
# slow machine, where a kill would end the command before it could write what it got.
LAUNCHER = "import sys; from pydarknet.train.launch import run_ranks; sys.exit(run_ranks(sys.argv[1:], grace=20))"
# The launcher as a script's background job starts it: SIGINT ignored. Here both signals are ignored and blocked.
DEAF_LAUNCHER = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM]); " + LAUNCHER
)


def _gone(pid):
    """True when ``pid`` has ended (a zombie that its new parent has not reaped yet counts as ended)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_run_ranks_returns_the_status():
    assert launch.run_ranks([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert launch.run_ranks([sys.executable, "-c", "pass"]) == 0
    assert launch.run_ranks([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]) == 128 + 9


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and the parent-death signal are Linux's")
@pytest.mark.parametrize("launcher", [LAUNCHER, DEAF_LAUNCHER], ids=["plain", "signals-ignored-and-blocked"])
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_signals_reach_the_launched_command_and_nothing_stays(tmp_path, sig, status, launcher):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out, err = tmp_path / "got.txt", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, sys.executable, str(child), str(out)],
            cwd=RUN_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        pid, blocked, ignored = proc.stdout.readline().split()
        # Whatever the launcher inherited, the command starts with both signals deliverable and not ignored.
        assert (blocked, ignored) == ("-", "-")
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == status, err.read_text()
        assert _wait_gone([int(pid)], 10) == []
        # SIGINT and SIGTERM are passed on; a launcher killed outright takes the command down with SIGTERM.
        assert out.exists(), f"the command did not get the signal; launcher's stderr: {err.read_text()!r}"
        assert out.read_text() == ("SIGTERM" if sig == signal.SIGKILL else sig.name)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_signal_while_the_command_starts_is_passed_on_once_it_runs(monkeypatch):
    """SIGINT that arrives while mpirun is being started (before Popen returns) is not lost: it is sent once the
    command runs, which then ends at once instead of sleeping its minute."""
    popen = subprocess.Popen

    def interrupted_popen(*args, **kwargs):
        started = popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # handled here, before the launcher holds the process
        return started

    monkeypatch.setattr(launch.subprocess, "Popen", interrupted_popen)
    missed = []  # a SIGINT the launcher did not take would land here instead of interrupting the test session

    def outside(signum, frame):
        missed.append(signum)

    previous = signal.signal(signal.SIGINT, outside)
    try:
        began = time.monotonic()
        assert launch.run_ranks([sys.executable, "-c", "import time; time.sleep(60)"], grace=30) == 130
        assert time.monotonic() - began < 30
        assert missed == []
        assert signal.getsignal(signal.SIGINT) is outside  # the launcher's handler is gone again
    finally:
        signal.signal(signal.SIGINT, previous)


# ----- real ranks -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_training_run(tmp_path_factory.mktemp("launch"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        env.pop(name, None)
    return env


def _train(cfg, data, backup, *extra):
    return ["-m", "pydarknet", "train", str(cfg), str(data), "--backup", str(backup), "--workers", "0", "--seed", "3",
            "--save-last-every", "1", *extra]  # fmt: skip


def _run(command, timeout=600):
    return subprocess.run(command, env=_env(), cwd=RUN_DIR, capture_output=True, text=True, timeout=timeout)


def _weights(backup):
    return np.fromfile(pathlib.Path(backup) / "tiny_final.weights", dtype=np.uint8)[20:].view(np.float32)


def _losses(backup):
    rows = (pathlib.Path(backup) / "results.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


@needs_mpi
@needs_cuda
def test_gpus_0_0_trains_like_mpirun_with_device_cuda(tiny, tmp_path):
    cfg, data = tiny
    steps = ["--max-batches", "2", "--batch", "4"]  # 2 images per rank: the emulated GPU is slow
    launched = _run([sys.executable, *_train(cfg, data, tmp_path / "gpus", "--gpus", "0,0", *steps)])
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "2 ranks started by" in launched.stderr and "rank 0 on cuda:0, rank 1 on cuda:0" in launched.stderr
    assert "data-parallel: 2 ranks x 2 images" in launched.stdout
    # A shared GPU: NCCL refuses two ranks on one GPU, so the gradients go through host memory over MPI.
    assert "gradients summed over the ranks with mpi (on cuda:0)" in launched.stdout, launched.stdout
    by_hand = _run([MPIRUN, "-n", "2", sys.executable, *_train(cfg, data, tmp_path / "mpirun", "--device", "cuda",
                                                               *steps)])  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    one = _run([sys.executable, *_train(cfg, data, tmp_path / "one", "--device", "cuda", *steps)])
    assert one.returncode == 0, one.stdout + one.stderr
    # The launcher starts the very run one types with mpirun: the same bits.
    np.testing.assert_array_equal(_weights(tmp_path / "gpus"), _weights(tmp_path / "mpirun"))
    assert _losses(tmp_path / "gpus") == _losses(tmp_path / "mpirun")
    # Against one process of 16: the bound of the other device tests (normalized MSE 1e-6, test_distributed).
    w0 = pydarknet.load(str(cfg), seed=3).flat_params.astype(np.float64)
    single, ranks = _weights(tmp_path / "one").astype(np.float64), _weights(tmp_path / "gpus").astype(np.float64)
    moved = float(np.sum((single - w0) ** 2) / np.sum(w0**2))
    error = float(np.sum((ranks - single) ** 2) / np.sum(single**2))
    print(f"--gpus 0,0 vs one process on cuda, 2 updates: normalized MSE {error:.3g} (training moved them {moved:.3g})")
    assert moved > 1e-4 and error <= 1e-6
    np.testing.assert_allclose(_losses(tmp_path / "gpus"), _losses(tmp_path / "one"), rtol=1e-5)


@needs_mpi
@needs_cuda
@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, -9), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_launcher_leaves_no_rank_alive(tiny, tmp_path, sig, status):
    cfg, data = tiny
    proc = subprocess.Popen(
        [sys.executable, *_train(cfg, data, tmp_path / "k", "--gpus", "0,0", "--max-batches", "100000")],
        env=_env(),
        cwd=RUN_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pids, lines = {}, []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if not line:
                break
            if line.startswith("rank ") and ": pid " in line:
                pids[int(line.split(":")[0].split()[1])] = int(line.split("pid ")[1].split()[0])
            if line.startswith("Training "):  # every rank is set up and in the training loop
                break
        assert sorted(pids) == [0, 1], "".join(lines)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == status
        left = _wait_gone(list(pids.values()), 30)
        assert left == [], f"ranks {left} still run after the launcher got {sig.name}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pid in pids.values():
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
