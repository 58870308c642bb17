"""Checkpoints: Darknet's backup naming and save rules, the training-state file (bit-exact round trip and
resume), refusal of a mismatched cfg or weights, crash safety (a writer killed mid-way), and `partial`."""

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pydarknet.core import weights as weights_io
from pydarknet.core.cfg import parse_cfg_text
from pydarknet.core.graph import build_network, load_network_desc
from pydarknet.errors import WeightsError
from pydarknet.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainState,
    atomic_write,
    darknet_base_name,
    load_state,
    partial,
    resume,
    save_state,
    save_weights,
    state_path_for,
)
from pydarknet.train.optim import Optimizer

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"

CFG = """\
[net]
batch=8
subdivisions=2
width=4
height=4
channels=2
learning_rate=0.01
momentum=0.9
decay=0.0005
max_batches={max_batches}
ema_alpha={ema}
{net_extra}

[convolutional]
batch_normalize=1
filters=3
size=3
pad=1
activation=leaky
{l0}

[convolutional]
filters=3
size=1
activation=linear

[shortcut]
from=-2
weights_type=per_feature
activation=linear

[connected]
output=4
batch_normalize=1
activation=linear
{l3}
"""


def make_desc(max_batches=2010, ema=0.9, net_extra="", l0="", l3=""):
    return build_network(
        parse_cfg_text(CFG.format(max_batches=max_batches, ema=ema, net_extra=net_extra, l0=l0, l3=l3))
    )


def init_params(desc, seed=0):
    p = (np.random.default_rng(seed).standard_normal(desc.param_count) * 0.2).astype(np.float32)
    for layer in desc.layers:  # variances are positive in any real file (a negative one is refused on load)
        for t in layer.tensors:
            if t.name == "rolling_variance":
                p[t.offset : t.offset + t.size] = np.abs(p[t.offset : t.offset + t.size]) + np.float32(0.1)
    return p


def grad_for(desc, iteration):
    return (np.random.default_rng(iteration).standard_normal(desc.param_count) * 0.5).astype(np.float32)


# ----- names and rules ------------------------------------------------------------------------------------------
def test_darknet_base_name():
    assert darknet_base_name("cfg/yolov4-tiny.cfg") == "yolov4-tiny"
    assert darknet_base_name("/a/b.c/yolo.v4.cfg") == "yolo"  # basecfg cuts at the first dot
    assert darknet_base_name(r"C:\models\my.cfg") == "my"
    assert state_path_for("backup/x_last.weights") == Path("backup/x_last.state")


def plan_over(manager, iterations):
    saved = {}
    for it in iterations:
        items = manager.plan(it)
        for item in items:
            if item == "last":
                manager.iter_save_last = it
            else:
                manager.iter_save = it
            saved.setdefault(str(item) if item == "last" else "n", []).append(it)
    return saved


def test_save_plan_follows_darknet():
    desc = make_desc(max_batches=3000)
    m = CheckpointManager("unused", "cfg/x.cfg", desc)
    assert (m.save_every, m.save_last_every) == (1000, 100)
    saved = plan_over(m, range(1, 2501))
    assert saved["n"] == [1000, 2000]
    assert saved["last"] == list(range(100, 2501, 100))
    # resumed at 150: the counters start there, so _last comes at 200 (200 % 100 == 0), then every 100
    m = CheckpointManager("unused", "cfg/x.cfg", desc, start_iteration=150)
    saved = plan_over(m, range(151, 1201))
    assert saved["last"][:3] == [200, 300, 400] and saved["n"] == [1000]
    # Darknet writes _last only when the numbered interval is the longer one
    m = CheckpointManager("unused", "cfg/x.cfg", desc, save_every=50, save_last_every=100)
    saved = plan_over(m, range(1, 301))
    assert "last" not in saved and saved["n"] == [50, 100, 150, 200, 250, 300]
    # max_batches >= 10000: numbered files every 10000
    assert CheckpointManager("unused", "x.cfg", make_desc(max_batches=20000)).save_every == 10000


