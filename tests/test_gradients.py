"""The engine's backward pass against central finite differences of the float64 training-mode references.

Each check builds a tiny cfg with seeded random parameters, runs forward_train and backward with the loss
L = sum(output * R) for fixed random R (so dL/doutput = R), and compares the input gradient and every trainable
parameter tensor with central differences of the float64 reference forward (tests/gradcheck.py explains the
error measure and the tolerance). Then the training semantics around it: batch-norm statistics, rolling
updates, stopbackward/onlyforward/train_only_bn, dropout masks, gradient accumulation, resizing.
"""

import numpy as np
import pytest
from support import gradcheck as gc
from support import reference as ref
from support.reference import assert_close, cfg_text, randomize_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def build(tmp_path, width, height, channels, *sections, seed=0):
    net = ref.load_cfg(tmp_path, cfg_text(width, height, channels, *sections))
    rng = np.random.default_rng(seed)
    randomize_params(net, rng)
    return net, rng


def random_seeds(net, rng, batch, layers=None):
    """R for the chosen layers (default: the yolo layers, else the last layer)."""
    layers = layers or net.yolo_layers or [len(net.layers) - 1]
    return {i: rng.normal(size=(batch,) + tuple(net.layers[i].out_shape)).astype(np.float32) for i in layers}


# Finite differences at most this many entries of a tensor (a random subset of larger ones), to keep the
# suite quick; most tensors here are smaller and checked in full.
FD_LIMIT = 96


def check(net, rng, batch, *, layers=None, limit=FD_LIMIT, name=""):
    """Gradient check of the whole network; also checks the training outputs of the seeded layers."""
    c, h, w = net.input_shape
    x = rng.normal(size=(batch, c, h, w)).astype(np.float32)
    seeds = random_seeds(net, rng, batch, layers)
    g = gc.GradCheck(net, x, seeds)
    want = g.reference_outputs()
    for i in seeds:
        layer = net.desc.layers[i]
        if layer.type == "yolo":
            o = layer.options
            expected = ref.yolo(
                want[i],
                n_anchors=len(o["mask"]),
                classes=o["classes"],
                scale_x_y=o["scale_x_y"],
                new_coords=o["new_coords"],
            )
        else:
            expected = want[i]
        assert_close(g.train_outputs[i], expected, what=f"training output of layer {i}")
    errors = g.check_all(limit=limit, rng=rng)
    print(
        f"gradcheck {name}: max error {max(errors.values()):.2e} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items())
    )
    return g, errors


def conv(filters, size=3, **keys):
    return (
        "convolutional",
        dict({"filters": filters, "size": size, "stride": 1, "pad": 1, "activation": "linear"}, **keys),
    )


# ----------------------------------------------------------------------------------------------------------
# Activations: the element-wise derivative itself, then every activation inside a layer
# ----------------------------------------------------------------------------------------------------------

# Where the derivative jumps; grid points this close to one are skipped.
KINKS = {
    "relu": [0],
    "leaky": [0],
    "revleaky": [0],
    "relie": [0],
    "ramp": [0],
    "relu6": [0, 6],
    "hardtan": [-1, 1],
    "lhtan": [0, 1],
    "plse": [-4, 4],
    "hard_mish": [-2, 0],
    "elu": [0],
    "selu": [0],
    "stair": list(range(-30, 31)),
}
ELEMENTWISE = list(ref.ELEMENTWISE_ACTIVATIONS)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_derivative(engine, name):
    """gradient(y, x) against central differences of the float64 reference activation. The output-based
    formulas (Darknet's, e.g. y(1 - y)) see the float32 output, so near saturation they are accurate to float32
    round-off of the output (absolute 1e-6), not relative to the tiny derivative."""
    from pydarknet import _core
    from pydarknet.core import graph

    x = np.linspace(-24.93, 24.93, 2493) + 0.0123
    for k in KINKS.get(name, []):
        x = x[np.abs(x - k) > 1e-3]
    x32 = x.astype(np.float32)
    got = np.array(_core.cpu_activation_gradient(x32.tolist(), graph.ACTIVATIONS.index(name)))
    x64 = x32.astype(np.float64)
    h = 1e-6 * np.maximum(1.0, np.abs(x64))
    want = (ref.activate(x64 + h, name) - ref.activate(x64 - h, name)) / (2 * h)
    err = np.abs(got - want)
    bound = 1e-3 * np.abs(want) + 1e-6
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), f"{name}: at x={x64[worst]} engine {got[worst]}, finite differences {want[worst]}"


