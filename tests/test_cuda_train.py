"""Training passes on the GPU against the CPU engine's.

Each case builds the same small network on the CPU and on the GPU with the same random parameters, runs
forward_train on the same input and backward from the same random gradient of the last layer's output, and
compares every layer's training output, the gradient of the network input and the flat parameter gradient.
The shapes are drawn at random (odd sizes, strides, groups, dilations); yolov3-tiny and yolov4-tiny run whole at
64 x 64. The later layer types and options ([batchnorm], weighted [shortcut], the normalize_channels activations on
every layer that takes one, maxpool_depth, [scale_channels], [sam], [connected], [softmax]) run three random
shapes each, and together in one small cfg with a [yolo] head. The device SGD step is compared with the host
optimizer given the same gradients and velocity (equal bit for bit).

Bound: normalized MSE (sum (got - want)^2 / sum want^2) <= 1e-6 in float32; a NaN or infinity where the CPU
has a finite value always fails. The two engines differ only in the order of their sums. Measured in the
emulation: <= 5e-14 for the first layer cases, <= 6e-11 for the whole networks, <= 7.3e-8 for the later ones
(the largest where normalize_channels divides by a small sum; see cuda/NOTES.md).

Skipped without a CUDA device. Built with PYDARKNET_CUDA=EMULATE the tests run in the CPU emulation of the CUDA
programming model (cuda/emulation/): the kernels' logic is checked, nothing about a GPU's memory ordering or
speed.
"""

import functools
import pathlib

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.train.optim import Optimizer

HAS_GPU = _core.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")

BOUND = 1e-6
NET = {"batch": 4, "subdivisions": 1, "learning_rate": 0.01, "momentum": 0.9, "decay": 0.0005, "max_batches": 10}


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


def check(got, want, what, bound=BOUND):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = ~np.isfinite(got) & np.isfinite(want)
    assert not bad.any(), f"{what}: {int(bad.sum())} NaN/inf values (first at {np.argwhere(bad)[0].tolist()})"
    assert np.isfinite(want).all(), f"{what}: the CPU reference is not finite"
    error = nmse(got, want)
    assert error <= bound, f"{what}: normalized MSE {error:.3g} > {bound:g}"
    return error


def cfg(width, height, channels, *sections, net=None):
    text = cfg_text(width, height, channels, *sections)
    extra = "".join(f"{k}={v}\n" for k, v in dict(NET, **(net or {})).items())
    return text.replace("[net]\n", "[net]\n" + extra, 1)


def pair(tmp_path, text, seed=0):
    path = tmp_path / "net.cfg"
    path.write_text(text)
    cpu = pydarknet.load(str(path))
    gpu = pydarknet.load(str(path), device="cuda")
    randomize_params(cpu, np.random.default_rng(seed))
    gpu.params[...] = cpu.params
    return cpu, gpu


def conv(filters, size=3, **keys):
    return (
        "convolutional",
        dict(dict(filters=filters, size=size, stride=1, pad=1 if size > 1 else 0, activation="linear"), **keys),
    )


def compare_training(cpu, gpu, batch, rng, seed=7, iteration=3):
    """forward_train + backward on both engines; every output, the input gradient and the parameter gradient.
    Returns the largest error of each kind."""
    x = rng.standard_normal((batch, *cpu.input_shape)).astype(np.float32)
    for net in (cpu, gpu):
        net.zero_grads()
        net.forward_train(x, seed=seed, iteration=iteration)
    errors = {"params": check(gpu.params, cpu.params, "parameters after forward_train (batch-norm rolling statistics)")}
    last = len(cpu.layers) - 1
    errors["output"] = max(
        check(gpu.train_output(layer.index), cpu.train_output(layer.index), f"layer {layer.index} ({layer.type})")
        for layer in cpu.layers
    )
    g = rng.standard_normal(cpu.train_output(last).shape).astype(np.float32)
    want = cpu.backward({last: g}, input_grad=True)
    got = gpu.backward({last: g}, input_grad=True)
    errors["input_grad"] = check(got, want, "input gradient")
    errors["input_grad_max"] = float(np.abs(want).max())
    if cpu.desc.param_count:
        errors["param_grad"] = check(gpu.grads, cpu.grads, "parameter gradient")
    return errors


