"""The training GEMM (cuda/train_gemm.cuh) behind the convolution's and [connected]'s training passes.

Shapes that cross the 64 x 64 tiles in every dimension (more than 64 filters, input channels and pixels), strided,
grouped and 1x1 convolutions, each with split-K never, automatic and fixed: against the CPU engine (normalized MSE
<= 1e-6, NaN fails, as tests/test_cuda_train.py). The split only reorders float32 sums, so split and unsplit
results agree to float32 rounding; the same pass twice gives the same bits (no atomics, fixed orders). In mixed
precision the tensor-core kernel and the SIMT kernel round the same operands to the half type and sum exact
products in float32, so they agree to float32 rounding too (bound 1e-10, as test_cuda_amp's EXACT).

Skipped without a CUDA device; built with PYDARKNET_CUDA=EMULATE the kernels run in the CPU emulation (their logic,
not their speed: every block of the grid runs its threads one after another on the CPU).
"""

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params
from test_cuda_train import check, compare_training, conv, nmse

import pydarknet
from pydarknet import _core

pytestmark = pytest.mark.skipif(_core.cuda_device_count() == 0, reason="no CUDA GPU on this machine")

NET = "batch=2\nsubdivisions=1\nlearning_rate=0.01\nmomentum=0.9\ndecay=0.0005\nmax_batches=10\n"
SIMT, TENSOR = 1, 2  # CudaNetwork.conv_algorithm

# (input channels, filters, size, stride, groups, width, height, batch, batch_normalize, activation)
SHAPES = {
    "wide": (72, 70, 3, 1, 1, 9, 7, 2, 0, "leaky"),
    "wide_bn": (66, 68, 3, 1, 1, 8, 9, 2, 1, "mish"),
    "strided_groups": (16, 24, 3, 2, 2, 13, 11, 3, 0, "linear"),
    "pointwise_groups": (8, 12, 1, 1, 4, 17, 15, 2, 1, "leaky"),
    "five_stride2": (6, 10, 5, 2, 1, 12, 10, 2, 0, "swish"),
}


def network(tmp_path, name, device, precision="fp32", seed=0):
    c, filters, size, stride, groups, w, h, _, bn, activation = SHAPES[name]
    section = conv(filters, size, stride=stride, groups=groups, batch_normalize=bn, activation=activation)
    path = tmp_path / f"{name}.cfg"
    path.write_text(cfg_text(w, h, c, section).replace("[net]\n", "[net]\n" + NET, 1))
    net = pydarknet.load(str(path), device=device, **({"precision": precision} if device == "cuda" else {}))
    randomize_params(net, np.random.default_rng(seed))
    return net


def training_pass(net, x, g):
    net.zero_grads()
    net.forward_train(x, seed=1, iteration=1)
    out = net.train_output(0).copy()
    dx = net.backward({0: g}, input_grad=True)
    return out, dx, net.grads.copy()


@pytest.mark.parametrize("splits", [1, 0, 5])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_tiled_convolution_training_matches_the_cpu(tmp_path, name, splits):
    cpu = network(tmp_path, name, "cpu")
    gpu = network(tmp_path, name, "cuda")
    gpu._cuda.split_k = splits
    np.testing.assert_array_equal(gpu.params, cpu.params)
    compare_training(cpu, gpu, SHAPES[name][7], np.random.default_rng(5))  # asserts every error <= BOUND


@pytest.mark.parametrize("name", ["wide", "strided_groups"])
def test_split_k_only_reorders_the_sums_and_repeats_bit_for_bit(tmp_path, name):
    gpu = network(tmp_path, name, "cuda")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((SHAPES[name][7], *gpu.input_shape)).astype(np.float32)
    gpu.forward_train(x, seed=1, iteration=1)
    g = rng.standard_normal(gpu.train_output(0).shape).astype(np.float32)
    runs = {}
    for splits in (1, 5, 5, 0, 0):
        gpu._cuda.split_k = splits
        runs.setdefault(splits, []).append(training_pass(gpu, x, g))
    for splits in (5, 0):
        first, second = runs[splits]
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)  # the same pass twice: the same bits
        for a, b in zip(first, runs[1][0]):
            assert nmse(a, b) <= 1e-12, f"split {splits} vs unsplit: {nmse(a, b):.3g}"
    # The split changed the order somewhere: some value differs in its last bits (a split that was not taken
    # would leave the results identical and this test would prove nothing).
    assert any(not np.array_equal(a, b) for a, b in zip(runs[5][0], runs[1][0]))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["wide_bn", "strided_groups", "pointwise_groups"])
def test_tensor_cores_and_simt_round_the_same_operands(tmp_path, name, precision):
    tensor = network(tmp_path, name, "cuda", precision)
    simt = network(tmp_path, name, "cuda", precision)
    simt._cuda.conv_algorithm = SIMT
    assert tensor._cuda.conv_algorithm != SIMT
    fp32 = network(tmp_path, name, "cuda")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((SHAPES[name][7], *tensor.input_shape)).astype(np.float32)
    fp32.forward_train(x, seed=1, iteration=1)
    g = rng.standard_normal(fp32.train_output(0).shape).astype(np.float32)
    got, want, base = training_pass(tensor, x, g), training_pass(simt, x, g), training_pass(fp32, x, g)
    for what, a, b, c in zip(("output", "input gradient", "parameter gradient"), got, want, base):
        check(a, b, f"{precision} {what}: tensor cores vs SIMT", bound=1e-10)
        # ...and both differ from fp32 by the rounding (the half-precision path was really taken).
        assert nmse(a, c) > 1e-12, f"{precision} {what} equals fp32: the operands were not rounded"
    # Different kernels sum in different orders: identical bits would mean one kernel ran twice.
    assert any(not np.array_equal(a, b) for a, b in zip(got, want)), "the tensor-core kernel did not run"


def test_connected_training_crosses_tiles_and_splits(tmp_path):
    section = ("connected", dict(output=70, activation="leaky"))
    path = tmp_path / "fc.cfg"
    path.write_text(cfg_text(5, 4, 7, section).replace("[net]\n", "[net]\n" + NET.replace("batch=2", "batch=66"), 1))
    cpu = pydarknet.load(str(path))
    randomize_params(cpu, np.random.default_rng(2))
    for splits in (1, 3):
        gpu = pydarknet.load(str(path), device="cuda")
        gpu.params[...] = cpu.params
        gpu._cuda.split_k = splits
        compare_training(cpu, gpu, 66, np.random.default_rng(6))
