"""The device training kernels' fixed-order parallel sums (cuda/reduce.cuh) against the CPU engine.

Batch-norm statistics and gradients, the weighted [shortcut]'s weight gradients and the [scale_channels] factor
gradients are summed by blocks per channel (or per weight group, per factor), and by chunks of a channel and then
per channel when it has more than 8192 values (256 threads x 32 values). These cases are large enough to take
every path: two-pass batch-norm sums (both the one-process path and the synchronized one, whose sums go through
a batch-norm reducer before the normalisation), a per_feature shortcut weight summed over six chunks, per-channel
scale factors and shortcut weights in single blocks of 128 threads, per-pixel factors in blocks of 32.

Bound as tests/test_cuda_train.py: normalized MSE <= 1e-6 in float32, NaN fails; the engines differ only in the
order of their double sums. The same pass twice must give the same bits (no atomics, the order fixed by the
shape). Skipped without a CUDA device; built with PYDARKNET_CUDA=EMULATE they run in the CPU emulation.
"""

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.core.network import set_batch_norm_reducer

pytestmark = pytest.mark.skipif(_core.cuda_device_count() < 1, reason="no CUDA GPU on this machine")

BOUND = 1e-6
NET = "batch=3\nsubdivisions=1\nlearning_rate=0.01\nmomentum=0.9\ndecay=0.0005\nmax_batches=10\n"


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


def check(got, want, what, bound=BOUND):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.isfinite(want).all(), f"{what}: the CPU reference is not finite"
    assert np.isfinite(got).all(), f"{what}: NaN or infinity"
    error = nmse(got, want)
    assert error <= bound, f"{what}: normalized MSE {error:.3g} > {bound:g}"
    return error