def random_conv_case(rng):
    """A convolution with random geometry: (cfg sections, input width, height, channels)."""
    size = int(rng.choice([1, 3, 5]))
    stride = int(rng.choice([1, 2]))
    groups = int(rng.choice([1, 2]))
    dilation = int(rng.choice([1, 2])) if size == 3 and stride == 1 else 1
    channels = groups * int(rng.integers(1, 4))
    filters = groups * int(rng.integers(1, 5))
    activation = str(rng.choice(["linear", "leaky", "mish", "logistic", "swish", "relu", "tanh"]))
    keys = dict(stride=stride, groups=groups, dilation=dilation, activation=activation)
    keys["batch_normalize"] = int(rng.integers(0, 2))
    w, h = int(rng.integers(5, 12)), int(rng.integers(5, 12))
    return [conv(filters, size, **keys)], w, h, channels


@pytest.mark.parametrize("case", range(12))
def test_convolution_backward_matches_the_cpu(tmp_path, case):
    rng = np.random.default_rng(100 + case)
    sections, w, h, c = random_conv_case(rng)
    cpu, gpu = pair(tmp_path, cfg(w, h, c, *sections), seed=case)
    compare_training(cpu, gpu, int(rng.integers(1, 4)), rng)


LAYER_CASES = {
    "shortcut": [conv(6, activation="leaky"), conv(6), ("shortcut", {"from": -2, "activation": "linear"})],
    "shortcut_mish": [conv(6, activation="leaky"), conv(6), ("shortcut", {"from": -2, "activation": "mish"})],
    "shortcut_prefix": [
        conv(4, activation="leaky"),
        conv(6),
        ("shortcut", {"from": "-2,-1", "activation": "leaky"}),
    ],
    "route": [conv(3, activation="leaky"), conv(5, activation="logistic"), ("route", {"layers": "-1,-2"}), conv(4)],
    "route_group": [conv(6, activation="leaky"), ("route", {"layers": -1, "groups": 2, "group_id": 1}), conv(3)],
    "upsample": [conv(3, activation="leaky"), ("upsample", {"stride": 2}), conv(2)],
    "downsample": [conv(3, activation="leaky"), ("upsample", {"stride": -2, "scale": 0.5}), conv(2)],
    "maxpool_2x2": [conv(3, activation="leaky"), ("maxpool", {"size": 2, "stride": 2}), conv(2)],
    "maxpool_overlap": [conv(3, activation="leaky"), ("maxpool", {"size": 3, "stride": 1}), conv(2)],
    "maxpool_odd": [conv(3, activation="leaky"), ("maxpool", {"size": 3, "stride": 2}), conv(2)],
    "batchnorm_conv": [conv(4, batch_normalize=1, activation="mish"), conv(3, batch_normalize=1, activation="leaky")],
    "avgpool": [conv(3, activation="leaky"), ("avgpool", {}), conv(2, size=1)],
    "local_avgpool_overlap": [conv(3, activation="leaky"), ("local_avgpool", {"size": 3, "stride": 1}), conv(2)],
    "local_avgpool_odd": [conv(3, activation="leaky"), ("local_avgpool", {"size": 2, "stride": 2}), conv(2)],
    "reorg3d": [conv(3, activation="leaky", size=1), ("reorg3d", {"stride": 2}), conv(2)],
    "reorg3d_reverse": [conv(16, activation="leaky", size=1), ("reorg3d", {"stride": 2, "reverse": 1}), conv(2)],
    "dropout": [conv(4, activation="leaky"), ("dropout", {"probability": 0.3}), conv(2)],
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_backward_matches_the_cpu(tmp_path, name):
    rng = np.random.default_rng(sum(map(ord, name)))
    w, h = int(rng.integers(6, 11)), int(rng.integers(6, 11))
    if name.startswith("reorg3d"):  # space-to-depth needs sizes divisible by its stride
        w, h = w // 2 * 2, h // 2 * 2
    cpu, gpu = pair(tmp_path, cfg(w, h, 3, *LAYER_CASES[name]))
    compare_training(cpu, gpu, 2, rng)


def test_dropout_draws_the_cpu_mask(tmp_path):
    cpu, gpu = pair(tmp_path, cfg(8, 8, 2, conv(3), ("dropout", {"probability": 0.5})))
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    for seed, iteration in [(1, 0), (1, 1), (2, 0)]:
        cpu.forward_train(x, seed=seed, iteration=iteration)
        gpu.forward_train(x, seed=seed, iteration=iteration)
        want, got = cpu.train_output(1), gpu.train_output(1)
        np.testing.assert_array_equal(got == 0, want == 0)
        assert 0.3 < float(np.mean(want == 0)) < 0.7


def test_untrainable_layers_are_named(tmp_path):
    """Cross-iteration batch-norm stays refused (the CPU trainer refuses it too), named by cfg line and type."""
    path = tmp_path / "net.cfg"
    path.write_text(cfg(8, 8, 3, conv(4), conv(4, batch_normalize=2)))
    gpu = pydarknet.load(str(path), device="cuda")
    x = np.zeros((2, 3, 8, 8), np.float32)
    message = r"net.cfg:\d+: layer 1 \[convolutional\] cannot train on cuda:0: cross-iteration batch normalisation"
    with pytest.raises(pydarknet.DeviceError, match=message):
        gpu.forward_train(x)
    # Mixed precision trains (tests/test_cuda_amp.py): an fp16 network is refused for the layer, not the precision.
    fp16 = pydarknet.load(str(path), device="cuda", precision="fp16")
    with pytest.raises(pydarknet.DeviceError, match=message):
        fp16.forward_train(x)


SGD_CFG = [conv(4, activation="leaky"), conv(4, size=1, learning_rate=0.5), ("shortcut", {"from": -2})]


def trained_pair(tmp_path, x):
    cpu, gpu = pair(tmp_path, cfg(7, 6, 3, *SGD_CFG))
    last = len(gpu.layers) - 1
    gpu.zero_grads()
    gpu.forward_train(x)
    gpu.backward({last: np.ones(gpu.train_output(last).shape, np.float32)})
    return cpu, gpu


def test_sgd_step_on_the_device_equals_the_host_optimizer(tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 7)).astype(np.float32)
    _, gpu = trained_pair(tmp_path, x)
    device_opt, host_opt = Optimizer(gpu), Optimizer(gpu)
    params = gpu.params.copy()
    grad = gpu.grads
    assert np.abs(grad).max() > 0
    for iteration in (1, 2):  # the second step also applies the first's momentum
        want = host_opt.step(params, grad, iteration, rate=0.01)
        got = device_opt.step_device(gpu, iteration, rate=0.01)
        assert not got.skipped and got.rate == want.rate
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-12)
        np.testing.assert_array_equal(gpu.params, params)
        device_opt.sync_host()  # the velocity lives on the device between steps
        np.testing.assert_array_equal(device_opt.velocity, host_opt.velocity)
    assert np.abs(device_opt.velocity).max() > 0


