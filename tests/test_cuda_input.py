"""The training input pipeline on the device: Network.stage_input (pinned host memory, an upload on a copy stream)
and forward_train(None) on the staged batch, against the plain forward_train upload; the two-slot rule; the
trainer's staging of pass s+1 during pass s; and multi-scale training keeping one resized network alive.

Staging moves the same float32 bytes the plain path uploads, so every comparison here is bit for bit.
Skipped without a CUDA device; built with PYDARKNET_CUDA=EMULATE they run in the CPU emulation of CUDA (where
the copy stream runs synchronously: these tests check the logic and the data, not any overlap).
"""

import gc
import weakref

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.data import synthetic
from pydarknet.errors import DarknetError, DeviceError
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.starter import starter_cfg
from pydarknet.train.trainer import Trainer, TrainOptions

HAS_GPU = _core.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")

SECTIONS = [
    ("convolutional", {"filters": 4, "size": 3, "pad": 1, "batch_normalize": 1, "activation": "leaky"}),
    ("convolutional", {"filters": 6, "size": 3, "stride": 2, "pad": 1, "activation": "leaky"}),
    ("convolutional", {"filters": 5, "size": 1, "activation": "linear"}),
]


def pair(tmp_path):
    """Two CUDA networks with the same random parameters: one trains on plain uploads, one on staged batches."""
    path = tmp_path / "net.cfg"
    path.write_text(cfg_text(9, 7, 3, *SECTIONS))
    nets = []
    for _ in range(2):
        net = pydarknet.load(str(path), device="cuda")
        randomize_params(net, np.random.default_rng(4))
        nets.append(net)
    return nets


def batch(rng, n):
    return rng.standard_normal((n, 3, 7, 9)).astype(np.float32)


def train_pass(net, x, seed, iteration):
    """forward_train (x None: the staged batch), then backward from a fixed gradient; returns everything it made."""
    out = net.forward_train(x, seed=seed, iteration=iteration)[2]
    grad = np.cos(np.arange(out.size, dtype=np.float32)).reshape(out.shape)
    input_grad = net.backward({2: grad}, input_grad=True)
    return out, input_grad, net.grads.copy(), net.flat_params.copy()


def assert_same(got, want):
    for g, w, what in zip(got, want, ("output", "input gradient", "parameter gradients", "parameters")):
        np.testing.assert_array_equal(g, w, err_msg=what)


def test_staged_forward_train_equals_the_plain_path_bit_for_bit(tmp_path):
    plain, staged = pair(tmp_path)
    rng = np.random.default_rng(0)
    for iteration, n in enumerate((3, 5, 2)):  # growing then shrinking batches: the buffers grow, then are reused
        x = batch(rng, n)
        want = train_pass(plain, x, 7, iteration)
        staged.stage_input(x)
        assert staged._cuda.staged_count == 1
        got = train_pass(staged, None, 7, iteration)
        assert staged._cuda.staged_count == 0
        assert_same(got, want)


def test_two_staged_batches_run_in_order_each_with_its_own_data(tmp_path):
    plain, staged = pair(tmp_path)
    rng = np.random.default_rng(1)
    first, second, third = batch(rng, 2), batch(rng, 4), batch(rng, 3)
    staged.stage_input(first)
    staged.stage_input(second)
    with pytest.raises(DeviceError, match="both staging slots are busy"):
        staged.stage_input(third)  # two batches already wait
    assert_same(train_pass(staged, None, 3, 0), train_pass(plain, first, 3, 0))
    # The pass that read `first` can still backpropagate and `second` waits: both slots stay busy.
    with pytest.raises(DeviceError, match="both staging slots are busy"):
        staged.stage_input(third)
    assert_same(train_pass(staged, None, 3, 1), train_pass(plain, second, 3, 1))
    staged.stage_input(third)  # the slot of `first` is free again: its pass was replaced
    assert_same(train_pass(staged, None, 3, 2), train_pass(plain, third, 3, 2))
    with pytest.raises(DeviceError, match="nothing is staged"):
        staged.forward_train(None)


def test_staged_batch_after_a_plain_pass_and_clear_staged(tmp_path):
    plain, staged = pair(tmp_path)
    rng = np.random.default_rng(2)
    a, b, c = batch(rng, 2), batch(rng, 2), batch(rng, 3)
    staged.stage_input(a)
    # A plain pass in between runs on its own array and leaves the staged batch waiting.
    assert_same(train_pass(staged, b, 1, 0), train_pass(plain, b, 1, 0))
    assert_same(train_pass(staged, None, 1, 1), train_pass(plain, a, 1, 1))
    staged.stage_input(b)
    staged.clear_staged()
    assert staged._cuda.staged_count == 0
    staged.stage_input(c)
    assert_same(train_pass(staged, None, 1, 2), train_pass(plain, c, 1, 2))