@pytest.mark.parametrize("name", ref.ALL_ACTIVATIONS)
def test_activation_in_conv(engine, tmp_path, name):
    net, rng = build(tmp_path, 5, 4, 3, conv(4, activation=name), seed=1)
    check(net, rng, 2, name=f"conv+{name}")


# ----------------------------------------------------------------------------------------------------------
# Convolutional
# ----------------------------------------------------------------------------------------------------------

CONV_CASES = {
    # name: (c, h, w, keys, batch)
    "3x3_s1_p1": (3, 5, 7, dict(filters=5, size=3, pad=1, activation="leaky"), 2),
    "3x3_s2_p1_bn_mish": (4, 7, 9, dict(filters=6, size=3, stride=2, pad=1, batch_normalize=1, activation="mish"), 2),
    "groups3_bn_swish": (6, 5, 6, dict(filters=9, size=3, pad=1, groups=3, batch_normalize=1, activation="swish"), 3),
    "depthwise_s2": (5, 6, 7, dict(filters=5, size=3, stride=2, pad=1, groups=5, activation="leaky"), 2),
    "dilation2_bn": (3, 9, 8, dict(filters=4, size=3, pad=1, dilation=2, batch_normalize=1, activation="logistic"), 2),
    "stride_x2_y1_pad0": (2, 6, 9, dict(filters=3, size=3, stride_x=2, stride_y=1, activation="linear"), 2),
    "1x1_bn_batch1": (7, 4, 5, dict(filters=3, size=1, batch_normalize=1, activation="leaky"), 1),
    "1x1_s2": (3, 5, 7, dict(filters=4, size=1, stride=2, activation="relu"), 2),
    "5x5_padding2_bn_batch1": (2, 6, 5, dict(filters=3, size=5, pad=1, batch_normalize=1, activation="tanh"), 1),
    "2x2_s2_batch3": (3, 6, 7, dict(filters=4, size=2, stride=2, activation="linear"), 3),
    "groups2_s2_bn_batch3": (
        4,
        7,
        6,
        dict(filters=6, size=3, stride=2, pad=1, groups=2, batch_normalize=1, activation="leaky"),
        3,
    ),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_convolutional(engine, tmp_path, case):
    c, h, w, keys, batch = CONV_CASES[case]
    net, rng = build(tmp_path, w, h, c, ("convolutional", keys), seed=2)
    check(net, rng, batch, name=f"conv {case}")


def test_conv_chain_with_batchnorm(engine, tmp_path):
    """Gradients through a batch-normalised layer reach the layer before it (BN's input gradient)."""
    net, rng = build(
        tmp_path,
        7,
        6,
        3,
        conv(5, batch_normalize=1, activation="leaky"),
        conv(4, stride=2, batch_normalize=1, activation="mish"),
        conv(3, size=1, activation="logistic"),
        seed=3,
    )
    check(net, rng, 2, name="conv chain")


# ----------------------------------------------------------------------------------------------------------
# Pooling and resampling
# ----------------------------------------------------------------------------------------------------------

POOL_CASES = {
    "maxpool_2_s1": (3, 5, 7, ("maxpool", dict(size=2, stride=1))),  # yolov3-tiny's size-keeping pool
    "maxpool_2_s2_odd": (2, 5, 7, ("maxpool", dict(size=2, stride=2))),
    "maxpool_3_s2": (2, 7, 8, ("maxpool", dict(size=3, stride=2))),
    "maxpool_spp_5": (2, 7, 8, ("maxpool", dict(size=5, stride=1))),
    "maxpool_spp_9": (2, 7, 8, ("maxpool", dict(size=9, stride=1))),
    "maxpool_spp_13": (2, 7, 8, ("maxpool", dict(size=13, stride=1))),
    "maxpool_stride_x2_y1": (2, 5, 8, ("maxpool", dict(size=2, stride_x=2, stride_y=1))),
    "maxpool_depth": (6, 4, 5, ("maxpool", dict(maxpool_depth=1, out_channels=2))),
    "local_avgpool_3_s2": (2, 7, 6, ("local_avgpool", dict(size=3, stride=2))),
    "local_avgpool_2_s1": (3, 5, 4, ("local_avgpool", dict(size=2, stride=1))),
    "avgpool": (3, 5, 4, ("avgpool", {})),
    "upsample_2": (3, 3, 4, ("upsample", dict(stride=2))),
    "upsample_3_scale": (2, 3, 2, ("upsample", dict(stride=3, scale=0.5))),
    "downsample_2": (2, 5, 7, ("upsample", dict(stride=-2, scale=1.5))),
    "reorg3d": (3, 4, 6, ("reorg3d", dict(stride=2))),
    "reorg3d_reverse": (16, 2, 3, ("reorg3d", dict(stride=2, reverse=1))),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool_and_resample(engine, tmp_path, case):
    """The layer first on one image (the network input's gradient is its input gradient), then behind a conv
    on two."""
    c, h, w, section = POOL_CASES[case]
    net, rng = build(tmp_path, w, h, c, section, seed=4)
    check(net, rng, 1, name=f"{case} batch 1")
    net, rng = build(tmp_path, w, h, c, conv(c, activation="leaky"), section, seed=5)
    check(net, rng, 2, name=f"conv+{case} batch 2")


def test_maxpool_gradient_goes_to_the_first_of_equal_values(engine, tmp_path):
    """Darknet's strict comparison keeps the first maximum of a window; the gradient goes there only."""
    net, _ = build(tmp_path, 2, 1, 1, ("maxpool", dict(size=2, stride=2)))
    net.forward_train(np.array([[[[3.0, 3.0]]]], dtype=np.float32))
    grad = net.backward({0: np.array([[[[5.0]]]], dtype=np.float32)}, input_grad=True)
    np.testing.assert_array_equal(grad, [[[[5.0, 0.0]]]])


# ----------------------------------------------------------------------------------------------------------
# Layers that read other layers
# ----------------------------------------------------------------------------------------------------------

MERGE_CASES = {
    "route_groups": [conv(6), conv(4, activation="leaky"), ("route", dict(layers="-1,-2", groups=2, group_id=1))],
    "route_tiny_split": [
        conv(6, activation="leaky"),
        ("route", dict(layers=-1, groups=2, group_id=1)),
        conv(3, activation="leaky"),
        ("route", dict(layers="-1,-2")),
    ],
    "route_two_readers": [
        conv(4),
        conv(4, activation="leaky"),
        ("route", dict(layers="-2")),
        ("shortcut", {"from": -2}),
    ],
    "shortcut": [conv(4), conv(4, activation="leaky"), ("shortcut", {"from": -2})],
    "shortcut_mish": [conv(4), conv(4, activation="leaky"), ("shortcut", {"from": -2, "activation": "mish"})],
    "shortcut_smaller_from": [conv(2), conv(4, activation="leaky"), ("shortcut", {"from": -2})],
    "shortcut_two_from": [conv(4), conv(4), conv(4, activation="leaky"), ("shortcut", {"from": "-2,-3"})],
    "sam": [conv(4), conv(4, activation="logistic"), ("sam", {"from": -2})],
    "sam_swish": [conv(4), conv(4, activation="logistic"), ("sam", {"from": -2, "activation": "swish"})],
    "scale_channels": [
        conv(4),
        ("avgpool", {}),
        ("connected", dict(output=4, activation="logistic")),
        ("scale_channels", {"from": -3}),
    ],
    "scale_channels_mish": [
        conv(4),
        ("avgpool", {}),
        ("connected", dict(output=4, activation="logistic")),
        ("scale_channels", {"from": -3, "activation": "mish"}),
    ],
    "scale_channels_wh": [
        conv(4),
        conv(1, size=1, activation="logistic"),
        ("scale_channels", {"from": -2, "scale_wh": 1}),
    ],
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(MERGE_CASES))
def test_merging_layers(engine, tmp_path, case, batch):
    net, rng = build(tmp_path, 5, 4, 3, *MERGE_CASES[case], seed=6)
    check(net, rng, batch, name=f"{case} batch {batch}")


@pytest.mark.parametrize("wtype", ["per_feature", "per_channel"])
@pytest.mark.parametrize("wnorm", ["none", "relu", "softmax"])
def test_weighted_shortcut(engine, tmp_path, wtype, wnorm):
    """Three distinct sources (input, two `from`), one with fewer channels; the weights' gradient goes through
    the relu/softmax normalisation."""
    net, rng = build(
        tmp_path,
        5,
        4,
        3,
        conv(2),
        conv(4, activation="leaky"),
        conv(4),
        ("shortcut", {"from": "-2,-3", "weights_type": wtype, "weights_normalization": wnorm}),
        seed=7,
    )
    check(net, rng, 2, name=f"shortcut {wtype} {wnorm}")


# ----------------------------------------------------------------------------------------------------------
# The remaining layer types
# ----------------------------------------------------------------------------------------------------------

OTHER_CASES = {
    # name: (sections, batch); connected with batch-norm needs several images (its statistics are over them)
    "yolo": ([conv(2 * 7), ("yolo", dict(mask="0,1", anchors="1,2,3,4", num=2, classes=2))], 2),
    "yolo_new_coords": (
        [
            conv(2 * 7, activation="logistic"),
            ("yolo", dict(mask="0,1", anchors="1,2,3,4", num=2, classes=2, new_coords=1, scale_x_y=2.0)),
        ],
        2,
    ),
    "connected": ([("connected", dict(output=5, activation="leaky"))], 2),
    "connected_after_conv": ([conv(3), ("connected", dict(output=5, activation="gelu"))], 2),
    "connected_bn": ([conv(3), ("connected", dict(output=5, batch_normalize=1, activation="tanh"))], 4),
    "connected_bn_batch3": ([("connected", dict(output=4, batch_normalize=1, activation="linear"))], 3),
    "softmax": ([conv(3), ("softmax", dict(groups=2, temperature=0.7))], 2),
    "softmax_after_connected": ([("connected", dict(output=6, activation="linear")), ("softmax", {})], 3),
    "batchnorm": ([conv(3), ("batchnorm", {})], 2),
    "batchnorm_first": ([("batchnorm", {})], 1),
    "dropout": ([conv(4), ("dropout", dict(probability=0.3))], 2),
    "cost": ([conv(4), ("cost", {})], 2),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_other_layers(engine, tmp_path, case):
    sections, batch = OTHER_CASES[case]
    net, rng = build(tmp_path, 4, 3, 3, *sections, seed=8)
    check(net, rng, batch, name=case)


def test_the_check_detects_darknets_batch_norm_approximation(engine, tmp_path):
    """Darknet's normalize_delta_cpu divides one term by N where the derivative of its forward (variance over
    N - 1) has N - 1. Written out in numpy, that gradient fails the check the engine passes: the tolerance is
    tight enough to see a 1/N slip (here N = 2 x 12 values per channel)."""
    net, rng = build(tmp_path, 4, 3, 3, ("batchnorm", {}), seed=16)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    r = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    g = gc.GradCheck(net, x, {0: r})
    engine_grad, fd = g.input_fd()
    assert gc.relative_errors(engine_grad, fd).max() <= gc.RTOL
    p = ref.params64(net.layers[0])
    x64, count = x.astype(np.float64), 2 * 3 * 4
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x64 - mean) ** 2).sum(axis=(0, 2, 3), keepdims=True) / (count - 1)
    delta = r * p["scales"].reshape(1, -1, 1, 1)
    mean_delta = delta.sum(axis=(0, 2, 3), keepdims=True) * -1 / np.sqrt(var + 1e-5)
    var_delta = (delta * (x64 - mean)).sum(axis=(0, 2, 3), keepdims=True) * -0.5 * (var + 1e-5) ** -1.5
    darknet = delta / np.sqrt(var + 1e-5) + var_delta * 2 * (x64 - mean) / count + mean_delta / count
    assert gc.relative_errors(darknet.reshape(-1), fd).max() > 10 * gc.RTOL


def test_yolo_backward_is_identity(engine, tmp_path):
    """The gradient given for a [yolo] layer is the gradient of its input (Darknet's delta) and passes through
    unchanged."""
    net, rng = build(tmp_path, 4, 3, 6, ("yolo", dict(mask="0", anchors="1,2", num=1, classes=1)), seed=9)
    x = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    out = net.forward_train(x)
    assert_close(out[0], ref.yolo(x, n_anchors=1, classes=1), what="yolo training output")
    r = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(net.backward({0: r}, input_grad=True), r)


# ----------------------------------------------------------------------------------------------------------
# A small detector end to end
# ----------------------------------------------------------------------------------------------------------

TINY = [
    conv(8, stride=2, batch_normalize=1, activation="leaky"),  # 0: 8 x 8x8
    conv(8, batch_normalize=1, activation="leaky"),  # 1
    ("route", dict(layers=-1, groups=2, group_id=1)),  # 2: 4 ch (yolov4-tiny's split)
    conv(4, batch_normalize=1, activation="leaky"),  # 3
    conv(4, batch_normalize=1, activation="leaky"),  # 4
    ("route", dict(layers="-1,-2")),  # 5: 8 ch
    conv(8, size=1, batch_normalize=1, activation="leaky"),  # 6
    ("route", dict(layers="-6,-1")),  # 7: 16 ch
    ("maxpool", dict(size=2, stride=2)),  # 8: 16 x 4x4
    conv(8, batch_normalize=1, activation="leaky"),  # 9
    conv(8, batch_normalize=1, activation="mish"),  # 10
    ("shortcut", {"from": -2}),  # 11
    ("maxpool", dict(size=2, stride=1)),  # 12: 4x4 kept
    conv(2 * 7, size=1, activation="linear"),  # 13
    ("yolo", dict(mask="0,1", anchors="2,3,4,5,6,7,8,9", num=4, classes=2, scale_x_y=1.05)),  # 14
    ("route", dict(layers=-4)),  # 15: layer 11
    conv(4, size=1, batch_normalize=1, activation="leaky"),  # 16
    ("upsample", dict(stride=2)),  # 17: 8x8
    ("route", dict(layers="-1,7")),  # 18: 20 ch
    conv(2 * 7, size=1, activation="linear"),  # 19
    ("yolo", dict(mask="2,3", anchors="2,3,4,5,6,7,8,9", num=4, classes=2, scale_x_y=1.05)),  # 20
]


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_detector_end_to_end(engine, tmp_path, batch):
    """conv+BN+leaky/mish, maxpool 2/2 and 2/1, route with groups and several inputs, shortcut, upsample and two
    yolo heads, with gradients given at both heads; a random subset of each tensor's entries is checked."""
    net, rng = build(tmp_path, 16, 16, 3, *TINY, seed=10)
    assert net.yolo_layers == [14, 20]
    check(net, rng, batch, limit=16, name=f"tiny detector batch {batch}")


# ----------------------------------------------------------------------------------------------------------
# Training semantics
# ----------------------------------------------------------------------------------------------------------


def bn_net(tmp_path, **keys):
    return build(
        tmp_path,
        6,
        5,
        3,
        conv(4, batch_normalize=1, activation="leaky", **keys),
        ("connected", dict(output=3, batch_normalize=1, activation="linear")),
        seed=11,
    )


def test_rolling_statistics_after_one_training_forward(engine, tmp_path):
    net, rng = bn_net(tmp_path)
    before = [ref.params64(l) for l in net.layers]
    x = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    net.forward_train(x)
    conv_raw = ref.conv2d_raw(x, before[0]["weights"], padding=1)
    fc_raw = net.train_output(0).astype(np.float64).reshape(4, -1) @ before[1]["weights"].T
    for i, raw in enumerate([conv_raw, fc_raw]):
        _, mean, variance = ref.batchnorm_train(raw, before[i]["scales"], before[i]["biases"])
        after = ref.params64(net.layers[i])
        assert_close(
            after["rolling_mean"],
            ref.rolling_update(before[i]["rolling_mean"], mean),
            rtol=1e-5,
            what=f"layer {i} rolling mean",
        )
        assert_close(
            after["rolling_variance"],
            ref.rolling_update(before[i]["rolling_variance"], variance),
            rtol=1e-5,
            what=f"layer {i} rolling variance",
        )
        for name in ("weights", "biases", "scales"):
            np.testing.assert_array_equal(after[name], before[i][name])


def test_forward_train_uses_batch_statistics_and_forward_the_rolling_ones(engine, tmp_path):
    net, rng = bn_net(tmp_path)
    x = rng.normal(size=(3, 3, 5, 6)).astype(np.float32)
    p = ref.params64(net.layers[0])
    trained = net.forward_train(x)
    want_train = ref.convolutional_train(
        x, p["weights"], p["biases"], padding=1, batch_normalize=True, scales=p["scales"], activation="leaky"
    )
    assert_close(net.train_output(0), want_train, what="training forward (batch statistics)")
    assert list(trained) == [1]
    # The next inference forward uses the rolling statistics, as just updated by the training forward.
    p = ref.params64(net.layers[0])
    want_infer = ref.convolutional(
        x,
        p["weights"],
        p["biases"],
        padding=1,
        batch_normalize=True,
        scales=p["scales"],
        rolling_mean=p["rolling_mean"],
        rolling_variance=p["rolling_variance"],
        activation="leaky",
    )
    infer = net.forward_all(x)[0]
    assert_close(infer, want_infer, what="inference forward (rolling statistics)")
    assert np.max(np.abs(infer - net.train_output(0))) > 0.1


def test_batch_norm_needs_two_values_per_channel(engine, tmp_path):
    net, rng = build(tmp_path, 4, 3, 3, ("connected", dict(output=3, batch_normalize=1, activation="linear")))
    with pytest.raises(ValueError, match="layer 0.*more than one value per channel"):
        net.forward_train(rng.normal(size=(1, 3, 3, 4)).astype(np.float32))
    net.forward_train(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))


