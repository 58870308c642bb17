"""A training run killed with SIGKILL: its loader workers die with it, and a resumed run finds no leftovers --
no stray temporaries, a results.csv with exactly one row per iteration, a chart drawn from the whole history."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pydarknet.data import synthetic
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.starter import starter_cfg

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc")


# ----- processes, read from /proc (psutil is not a dependency) ------------------------------------------------
def _children(pid):
    out = set()
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def _alive(pid):
    """Running or sleeping; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until(predicate, seconds, step=0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _tiny(tmp_path, max_batches, batch=4):
    data = synthetic.generate(tmp_path / "data", n_train=16, n_valid=4, size=64, classes=2, seed=4)
    anchors = calc_anchors(str(data), 6, 64, 64, seed=0).anchors
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(starter_cfg(2, 64, 64, anchors, max_batches=max_batches, batch=batch))
    return cfg, data


def _train_cmd(cfg, data, backup, *extra):
    # cwd outside the checkout: `python -m` puts the working folder first on sys.path, and the source tree's
    # pydarknet has no compiled engine unless it was installed in place.
    cmd = [sys.executable, "-m", "pydarknet", "train", str(cfg), str(data), "--backup", str(backup), "--no-progress"]
    return cmd + list(extra)


# ----- defect: loader workers outlived a killed trainer -------------------------------------------------------
@linux_only
def test_loader_workers_die_with_a_killed_trainer(tmp_path):
    cfg, data = _tiny(tmp_path, max_batches=100000)
    proc = subprocess.Popen(
        _train_cmd(cfg, data, tmp_path / "b", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        # training has started, so the pool has forked its workers and fed them batches
        for line in proc.stdout:
            if line.startswith(b" 2: "):
                break
        else:
            pytest.fail(f"the run ended early (exit {proc.wait()})")
        workers = _children(proc.pid)
        assert len(workers) == 2 and all(_alive(w) for w in workers)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 5), "loader workers outlived the trainer"
        # nothing holds the trainer's stdout any more: a pipe reader (`| tee log`) gets its end of file
        proc.stdout.read()
    finally:
        proc.stdout.close()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


OWNER = textwrap.dedent("""
    import sys
    from pydarknet.data import loader as L
    from pydarknet.data.augment import AugmentSettings

    L._USE_PDEATHSIG = sys.argv[2] == "1"
    images = open(sys.argv[1]).read().split()
    with L.Loader(images, 2, AugmentSettings(width=64, height=64), batch=2, workers=2) as loader:
        loader.batch(0)
        print("ready", flush=True)
        sys.stdin.read()
""")


@linux_only
@pytest.mark.parametrize("deathsig", [True, False], ids=["parent-death-signal", "watcher-thread-alone"])
def test_each_mechanism_alone_ends_the_workers(tmp_path, deathsig):
    _, data = _tiny(tmp_path, max_batches=10)
    train = pathlib.Path(data).parent / "train.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(train), "1" if deathsig else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        workers = _children(proc.pid)
        assert len(workers) == 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    try:
        # the signal is immediate; the watcher polls every 0.25 s
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 3)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