def test_manager_writes_darknet_files(tmp_path):
    desc = make_desc(max_batches=2010)
    opt = Optimizer(desc)
    p = init_params(desc)
    m = CheckpointManager(
        tmp_path / "backup", "cfg/tiny-test.cfg", desc, save_every=4, save_last_every=2, start_iteration=1000
    )
    state = TrainState(seed=5)
    written = {}
    for it in range(1001, 1009):
        opt.step(p, grad_for(desc, it), it)
        state.iteration = it
        written[it] = [q.name for q in m.after_iteration(p, state, opt)]
    assert written[1001] == [] and written[1002] == ["tiny-test_last.weights", "tiny-test_last.state"]
    assert written[1004] == ["tiny-test_1004.weights", "tiny-test_last.weights", "tiny-test_last.state"]
    # the EMA starts at max_batches/2 = 1005: _ema.weights from then on, with the averages in the conv layers
    assert written[1006] == ["tiny-test_last.weights", "tiny-test_last.state", "tiny-test_ema.weights"]
    ema_file = np.zeros_like(p)
    weights_io.load_into(desc, ema_file, tmp_path / "backup/tiny-test_ema.weights")
    np.testing.assert_array_equal(ema_file, opt.ema.averaged(p))
    data = (tmp_path / "backup/tiny-test_1008.weights").read_bytes()
    assert struct.unpack_from("<iiiQ", data) == (0, 2, 5, 1008 * 8)  # seen = iteration * batch
    assert m.save_best(p, state, 0.30) and state.best_map == pytest.approx(0.30)
    assert m.save_best(p, state, 0.20) is None
    assert m.save_best(p, state, 0.30) is not None  # Darknet: >= counts as new best
    assert m.save_final(p, state).name == "tiny-test_final.weights"
    names = sorted(q.name for q in (tmp_path / "backup").iterdir())
    assert names == [
        "tiny-test_1004.weights",
        "tiny-test_1008.weights",
        "tiny-test_best.weights",
        "tiny-test_ema.weights",
        "tiny-test_final.weights",
        "tiny-test_last.state",
        "tiny-test_last.weights",
    ]


# ----- the state file -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net_extra", ["", "adam=1"])
def test_state_round_trip_is_bit_exact(tmp_path, net_extra):
    desc = make_desc(net_extra=net_extra, l0="dontloadscales=1", l3="dont_update=1003")
    opt = Optimizer(desc)
    p = init_params(desc)
    for it in range(1001, 1007):
        opt.step(p, grad_for(desc, it), it)
    state = TrainState(iteration=1006, best_map=0.625, seed=1234, extra={"rng": [1, 2, 3], "epoch": 2})
    save_state(tmp_path / "s.state", desc, p, state, opt)
    saved = load_state(tmp_path / "s.state")
    assert saved.meta["iteration"] == 1006 and saved.meta["seen"] == 1006 * 8
    assert (saved.meta["best_map"], saved.meta["seed"], saved.meta["extra"]) == (
        0.625,
        1234,
        {"rng": [1, 2, 3], "epoch": 2},
    )
    original = opt.state_dict()
    for name, value in original.items():
        if isinstance(value, np.ndarray):
            assert saved.arrays[name].tobytes() == value.tobytes(), name
    assert saved.meta["ema_initialized"] is True
    hidden = [t for t in desc.layers[0].tensors if not t.in_file]
    assert [t.name for t in hidden] == ["scales", "rolling_mean", "rolling_variance"]
    restored = Optimizer(desc)
    q = np.zeros_like(p)
    saved.restore(desc, q, restored)
    for t in hidden:
        np.testing.assert_array_equal(q[t.offset : t.offset + t.size], p[t.offset : t.offset + t.size])
    for name, value in restored.state_dict().items():
        if isinstance(value, np.ndarray):
            assert value.tobytes() == original[name].tobytes(), name


@pytest.mark.parametrize("net_extra", ["", "adam=1"])
def test_resume_continues_bit_exactly(tmp_path, net_extra):
    desc = make_desc(net_extra=net_extra)
    # uninterrupted run
    opt_a, p_a = Optimizer(desc), init_params(desc)
    for it in range(1001, 1011):
        opt_a.step(p_a, grad_for(desc, it), it)
    # interrupted after 1006 (last saved at 1006), resumed into fresh objects
    opt_b, p_b = Optimizer(desc), init_params(desc)
    m = CheckpointManager(tmp_path, "net.cfg", desc, save_every=1000, save_last_every=2, start_iteration=1000)
    for it in range(1001, 1008):
        opt_b.step(p_b, grad_for(desc, it), it)
        m.after_iteration(p_b, TrainState(iteration=it, seed=9, extra={"it": it}), opt_b)
    opt_c, p_c = Optimizer(desc), np.zeros(desc.param_count, np.float32)
    info = resume(desc, tmp_path / "net_last.weights", params=p_c, optimizer=opt_c)
    assert (info.iteration, info.seen, info.seed, info.extra) == (1006, 1006 * 8, 9, {"it": 1006})
    assert info.state_path == tmp_path / "net_last.state" and info.cfg_changes == []
    for it in range(info.iteration + 1, 1011):
        opt_c.step(p_c, grad_for(desc, it), it)
    np.testing.assert_array_equal(p_c, p_a)
    for name, value in opt_a.state_dict().items():
        if isinstance(value, np.ndarray):
            assert opt_c.state_dict()[name].tobytes() == value.tobytes(), name