def test_nonfinite_gradient_skips_the_device_step_and_names_the_layer(tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 7)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    _, gpu = trained_pair(tmp_path, x)
    before = gpu.params.copy()
    opt = Optimizer(gpu)
    result = opt.step_device(gpu, 1, rate=0.01)
    assert result.skipped and result.nonfinite is not None
    assert (result.nonfinite.layer, result.nonfinite.tensor) == (0, "weights")  # biases come first, finite
    np.testing.assert_array_equal(gpu.params, before)
    opt.sync_host()
    assert not opt.velocity.any()


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov4-tiny"])
def test_whole_network_backward_matches_the_cpu(name):
    """A real cfg at 64 x 64: batch-normalised convolutions, maxpools, routes (with groups), upsample and the
    [yolo] heads, whose given gradient passes through to their inputs."""
    path = pathlib.Path(__file__).resolve().parents[1] / "cfg" / f"{name}.cfg"
    cpu = pydarknet.load(str(path), width=64, height=64)
    gpu = pydarknet.load(str(path), device="cuda", width=64, height=64)
    rng = np.random.default_rng(5)
    randomize_params(cpu, rng)
    gpu.params[...] = cpu.params
    x = rng.uniform(0, 1, (2, *cpu.input_shape)).astype(np.float32)
    heads = {}
    for net in (cpu, gpu):
        net.zero_grads()
        heads[net is gpu] = net.forward_train(x, seed=1, iteration=1)
    check(gpu.params, cpu.params, "parameters after forward_train")
    seeds = {}
    for index in cpu.yolo_layers:
        check(heads[True][index], heads[False][index], f"yolo layer {index}")
        seeds[index] = rng.standard_normal(heads[False][index].shape).astype(np.float32)
    want = cpu.backward(seeds, input_grad=True)
    got = gpu.backward(seeds, input_grad=True)
    check(got, want, "input gradient")
    check(gpu.grads, cpu.grads, "parameter gradient")