def frozen_net(tmp_path, stop_layer, stop=1, key="stopbackward"):
    sections = [
        conv(4, batch_normalize=1, activation="leaky"),
        conv(4, activation="leaky"),
        conv(4, batch_normalize=1, activation="leaky"),
        conv(3, activation="linear"),
    ]
    name, keys = sections[stop_layer]
    sections[stop_layer] = (name, dict(keys, **{key: stop}))
    return build(tmp_path, 5, 4, 3, *sections, seed=12)


def grads_of(net, x, r, iteration=0):
    net.zero_grads()
    net.forward_train(x, iteration=iteration)
    input_grad = net.backward({3: r}, input_grad=True)
    return np.array(net.grads), input_grad


def layer_grads(net, grads, i):
    """The trainable tensors' gradients of layer i (rolling statistics never get one)."""
    return {
        t.name: grads[t.offset : t.offset + t.size]
        for t in net.desc.layers[i].tensors
        if not t.name.startswith("rolling_")
    }


def test_stopbackward_freezes_that_layer_and_all_before(engine, tmp_path):
    free, rng = frozen_net(tmp_path, 1, stop=0)
    frozen, _ = frozen_net(tmp_path, 1, stop=1)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    r = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    want, _ = grads_of(free, x, r)
    got, input_grad = grads_of(frozen, x, r)
    for i in (0, 1):
        for name, g in layer_grads(frozen, got, i).items():
            assert np.all(g == 0), f"layer {i} {name} must be frozen"
    assert np.all(input_grad == 0)
    for i in (2, 3):
        for name, g in layer_grads(frozen, got, i).items():
            np.testing.assert_array_equal(g, layer_grads(free, want, i)[name])
            assert np.any(g != 0)


