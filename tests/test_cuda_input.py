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
from pydarknet.data.dataset import load_dataset
from pydarknet.data.loader import Loader
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


# ----- batches in page-locked memory ------------------------------------------------------------------------------
def test_a_batch_in_a_staging_buffer_is_uploaded_in_place_and_equals_the_plain_path(tmp_path):
    plain, staged = pair(tmp_path)
    rng = np.random.default_rng(5)
    buffer = staged.staging_buffer((6, 3, 7, 9))
    assert buffer.dtype == np.float32 and buffer.flags.c_contiguous and buffer.flags.writeable
    cuda = staged._cuda
    for iteration, n in enumerate((4, 6, 2)):
        buffer[:n] = batch(rng, n)
        want = train_pass(plain, buffer[:n].copy(), 3, iteration)
        direct, copied = cuda.staged_direct, cuda.staged_copied
        staged.stage_input(buffer[:n])
        assert (cuda.staged_direct, cuda.staged_copied) == (direct + 1, copied)  # no copy on the host
        assert cuda.last_upload_source == buffer.ctypes.data  # the upload reads the buffer itself
        assert_same(train_pass(staged, None, 3, iteration), want)
    # Any other array (pageable, or reaching past the buffer's end) is copied into the network's own slot first.
    x = batch(rng, 3)
    staged.stage_input(x)
    assert cuda.staged_copied == copied + 1 and cuda.last_upload_source != x.ctypes.data
    assert_same(train_pass(staged, None, 3, 9), train_pass(plain, x, 3, 9))


def test_a_staged_buffer_is_held_until_its_pass_has_run(tmp_path):
    _, net = pair(tmp_path)
    buffer = net.staging_buffer((2, 3, 7, 9))
    buffer[:] = batch(np.random.default_rng(6), 2)
    root = weakref.ref(buffer.base)  # the array owning the page-locked memory (freed with it)
    net.stage_input(buffer)
    del buffer
    gc.collect()
    assert root() is not None  # the queued upload still reads it
    net.forward_train(None)
    gc.collect()
    assert root() is None
    buffer = net.staging_buffer((2, 3, 7, 9))
    root = weakref.ref(buffer.base)
    net.stage_input(buffer)
    del buffer
    net.clear_staged()
    gc.collect()
    assert root() is None


def test_staging_buffer_needs_a_cuda_network_and_a_shape(tmp_path):
    path = tmp_path / "net.cfg"
    path.write_text(cfg_text(9, 7, 3, *SECTIONS))
    with pytest.raises(DeviceError, match="CUDA"):
        pydarknet.load(str(path)).staging_buffer((1, 3, 7, 9))
    with pytest.raises(ValueError, match="at least 1"):
        pydarknet.load(str(path), device="cuda").staging_buffer((0, 3, 7, 9))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_assembles_batches_in_the_networks_page_locked_memory(dataset, tmp_path, workers):
    """The array stage_input uploads is the loader's own output (same memory), equal to a numpy-built batch."""
    data, anchors = dataset
    cfg = tmp_path / "loader.cfg"
    cfg.write_text(starter_cfg(3, 64, 64, anchors, max_batches=6, batch=4))
    net = pydarknet.load(str(cfg), device="cuda")
    ds = load_dataset(str(data))
    plain = Loader.from_dataset(ds, net, seed=2)
    with Loader.from_dataset(ds, net, seed=2, workers=workers, allocate=net.staging_buffer) as loader:
        for it in range(4):
            images, truths = loader.batch(it)
            want, want_truths = plain.batch(it)
            np.testing.assert_array_equal(images, want)
            assert all(np.array_equal(a, b) for a, b in zip(truths, want_truths))
            before = net._cuda.staged_direct
            net.stage_input(images[2:4])
            assert net._cuda.last_upload_source == images[2:4].ctypes.data
            assert net._cuda.staged_direct == before + 1
            net.forward_train(None)
            np.testing.assert_array_equal(net.train_output(0), _forward_train_output(net, want[2:4]))
        assert loader._buffers.allocations <= (4 if workers else 2)


def _forward_train_output(net, x):
    net.forward_train(x)
    return net.train_output(0)


def test_trainer_with_pinned_batches_equals_numpy_batches_bit_for_bit(dataset, tmp_path, monkeypatch):
    pinned = make_trainer(dataset, tmp_path, "pinned")
    monkeypatch.setattr(Trainer, "_pinned_batches", False)
    numpy_batches = make_trainer(dataset, tmp_path, "numpy")
    numpy_batches._stage_inputs = False
    assert pinned.loader._buffers is not None and numpy_batches.loader._buffers is None
    handed = []
    original = pinned.loader.batch

    def batch_and_note(*args):
        images, truths = original(*args)
        handed.append(images.ctypes.data + images[:1].nbytes * 2)  # where the second pass's images start
        return images, truths

    pinned.loader.batch = batch_and_note
    cuda = pinned.net._cuda
    for _ in range(3):
        got = pinned.step()
        want = numpy_batches.step()
        assert not got.skipped and got.loss == want.loss
        assert cuda.last_upload_source == handed[-1]  # the last upload read the loader's output in place
    assert (cuda.staged_direct, cuda.staged_copied) == (6, 0)  # two passes an iteration, none copied
    np.testing.assert_array_equal(pinned.net.flat_params, numpy_batches.net.flat_params)


# ----- multi-scale: one device parameter buffer ---------------------------------------------------------------------
def test_multi_scale_shares_the_device_parameters_and_moves_none(dataset, tmp_path):
    """Resized networks train the base network's device parameter and gradient buffers: a size change uploads
    and downloads nothing (counted over all the sharing networks). Against a run that reads the host parameters
    after every iteration (each read copies them down, and the next pass uploads them again: the round trip a
    size change made before) every loss and the weights are equal bit for bit; against the CPU trainer the
    weights are within the trainer tests' bound."""
    sizes = [(96, 96), (64, 64), (128, 128), (96, 96), (64, 64)]
    gpu, round_trips = make_trainer(dataset, tmp_path, "shared"), make_trainer(dataset, tmp_path, "round-trips")
    options = TrainOptions(backup=str(tmp_path / "cpu"), workers=0, seed=5, device="cpu", quiet=True)
    cpu = Trainer(gpu.cfg, str(dataset[0]), None, options)
    for t in (cpu, gpu, round_trips):
        t.loader.input_size = lambda it: sizes[it]
    cuda = gpu.net._cuda
    for it in range(len(sizes)):
        got, want = gpu.step(), round_trips.step()
        cpu.step()
        assert (got.width, got.height) == sizes[it] and not got.skipped
        assert got.loss == want.loss
        assert gpu._net_at(*sizes[it])._cuda.shares_params_with(cuda)
        assert (cuda.param_uploads, cuda.param_downloads) == (1, 0)  # the first pass's upload only
        assert round_trips.net.flat_params.size  # a host read: down now, up at the next pass
    assert (round_trips.net._cuda.param_uploads, round_trips.net._cuda.param_downloads) == (5, 5)
    params = gpu.net.flat_params  # a host read still brings the newer device parameters down
    assert cuda.param_downloads == 1
    np.testing.assert_array_equal(params, round_trips.net.flat_params)
    want = cpu.net.flat_params.astype(np.float64)
    error = float(np.sum((params - want) ** 2) / np.sum(want**2))
    print(f"multi-scale on the device: weights after {len(sizes)} iterations vs the CPU, normalized MSE {error:.3g}")
    assert error <= 1e-6