@pytest.mark.parametrize(
    "keys",
    [{"stopbackward": 1}, {"train_only_bn": 1}, {"onlyforward": 1}],
    ids=["stopbackward", "train_only_bn", "onlyforward"],
)
def test_darknet_backward_switches_match_the_cpu(tmp_path, keys):
    """stopbackward (that layer and all before it get nothing), train_only_bn (no weight gradient) and
    onlyforward (the layer passes nothing back) on layer 1 of three."""
    sections = [conv(4, activation="leaky"), conv(4, batch_normalize=1, activation="leaky", **keys), conv(3)]
    cpu, gpu = pair(tmp_path, cfg(9, 7, 3, *sections))
    compare_training(cpu, gpu, 2, np.random.default_rng(11))
    first = cpu.desc.layers[0].tensors[0]
    if "train_only_bn" not in keys:  # the first layer gets no gradient at all
        assert not gpu.grads[first.offset : first.offset + first.size].any()


# ----- the layer types and options added after the first slice: random shapes, several per case -------------

CHANNEL_ACTIVATIONS = ["normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"]
ELEMENTWISE = ["linear", "leaky", "mish", "logistic", "swish"]


def random_activation(rng, channel_share=0.5):
    pool = CHANNEL_ACTIVATIONS if rng.random() < channel_share else ELEMENTWISE
    return str(rng.choice(pool))


def batchnorm_case(rng):
    c = int(rng.integers(1, 6))
    return [conv(c, activation="leaky"), ("batchnorm", {}), conv(2)], c


def weighted_shortcut_case(rng, weights_type, normalization):
    """Two or three sources, one of them possibly smaller (the prefix rule), a random activation."""
    c = int(rng.integers(2, 6))
    small = int(rng.integers(1, c + 1))
    sections = [conv(small, activation="leaky"), conv(c, activation="leaky"), conv(c, activation="logistic")]
    keys = {
        "from": "-1,-2,-3" if rng.random() < 0.5 else "-2,-3",
        "weights_type": weights_type,
        "weights_normalization": normalization,
        "activation": random_activation(rng, 0.3),
    }
    return [*sections, ("shortcut", keys), conv(2)], c


CHANNEL_ACTIVATION_HOSTS = ["conv", "conv_bn", "shortcut", "sam", "scale_channels", "connected"]


def channel_activation_case(rng, activation, host):
    """A normalize_channels activation on one of the layer types that take one."""
    c = int(rng.integers(2, 6))
    first = conv(c, activation="leaky")
    if host == "connected":
        return [first, ("connected", {"output": c + 2, "activation": activation})], c
    body = {
        "conv": [conv(c, activation=activation)],
        "conv_bn": [conv(c, activation=activation, batch_normalize=1)],
        "shortcut": [conv(c, activation="leaky"), ("shortcut", {"from": -2, "activation": activation})],
        "sam": [conv(c, activation="logistic"), ("sam", {"from": -2, "activation": activation})],
        "scale_channels": [
            ("avgpool", {}),
            conv(c, size=1),
            ("scale_channels", {"from": -3, "activation": activation}),
        ],
    }[host]
    return [first, *body, conv(2)], c


def maxpool_depth_case(rng):
    out_c = int(rng.integers(1, 4))
    c = out_c * int(rng.integers(1, 4)) + int(rng.integers(0, out_c))
    return [conv(c, activation="leaky"), ("maxpool", {"maxpool_depth": 1, "out_channels": out_c}), conv(2)], c


def scale_channels_case(rng, scale_wh):
    c = int(rng.integers(1, 6))
    activation = random_activation(rng, 0.3)
    if scale_wh:
        body = [conv(1, size=1, activation="logistic"), ("scale_channels", {"from": -2, "scale_wh": 1})]
    else:
        body = [("avgpool", {}), conv(c, size=1, activation="logistic"), ("scale_channels", {"from": -3})]
    body[-1][1]["activation"] = activation
    return [conv(c, activation="leaky"), *body, conv(2)], c


def sam_case(rng):
    c = int(rng.integers(1, 6))
    keys = {"from": -2, "activation": random_activation(rng, 0.3)}
    return [conv(c, activation="leaky"), conv(c, activation="logistic"), ("sam", keys), conv(2)], c