def test_stopbackward_n_freezes_until_iteration_n(engine, tmp_path):
    net, rng = frozen_net(tmp_path, 2, stop=5)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    r = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    early, early_input = grads_of(net, x, r, iteration=4)
    assert all(np.all(g == 0) for i in (0, 1, 2) for g in layer_grads(net, early, i).values())
    assert np.all(early_input == 0) and np.any(layer_grads(net, early, 3)["weights"] != 0)
    late, late_input = grads_of(net, x, r, iteration=5)
    assert all(np.any(g != 0) for i in (0, 1, 2, 3) for g in layer_grads(net, late, i).values())
    assert np.any(late_input != 0)


def test_onlyforward_layer_passes_nothing_back(engine, tmp_path):
    net, rng = frozen_net(tmp_path, 2, key="onlyforward")
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    got, input_grad = grads_of(net, x, rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    assert all(np.all(g == 0) for i in (0, 1, 2) for g in layer_grads(net, got, i).values())
    assert np.any(layer_grads(net, got, 3)["weights"] != 0) and np.all(input_grad == 0)


def test_train_only_bn_keeps_batch_norm_gradients_only(engine, tmp_path):
    free, rng = frozen_net(tmp_path, 2, stop=0, key="train_only_bn")
    bn_only, _ = frozen_net(tmp_path, 2, stop=1, key="train_only_bn")
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    r = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    want, want_input = grads_of(free, x, r)
    got, got_input = grads_of(bn_only, x, r)
    mine = layer_grads(bn_only, got, 2)
    assert np.all(mine["weights"] == 0)
    for name in ("scales", "biases"):
        np.testing.assert_array_equal(mine[name], layer_grads(free, want, 2)[name])
    np.testing.assert_array_equal(got_input, want_input)


def dropout_net(tmp_path, probability=0.3):
    return build(tmp_path, 40, 25, 10, ("dropout", dict(probability=probability)), seed=13)


def test_dropout_mask_is_reproducible(engine, tmp_path):
    net, rng = dropout_net(tmp_path)
    x = rng.normal(size=(2, 10, 25, 40)).astype(np.float32)

    def mask(seed, iteration):
        return net.forward_train(x, seed=seed, iteration=iteration)[0] == 0

    first = mask(7, 3)
    np.testing.assert_array_equal(first, mask(7, 3))
    assert np.mean(first != mask(7, 4)) > 0.3 and np.mean(first != mask(8, 3)) > 0.3
    # Drop rate p = 0.3 over 20000 values: the standard deviation of the rate is 0.0032.
    assert abs(first.mean() - 0.3) < 0.02
    out = net.forward_train(x, seed=7, iteration=3)[0]
    np.testing.assert_allclose(out[~first], x[~first] / np.float32(0.7), rtol=1e-6)
    # backward draws the same mask
    grad = net.backward({0: np.ones_like(x)}, input_grad=True)
    np.testing.assert_array_equal(grad == 0, first)
    # inference is the identity
    np.testing.assert_array_equal(net.forward(x)[0], x)


def test_untrainable_options_are_refused_with_the_cfg_line(engine, tmp_path):
    import pydarknet

    for section, problem in [
        (conv(4, batch_normalize=1, cbn=1), "cbn"),
        (("dropout", dict(probability=0.5, dropblock=1)), "dropblock"),
    ]:
        net, rng = build(tmp_path, 4, 3, 3, section)
        line = net.desc.layers[0].line
        with pytest.raises(pydarknet.CfgError, match=rf"net.cfg:{line}: layer 0 .*{problem}"):
            net.forward_train(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# The API around the gradient buffer
# ----------------------------------------------------------------------------------------------------------


def small_net(tmp_path):
    return build(
        tmp_path, 6, 5, 3, conv(4, batch_normalize=1, activation="leaky"), conv(2, activation="linear"), seed=14
    )


def test_gradients_accumulate_until_zeroed(engine, tmp_path):
    net, rng = small_net(tmp_path)
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    r = {1: rng.normal(size=(2, 2, 5, 6)).astype(np.float32)}
    assert net.grads.shape == net.flat_params.shape == net.params.shape
    net.zero_grads()
    net.forward_train(x)
    assert net.backward(r) is None
    once = np.array(net.grads)
    assert np.any(once != 0)
    net.forward_train(x)
    net.backward(r)
    # Images are added one by one, so the second pass rounds differently from doubling: float32 ulps only.
    np.testing.assert_allclose(net.grads, 2 * once, rtol=1e-6, atol=1e-6 * np.abs(once).max())
    net.zero_grads()
    assert np.all(net.grads == 0)


def test_backward_rejects_bad_calls(engine, tmp_path):
    net, rng = small_net(tmp_path)
    r = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="forward_train first"):
        net.backward({1: r})
    net.forward_train(rng.normal(size=(2, 3, 5, 6)).astype(np.float32))
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 5, 6\)"):
        net.backward({1: r[:1]})
    with pytest.raises(ValueError, match="layer 5"):
        net.backward({5: r})
    with pytest.raises(ValueError, match="input must be a float32 array of shape"):
        net.forward_train(np.zeros((2, 3, 6, 5), np.float32))