def test_resume_refuses_another_cfg(tmp_path):
    desc = make_desc()
    opt, p = Optimizer(desc), init_params(desc)
    CheckpointManager(tmp_path, "n.cfg", desc, save_last_every=1).save_last(p, TrainState(iteration=7), opt)
    changed = make_desc(max_batches=4000)
    with pytest.raises(CheckpointError, match=r"different cfg.*\[net\] max_batches: 2010 -> 4000"):
        resume(changed, tmp_path / "n_last.weights", params=np.zeros_like(p), optimizer=Optimizer(changed))
    info = resume(
        changed,
        tmp_path / "n_last.weights",
        params=np.zeros_like(p),
        optimizer=Optimizer(changed),
        allow_cfg_changes=True,
    )
    assert info.iteration == 7 and info.cfg_changes == ["[net] max_batches: 2010 -> 4000"]
    with pytest.raises(CheckpointError, match="layer 3 options"):
        load_state(tmp_path / "n_last.state").check(make_desc(l3="learning_rate=0.1"))
    other = build_network(
        parse_cfg_text(
            CFG.format(max_batches=2010, ema=0.9, net_extra="", l0="", l3="").replace("output=4", "output=5")
        )
    )
    with pytest.raises(CheckpointError, match="different parameter layout"):
        load_state(tmp_path / "n_last.state").check(other)


def test_resume_refuses_a_state_from_other_weights_and_handles_interrupted_saves(tmp_path):
    desc = make_desc()
    opt, p = Optimizer(desc), init_params(desc)
    m = CheckpointManager(tmp_path, "n.cfg", desc, save_last_every=1)
    m.save_last(p, TrainState(iteration=10), opt)
    # crash after the new state was written but before the weights: the old pair is still used
    p11 = p + 1
    save_state(tmp_path / "n_last.state.new", desc, p11, TrainState(iteration=11), opt)
    info = resume(desc, tmp_path / "n_last.weights", params=np.zeros_like(p), optimizer=Optimizer(desc))
    assert info.iteration == 10 and info.state_path.name == "n_last.state"
    # crash after the weights, before the rename: the pending state is the one that matches
    save_weights(tmp_path / "n_last.weights", desc, p11, 11 * 8)
    q = np.zeros_like(p)
    info = resume(desc, tmp_path / "n_last.weights", params=q, optimizer=Optimizer(desc))
    assert info.iteration == 11 and info.state_path.name == "n_last.state.new"
    np.testing.assert_array_equal(q, p11)
    # weights replaced by something else: refused, and accepted without the state (Darknet-style)
    (tmp_path / "n_last.state.new").unlink()
    save_weights(tmp_path / "n_last.weights", desc, p + 2, 12 * 8)
    with pytest.raises(CheckpointError, match="not written with these weights"):
        resume(desc, tmp_path / "n_last.weights", params=q, optimizer=Optimizer(desc))
    info = resume(desc, tmp_path / "n_last.weights", params=q, use_state=False)
    assert info.iteration == 12 and info.state_path is None


def test_resume_without_state_and_clear(tmp_path):
    desc = make_desc(net_extra="", max_batches=2010)
    p = init_params(desc)
    save_weights(tmp_path / "w.weights", desc, p, seen=8 * 300 + 5)
    q = np.zeros_like(p)
    info = resume(desc, tmp_path / "w.weights", params=q)
    assert (info.iteration, info.seen, info.state_path) == (300, 2405, None)  # seen / (batch*subdivisions)
    np.testing.assert_array_equal(q, p)
    opt = Optimizer(desc)
    CheckpointManager(tmp_path, "c.cfg", desc, save_last_every=1).save_last(p, TrainState(iteration=40), opt)
    fresh = Optimizer(desc)
    info = resume(desc, tmp_path / "c_last.weights", params=q, optimizer=fresh, clear=True)
    assert (info.iteration, info.seen, info.state_path) == (0, 0, None)  # Darknet's -clear
    assert not fresh.velocity.any()