def conv(filters, size=3, **keys):
    keys = {"filters": filters, "size": size, "stride": 1, "pad": size // 2, "activation": "linear", **keys}
    return "convolutional", keys


# 64 x 64 input, batch 3: 12288 values per batch-norm channel (two chunks), a per_feature weight over
# 3 x 4 x 4096 = 49152 values (six chunks), one [scale_channels] factor per (image, channel) over 4096 values
# (one block of 128 threads), one per (image, pixel) with scale_wh over 4 values and a per_channel weight over
# 3 x 4096 values (one block of 128 threads).
W = H = 64
LARGE = [
    conv(4, batch_normalize=1, activation="leaky"),
    conv(4, size=1, activation="logistic"),
    ("shortcut", {"from": -2, "weights_type": "per_feature", "weights_normalization": "softmax"}),
    ("batchnorm", {}),
    ("avgpool", {}),
    conv(4, size=1, activation="logistic"),
    ("scale_channels", {"from": -3}),
    conv(1, size=1, activation="logistic"),
    ("scale_channels", {"from": -2, "scale_wh": 1}),
    conv(4, size=1, batch_normalize=1, activation="mish"),
    ("shortcut", {"from": -3, "weights_type": "per_channel"}),
    conv(2, size=1),
]


def pair(tmp_path, sections, seed=0):
    path = tmp_path / "net.cfg"
    path.write_text(cfg_text(W, H, 3, *sections).replace("[net]\n", "[net]\n" + NET, 1))
    cpu = pydarknet.load(str(path))
    gpu = pydarknet.load(str(path), device="cuda")
    randomize_params(cpu, np.random.default_rng(seed))
    gpu.params[...] = cpu.params
    return cpu, gpu


def training_pass(net, x, g):
    """forward_train and backward from g: every layer's output, the input gradient, the parameter gradient and
    the parameters afterwards (rolling statistics)."""
    net.zero_grads()
    net.forward_train(x, seed=5, iteration=2)
    outputs = [np.array(net.train_output(layer.index)) for layer in net.layers]
    input_grad = net.backward({len(net.layers) - 1: g}, input_grad=True)
    return outputs, np.array(input_grad), np.array(net.grads), np.array(net.params)


def compare(cpu, gpu, x, g):
    want, got = training_pass(cpu, x, g), training_pass(gpu, x, g)
    errors = [check(o, w, f"layer {i} output") for i, (o, w) in enumerate(zip(got[0], want[0]))]
    errors.append(check(got[1], want[1], "input gradient"))
    errors.append(check(got[2], want[2], "parameter gradient"))
    errors.append(check(got[3], want[3], "parameters after the pass (rolling statistics)"))
    assert np.abs(want[2]).max() > 0 and np.abs(want[1]).max() > 0
    return max(errors)


def inputs(cpu, rng):
    x = rng.standard_normal((3, *cpu.input_shape)).astype(np.float32)
    g = rng.standard_normal((3, *cpu.layers[-1].out_shape)).astype(np.float32)
    return x, g


def test_large_training_pass_matches_the_cpu(tmp_path):
    cpu, gpu = pair(tmp_path, LARGE)
    x, g = inputs(cpu, np.random.default_rng(1))
    compare(cpu, gpu, x, g)


def test_synchronized_batchnorm_on_large_shapes_matches_the_cpu(tmp_path):
    """The split path (local sums, the reducer, the normalisation; the same for the backward's sums) with a reducer
    that doubles the sums, as two ranks holding the same images: both engines see the same statistics."""
    cpu, gpu = pair(tmp_path, LARGE, seed=3)
    x, g = inputs(cpu, np.random.default_rng(4))
    calls = []

    def double(layer, phase, stats):
        calls.append((layer, phase, stats.size))
        stats *= 2

    set_batch_norm_reducer(double)
    try:
        compare(cpu, gpu, x, g)
    finally:
        set_batch_norm_reducer(None)
    # layers 0, 3 and 9 (4 channels: 2 x 4 sums and the count), forward and backward, on both engines
    assert sorted(calls) == sorted([(layer, phase, 9) for layer in (0, 3, 9) for phase in (0, 1)] * 2)


def test_training_pass_is_bit_reproducible(tmp_path):
    """The same pass twice on the device gives the same bits (outputs, gradients, rolling statistics)."""
    _, gpu = pair(tmp_path, LARGE, seed=5)
    x, g = inputs(gpu, np.random.default_rng(6))
    start = np.array(gpu.params)
    first = training_pass(gpu, x, g)
    gpu.params[...] = start
    second = training_pass(gpu, x, g)
    for a, b in zip(first[0], second[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[1:], second[1:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "batch, channels, spatial",
    [(2, 3, 5), (4, 5, 1), (3, 2, 3000), (2, 2, 9000), (1, 1, 300_000)],
    ids=["one-block-32", "tiny", "one-block-256", "two-chunks", "37-chunks"],
)
def test_channel_sums_match_float64(batch, channels, spatial):
    """launch_channel_sums (the bias gradient of layers without batch-norm): accumulate[c] += the channel's sum,
    in double, rounded once to float32 and added; equal to the float64 sum up to that rounding; the same bits on
    every call."""
    rng = np.random.default_rng(spatial)
    x = rng.standard_normal((batch, channels, spatial)).astype(np.float32) + 0.5
    accumulate = rng.standard_normal(channels).astype(np.float32)
    got = np.array(_core.cuda_channel_sums(x.ravel().tolist(), batch, channels, spatial, accumulate.tolist()))
    sums = x.astype(np.float64).sum(axis=(0, 2))
    want = accumulate + sums.astype(np.float32)
    assert np.all(np.abs(got - want) <= 2 * np.spacing(np.abs(want).astype(np.float32))), (got, want)
    again = np.array(_core.cuda_channel_sums(x.ravel().tolist(), batch, channels, spatial, accumulate.tolist()))
    np.testing.assert_array_equal(got, again)


def test_channel_sums_check_their_sizes():
    with pytest.raises(ValueError, match="not 2 x 3 x 4"):
        _core.cuda_channel_sums([0.0] * 5, 2, 3, 4, [0.0] * 3)
    with pytest.raises(ValueError, match="accumulators"):
        _core.cuda_channel_sums([0.0] * 24, 2, 3, 4, [0.0] * 2)