def connected_case(rng, batch_normalize):
    c = int(rng.integers(1, 4))
    keys = {"output": int(rng.integers(2, 9)), "activation": random_activation(rng, 0.2)}
    keys["batch_normalize"] = batch_normalize
    return [conv(c, activation="leaky"), ("connected", keys), ("connected", {"output": 3})], c


def softmax_case(rng):
    groups = int(rng.choice([1, 2, 3]))
    keys = {"groups": groups, "temperature": float(rng.choice([1.0, 0.5, 2.5]))}
    return [
        conv(2, activation="leaky"),
        ("connected", {"output": groups * int(rng.integers(2, 5))}),
        ("softmax", keys),
    ], 2


NEW_LAYER_CASES = {
    "batchnorm": batchnorm_case,
    "maxpool_depth": maxpool_depth_case,
    "scale_channels": functools.partial(scale_channels_case, scale_wh=0),
    "scale_channels_wh": functools.partial(scale_channels_case, scale_wh=1),
    "sam": sam_case,
    "connected": functools.partial(connected_case, batch_normalize=0),
    "connected_bn": functools.partial(connected_case, batch_normalize=1),
    "softmax": softmax_case,
    **{
        f"shortcut_{t}_{n}": functools.partial(weighted_shortcut_case, weights_type=t, normalization=n)
        for t in ("per_feature", "per_channel")
        for n in ("none", "relu", "softmax")
    },
    **{
        f"{a}_{host}": functools.partial(channel_activation_case, activation=a, host=host)
        for a in CHANNEL_ACTIVATIONS
        for host in CHANNEL_ACTIVATION_HOSTS
    },
}


@pytest.mark.parametrize("shape", range(3))
@pytest.mark.parametrize("name", sorted(NEW_LAYER_CASES))
def test_more_layers_backward_match_the_cpu(tmp_path, name, shape):
    """Outputs, input and parameter gradients of each layer type and option against the CPU engine, on random
    shapes (three per case), batch 2 or 3."""
    rng = np.random.default_rng(1000 * shape + sum(map(ord, name)))
    sections, _ = NEW_LAYER_CASES[name](rng)
    w, h = int(rng.integers(3, 10)), int(rng.integers(3, 10))
    cpu, gpu = pair(tmp_path, cfg(w, h, int(rng.integers(1, 4)), *sections), seed=shape)
    errors = compare_training(cpu, gpu, int(rng.integers(2, 4)), rng)
    assert errors["input_grad_max"] > 0 and np.abs(cpu.grads).max() > 0, "the case has no gradient to compare"


MIXED_CFG = [
    conv(8, batch_normalize=1, activation="leaky"),
    conv(8, activation="logistic"),
    ("sam", {"from": -2}),
    ("avgpool", {}),
    conv(8, size=1, activation="logistic"),
    ("scale_channels", {"from": -3}),
    conv(8, activation="normalize_channels_softmax"),
    ("shortcut", {"from": "-1,-4", "weights_type": "per_channel", "weights_normalization": "softmax"}),
    ("batchnorm", {}),
    ("maxpool", {"maxpool_depth": 1, "out_channels": 4}),
    conv(2 * 7, size=1),
    ("yolo", dict(mask="0,1", anchors="1,2, 3,4", num=2, classes=2)),
]


def test_small_network_with_the_new_layers_matches_the_cpu(tmp_path):
    """A random cfg with [sam], [scale_channels], a weighted [shortcut], [batchnorm], maxpool_depth and a
    normalize_channels activation before a [yolo] head: every output, the input and the parameter gradients."""
    cpu, gpu = pair(tmp_path, cfg(9, 7, 3, *MIXED_CFG), seed=21)
    rng = np.random.default_rng(22)
    x = rng.uniform(0, 1, (2, *cpu.input_shape)).astype(np.float32)
    heads = {}
    for net in (cpu, gpu):
        net.zero_grads()
        heads[net is gpu] = net.forward_train(x, seed=1, iteration=1)
    check(gpu.params, cpu.params, "parameters after forward_train")
    for layer in cpu.layers:
        check(gpu.train_output(layer.index), cpu.train_output(layer.index), f"layer {layer.index} ({layer.type})")
    seeds = {i: rng.standard_normal(heads[False][i].shape).astype(np.float32) for i in cpu.yolo_layers}
    want = cpu.backward(seeds, input_grad=True)
    got = gpu.backward(seeds, input_grad=True)
    check(got, want, "input gradient")
    check(gpu.grads, cpu.grads, "parameter gradient")
    assert np.abs(cpu.grads).max() > 0