def test_bad_state_files(tmp_path):
    (tmp_path / "junk.state").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable training-state file"):
        load_state(tmp_path / "junk.state")
    desc = make_desc()
    save_state(tmp_path / "ok.state", desc, init_params(desc), TrainState(iteration=3))
    data = (tmp_path / "ok.state").read_bytes()
    (tmp_path / "cut.state").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "cut.state")
    with pytest.raises(CheckpointError, match="no such"):
        load_state(tmp_path / "missing.state")
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_state(tmp_path / "ok.state").restore(desc, init_params(desc), Optimizer(desc))
    with pytest.raises(ValueError, match="JSON"):
        save_state(tmp_path / "x.state", desc, init_params(desc), TrainState(extra={"a": object()}))


def test_atomic_write_permissions_and_cleanup(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"abc"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"abc" and (target.stat().st_mode & 0o777) == (0o666 & ~umask)

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"abc" and sorted(q.name for q in tmp_path.iterdir()) == ["f.bin"]


# ----- crash safety ---------------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from pydarknet.core.cfg import parse_cfg_text
    from pydarknet.core.graph import build_network
    from pydarknet.train.checkpoint import CheckpointManager, TrainState
    from pydarknet.train.optim import Optimizer

    desc = build_network(parse_cfg_text(sys.argv[2]))
    opt = Optimizer(desc)
    manager = CheckpointManager(sys.argv[1], "big.cfg", desc, save_every=10**9, save_last_every=1)
    params = np.zeros(desc.param_count, np.float32)
    k = 0
    while True:
        k += 1
        params[:] = k
        opt.velocity[:] = -k
        manager.after_iteration(params, TrainState(iteration=k, extra={"k": k}), opt)
        print(k, flush=True)
""")

# 4.2 million parameters: each save writes about 34 MB (weights + state), long enough to be killed inside.
BIG_CFG = "[net]\ninputs=2048\nbatch=1\n[connected]\noutput=2048\nactivation=linear\n"


def test_checkpoint_survives_a_writer_killed_mid_way(tmp_path):
    desc = build_network(parse_cfg_text(BIG_CFG))
    rng = random.Random(1)
    interrupted = 0
    for run in range(5):
        backup = tmp_path / f"run{run}"
        # cwd outside the checkout: `python -c` puts the working folder first on sys.path, and the source tree's
        # pydarknet has no compiled engine unless it was installed in place.
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(backup), BIG_CFG], stdout=subprocess.PIPE, text=True, cwd=tmp_path
        )
        try:
            assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
            time.sleep(rng.uniform(0.05, 1.0))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        leftovers = [q.name for q in backup.iterdir() if q.name.endswith(".tmp") or q.name.endswith(".new")]
        interrupted += bool(leftovers)
        params = np.zeros(desc.param_count, np.float32)
        opt = Optimizer(desc)
        info = resume(desc, backup / "big_last.weights", params=params, optimizer=opt)
        k = info.iteration
        assert k >= 1 and info.extra == {"k": k} and info.seen == k
        assert (params == k).all() and (opt.velocity == -k).all()
    # nearly all of the writer's time is spent writing, so the kills land inside a write
    assert interrupted >= 1


# ----- partial --------------------------------------------------------------------------------------------------
def test_partial_is_the_first_layers_with_seen_zero(tmp_path):
    cfg = CFG_DIR / "yolov4-tiny.cfg"
    desc = load_network_desc(cfg)
    p = init_params(desc, seed=3)
    full = tmp_path / "full.weights"
    save_weights(full, desc, p, seen=123456)
    result = partial(cfg, full, tmp_path / "yolov4-tiny.conv.29", 29)
    out = (tmp_path / "yolov4-tiny.conv.29").read_bytes()
    assert result.bytes == len(out) == 19_789_716  # the size of the released yolov4-tiny.conv.29
    assert result.floats == 4_947_424
    assert struct.unpack_from("<iiiQ", out) == (0, 2, 5, 0)
    assert out[20:] == full.read_bytes()[20 : 20 + 4 * result.floats]
    # a partial file that holds enough layers can be cut again; one that holds too few cannot
    again = partial(cfg, tmp_path / "yolov4-tiny.conv.29", tmp_path / "conv.10", 10)
    assert (tmp_path / "conv.10").read_bytes()[20:] == out[20 : 20 + 4 * again.floats]
    with pytest.raises(WeightsError, match="fewer layers than asked for"):
        partial(cfg, tmp_path / "conv.10", tmp_path / "conv.20", 20)
    with pytest.raises(ValueError, match="between 1 and 38"):
        partial(cfg, full, tmp_path / "x", 39)