def test_optimizer_writes_through_a_kept_view_reach_the_next_forward(engine, tmp_path):
    """An optimizer keeps the flat views and writes them after backward; the next inference forward sees it."""
    net, rng = small_net(tmp_path)
    params, grads = net.flat_params, net.grads
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    net.forward(x)
    for _ in range(2):
        net.zero_grads()
        net.forward_train(x)
        net.backward({1: rng.normal(size=(2, 2, 5, 6)).astype(np.float32)})
        params -= np.float32(0.1) * grads
        p0, p1 = ref.params64(net.layers[0]), ref.params64(net.layers[1])
        y0 = ref.convolutional(
            x,
            p0["weights"],
            p0["biases"],
            padding=1,
            batch_normalize=True,
            scales=p0["scales"],
            rolling_mean=p0["rolling_mean"],
            rolling_variance=p0["rolling_variance"],
            activation="leaky",
        )
        want = ref.convolutional(y0, p1["weights"], p1["biases"], padding=1, activation="linear")
        assert_close(net.forward(x)[0], want, what="inference forward after an optimizer step")
    # A write after an inference forward needs touch_params() (the folded copies are re-derived then).
    params[...] = 0
    net.touch_params()
    assert np.all(net.forward(x)[0] == 0)


def test_resized_network_shares_parameters_and_gradients(engine, tmp_path):
    net, rng = build(tmp_path, 16, 16, 3, *TINY, seed=15)
    big = net.resized(32, 24)
    assert big.input_shape == (3, 24, 32)
    assert big.layers[14].out_shape == (14, 6, 8) and net.layers[14].out_shape == (14, 4, 4)
    assert np.shares_memory(big.flat_params, net.flat_params) and np.shares_memory(big.grads, net.grads)
    # a step through one network is seen by the other
    net.flat_params[net.desc.layers[13].tensor("biases").offset] += 1.0
    x = rng.normal(size=(2, 3, 24, 32)).astype(np.float32)
    big.zero_grads()
    out = big.forward_train(x)
    assert set(out) == {14, 20}
    seeds = {i: rng.normal(size=o.shape).astype(np.float32) for i, o in out.items()}
    big.backward(seeds)
    np.testing.assert_array_equal(net.grads, big.grads)
    # and it computes what a network loaded at that size with the same parameters computes
    same = ref.load_cfg(tmp_path, cfg_text(32, 24, 3, *TINY), name="same.cfg")
    same.flat_params[...] = net.flat_params
    for a, b in zip(same.forward(x), big.forward(x)):
        np.testing.assert_array_equal(a, b)


def test_resized_refuses_a_layout_that_depends_on_the_size(engine, tmp_path):
    import pydarknet

    net, _ = build(tmp_path, 4, 3, 3, conv(2), ("connected", dict(output=3)))
    with pytest.raises(pydarknet.DarknetError, match="laid out differently"):
        net.resized(8, 6)