def test_stage_input_checks_and_converts_as_forward_train_does(tmp_path):
    plain, staged = pair(tmp_path)
    for bad in (np.zeros((2, 3, 7, 8), np.float32), np.zeros((3, 9), np.float32), np.zeros((0, 3, 7, 9), np.float32)):
        with pytest.raises(ValueError) as want:
            plain.forward_train(bad)
        with pytest.raises(ValueError) as got:
            staged.stage_input(bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="real-valued numeric"):
        staged.stage_input(np.array([["a"]]))
    assert staged._cuda.staged_count == 0  # nothing was staged by the refused calls
    # Non-float32 input is converted exactly as forward_train converts it; a single image (C, H, W) is a batch of 1.
    ints = np.random.default_rng(3).integers(-3, 4, (2, 3, 7, 9))
    staged.stage_input(ints)
    assert_same(train_pass(staged, None, 0, 0), train_pass(plain, ints, 0, 0))
    one = batch(np.random.default_rng(4), 1)[0].astype(np.float64)
    staged.stage_input(one)
    assert_same(train_pass(staged, None, 0, 1), train_pass(plain, one, 0, 1))


def test_staging_needs_a_cuda_network(tmp_path):
    path = tmp_path / "net.cfg"
    path.write_text(cfg_text(9, 7, 3, *SECTIONS))
    cpu = pydarknet.load(str(path))
    with pytest.raises(DeviceError, match="CUDA"):
        cpu.stage_input(np.zeros((1, 3, 7, 9), np.float32))
    with pytest.raises(DeviceError, match="staged batch"):
        cpu.forward_train(None)
    assert issubclass(DeviceError, DarknetError)


# ----- the trainer --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-input")
    data = synthetic.generate(folder, n_train=16, n_valid=2, size=64, classes=3, seed=3)
    anchors = calc_anchors(str(data), 6, 64, 64, seed=0).anchors
    return data, anchors


def make_trainer(dataset, tmp_path, name, subdivisions=2):
    data, anchors = dataset
    text = starter_cfg(3, 64, 64, anchors, max_batches=6, batch=4)
    text = text.replace("burn_in=200", "burn_in=0").replace("subdivisions=1", f"subdivisions={subdivisions}")
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(text)
    options = TrainOptions(backup=str(tmp_path / name), workers=0, seed=5, device="cuda", quiet=True)
    return Trainer(cfg, data, None, options)


def test_trainer_with_staging_equals_plain_uploads_bit_for_bit(dataset, tmp_path, monkeypatch):
    staged, plain = make_trainer(dataset, tmp_path, "staged"), make_trainer(dataset, tmp_path, "plain")
    plain._stage_inputs = False
    calls = []
    original = pydarknet.Network.stage_input
    monkeypatch.setattr(pydarknet.Network, "stage_input", lambda net, x: calls.append(len(x)) or original(net, x))
    for _ in range(3):
        got = staged.step()
        want = plain.step()
        assert not got.skipped and got.loss == want.loss
    assert calls == [2, 2] * 3  # both passes of each iteration were staged, none of the plain run's
    np.testing.assert_array_equal(staged.net.flat_params, plain.net.flat_params)


def test_multi_scale_keeps_one_resized_network_alive(dataset, tmp_path):
    t = make_trainer(dataset, tmp_path, "sizes", subdivisions=1)
    sizes = [(96, 96), (64, 64), (128, 128), (96, 96), (128, 128)]
    t.loader.input_size = lambda it: sizes[it]
    resized = []
    original = t._net_at

    def net_at(width, height):
        net = original(width, height)
        if net is not t.net and all(r() is not net for r in resized):
            resized.append(weakref.ref(net))
            resized.append(weakref.ref(net._cuda))
        return net

    t._net_at = net_at
    for _ in sizes:
        assert not t.step().skipped
        gc.collect()
        alive = sum(r() is not None for r in resized)  # a count: holding the objects would keep them alive
        assert alive <= 2, f"{alive // 2} resized networks alive"  # one Network and its CudaNetwork
    assert len(resized) == 2 * 4  # four size changes away from or between resized networks
