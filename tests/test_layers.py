"""Every layer of the engine against the float64 references in tests/reference.py.

Each test writes a tiny cfg, loads it, fills the parameters with seeded random values, runs forward_all and
compares every layer under test with the reference applied to the engine's own input(s) of that layer.
"""

import numpy as np
import pytest
from support import reference as ref
from support.reference import assert_close, cfg_text, params64, random_input, randomize_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def build(engine, tmp_path, width, height, channels, *sections, seed=0, weight_gain=1.0):
    net = ref.load_cfg(tmp_path, cfg_text(width, height, channels, *sections))
    rng = np.random.default_rng(seed)
    randomize_params(net, rng, weight_gain=weight_gain)
    return net, rng


def conv_ref(
    net, layer, x, *, size, stride_x=1, stride_y=1, padding=0, dilation=1, groups=1, bn=0, activation="logistic"
):
    p = params64(layer)
    return ref.convolutional(
        x,
        p["weights"],
        p["biases"],
        stride_x=stride_x,
        stride_y=stride_y,
        padding=padding,
        dilation=dilation,
        groups=groups,
        batch_normalize=bool(bn),
        scales=p.get("scales"),
        rolling_mean=p.get("rolling_mean"),
        rolling_variance=p.get("rolling_variance"),
        activation=activation,
        bn_eps=ref.BN_EPSILON,
    )


def linear_conv(filters, size=3, **extra):
    keys = {"filters": filters, "size": size, "stride": 1, "pad": 1, "activation": "linear"}
    keys.update(extra)
    return ("convolutional", keys)


# ----------------------------------------------------------------------------------------------------------
# The references checked against independent formulations (no engine needed)
# ----------------------------------------------------------------------------------------------------------


class TestReferenceSelfChecks:
    @pytest.mark.parametrize(
        "c,n,groups,size,sx,sy,padding,dilation",
        [
            (4, 6, 2, 3, 1, 1, 1, 1),
            (6, 6, 6, 3, 2, 1, 1, 2),
            (5, 3, 1, 5, 2, 2, 2, 1),
            (4, 4, 1, 1, 2, 1, 0, 1),
            (3, 2, 1, 3, 1, 2, 0, 1),
            (4, 4, 2, 2, 1, 1, 1, 1),
            (2, 3, 1, 5, 1, 1, 2, 2),
        ],
    )
    def test_conv_direct_sum_matches_scalar_loops(self, c, n, groups, size, sx, sy, padding, dilation):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2, c, 7, 9))
        w = rng.normal(size=(n, c // groups, size, size))
        kw = dict(stride_x=sx, stride_y=sy, padding=padding, dilation=dilation, groups=groups)
        a = ref.conv2d_raw(x, w, **kw)
        b = ref.conv2d_naive(x, w, **kw)
        assert a.shape == b.shape == (2, n, (7 + 2 * padding - size) // sy + 1, (9 + 2 * padding - size) // sx + 1)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    def test_conv_groups_equal_separate_convs(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(1, 6, 5, 5))
        w = rng.normal(size=(4, 3, 3, 3))
        whole = ref.conv2d_raw(x, w, padding=1, groups=2)
        first = ref.conv2d_raw(x[:, :3], w[:2], padding=1)
        second = ref.conv2d_raw(x[:, 3:], w[2:], padding=1)
        np.testing.assert_allclose(whole, np.concatenate([first, second], axis=1), rtol=1e-12)

    def test_conv_1x1_is_matrix_product(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2, 5, 4, 3))
        w = rng.normal(size=(7, 5, 1, 1))
        want = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])
        np.testing.assert_allclose(ref.conv2d_raw(x, w), want, rtol=1e-12)

    def test_batchnorm_formula(self):
        y = np.array([[1.0, 2.0]])
        out = ref.batchnorm(y, scales=[2.0, 0.5], mean=[0.5, 1.0], variance=[4.0, 1.0], eps=0.0)
        np.testing.assert_allclose(out, [[0.5, 0.5]])

    def test_maxpool_matches_padded_sliding_window(self):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(2, 3, 7, 9))
        for size, sx, sy, padding in [(2, 1, 1, 1), (2, 2, 2, 1), (3, 2, 1, 2), (5, 1, 1, 4), (3, 2, 2, 0)]:
            before = padding // 2
            xp = np.full((2, 3, 7 + padding + size, 9 + padding + size), -np.inf)
            xp[:, :, before : before + 7, before : before + 9] = x
            out = ref.maxpool(x, size=size, stride_x=sx, stride_y=sy, padding=padding)
            oh, ow = out.shape[2:]
            assert (oh, ow) == ((7 + padding - size) // sy + 1, (9 + padding - size) // sx + 1)
            for i in range(oh):
                for j in range(ow):
                    win = xp[:, :, i * sy : i * sy + size, j * sx : j * sx + size]
                    np.testing.assert_array_equal(out[:, :, i, j], win.max(axis=(2, 3)))

    def test_maxpool_keeps_size_for_stride_1(self):
        x = np.zeros((1, 1, 13, 13))
        for size in (2, 5, 9, 13):
            assert ref.maxpool(x, size=size, stride_x=1, stride_y=1).shape == (1, 1, 13, 13)

    def test_local_avgpool_interior_is_plain_mean(self):
        rng = np.random.default_rng(5)
        x = rng.normal(size=(1, 2, 6, 6))
        out = ref.local_avgpool(x, size=2, stride_x=2, stride_y=2)
        want = x.reshape(1, 2, 3, 2, 3, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(out, want, rtol=1e-12)

    def test_reorg3d_flat_matches_formula(self):
        rng = np.random.default_rng(6)
        for c, h, w, s in [(3, 6, 10, 2), (5, 9, 15, 3)]:
            x = rng.normal(size=(2, c, h, w))
            np.testing.assert_array_equal(ref.reorg3d(x, stride=s), ref.reorg3d_direct(x, stride=s))

    def test_reorg3d_is_a_permutation(self):
        x = np.arange(2 * 16 * 4 * 6, dtype=np.float64).reshape(2, 16, 4, 6)
        for f in (ref.reorg3d, ref.reorg3d_reverse):
            out = f(x, stride=2)
            np.testing.assert_array_equal(np.sort(out.reshape(-1)), x.reshape(-1))

    def test_upsample_then_downsample(self):
        rng = np.random.default_rng(7)
        x = rng.normal(size=(1, 2, 3, 4))
        up = ref.upsample(x, stride=2, scale=1.0)
        np.testing.assert_array_equal(up[:, :, ::2, ::2], x)
        np.testing.assert_array_equal(up[:, :, 1::2, 1::2], x)
        down = ref.upsample(up, stride=-2, scale=0.5)
        np.testing.assert_allclose(down, 2.0 * x, rtol=1e-12)

    def test_route_groups_are_channel_slices(self):
        rng = np.random.default_rng(8)
        a = rng.normal(size=(2, 6, 3, 5))
        b = rng.normal(size=(2, 4, 3, 5))
        out = ref.route([a, b], groups=2, group_id=1)
        np.testing.assert_array_equal(out, np.concatenate([a[:, 3:], b[:, 2:]], axis=1))

    def test_shortcut_weighted_forms(self):
        rng = np.random.default_rng(9)
        x = rng.normal(size=(2, 3, 4, 5))
        f = rng.normal(size=(2, 3, 4, 5))
        np.testing.assert_allclose(ref.shortcut(x, [f]), x + f, rtol=1e-12)
        w = np.array([0.3, -1.2])
        np.testing.assert_allclose(
            ref.shortcut(x, [f], weights=w, weights_type="per_feature"), 0.3 * x - 1.2 * f, rtol=1e-12
        )
        r = np.maximum(w, 0) / (1e-4 + np.maximum(w, 0).sum())
        np.testing.assert_allclose(
            ref.shortcut(x, [f], weights=w, weights_type="per_feature", weights_normalization="relu"),
            r[0] * x + r[1] * f,
            rtol=1e-12,
        )
        e = np.exp(w - w.max()) / (1e-4 + np.exp(w - w.max()).sum())
        np.testing.assert_allclose(
            ref.shortcut(x, [f], weights=w, weights_type="per_feature", weights_normalization="softmax"),
            e[0] * x + e[1] * f,
            rtol=1e-12,
        )
        wc = rng.normal(size=6)
        got = ref.shortcut(x, [f], weights=wc, weights_type="per_channel")
        want = wc[:3].reshape(1, 3, 1, 1) * x + wc[3:].reshape(1, 3, 1, 1) * f
        np.testing.assert_allclose(got, want, rtol=1e-12)

    def test_shortcut_smaller_from_adds_prefix(self):
        x = np.zeros((1, 4, 2, 2))
        f = np.ones((1, 2, 2, 2))
        out = ref.shortcut(x, [f])
        np.testing.assert_array_equal(out[:, :2], 1.0)
        np.testing.assert_array_equal(out[:, 2:], 0.0)

    def test_softmax_sums_to_one_per_group(self):
        rng = np.random.default_rng(10)
        x = rng.normal(size=(2, 6, 2, 2))
        out = ref.softmax(x, groups=3, temperature=0.5).reshape(2, 3, -1)
        np.testing.assert_allclose(out.sum(axis=2), 1.0, rtol=1e-12)

    def test_yolo_new_coords_scale_1_is_identity(self):
        rng = np.random.default_rng(11)
        x = rng.normal(size=(1, 2 * 7, 3, 3))
        np.testing.assert_array_equal(ref.yolo(x, n_anchors=2, classes=2, new_coords=1), x)
        out = ref.yolo(x, n_anchors=2, classes=2, scale_x_y=2.0)
        sig = 1 / (1 + np.exp(-x))
        np.testing.assert_allclose(out[:, 7:9], 2 * sig[:, 7:9] - 0.5, rtol=1e-12)
        np.testing.assert_array_equal(out[:, 9:11], x[:, 9:11])

    def test_scale_channels_forms(self):
        rng = np.random.default_rng(12)
        f = rng.normal(size=(2, 3, 4, 5))
        s = rng.normal(size=(2, 3, 1, 1))
        np.testing.assert_allclose(ref.scale_channels(s, f), s * f, rtol=1e-12)
        m = rng.normal(size=(2, 1, 4, 5))
        np.testing.assert_allclose(ref.scale_channels(m, f, scale_wh=1), m * f, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Convolutional
# ----------------------------------------------------------------------------------------------------------

# (channels, height, width, cfg keys, reference keys)
CONV_CASES = {
    "3x3_pad1_bn_leaky": (
        5,
        13,
        13,
        dict(filters=7, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky"),
        dict(padding=1, bn=1),
    ),
    "1x1_linear": (6, 7, 9, dict(filters=11, size=1, stride=1, pad=1, activation="linear"), dict(padding=0)),
    "5x5_stride2_bn_mish": (
        3,
        7,
        9,
        dict(filters=5, size=5, stride=2, pad=1, batch_normalize=1, activation="mish"),
        dict(padding=2, stride_x=2, stride_y=2, bn=1),
    ),
    "groups2": (
        6,
        7,
        9,
        dict(filters=10, size=3, stride=1, pad=1, groups=2, activation="linear"),
        dict(padding=1, groups=2),
    ),
    "depthwise": (
        10,
        9,
        7,
        dict(filters=10, size=3, stride=1, pad=1, groups=10, batch_normalize=1, activation="relu"),
        dict(padding=1, groups=10, bn=1),
    ),
    "depthwise_x2_stride2": (
        5,
        13,
        13,
        dict(filters=10, size=3, stride=2, pad=1, groups=5, activation="linear"),
        dict(padding=1, groups=5, stride_x=2, stride_y=2),
    ),
    "stride_x2_y1": (
        4,
        7,
        9,
        dict(filters=6, size=3, stride_x=2, stride_y=1, pad=1, activation="linear"),
        dict(padding=1, stride_x=2, stride_y=1),
    ),
    "stride_x1_y3": (
        4,
        13,
        7,
        dict(filters=6, size=3, stride_x=1, stride_y=3, pad=1, activation="logistic"),
        dict(padding=1, stride_x=1, stride_y=3),
    ),
    "pad0": (3, 7, 9, dict(filters=5, size=3, stride=1, pad=0, activation="linear"), dict(padding=0)),
    "explicit_padding2": (3, 7, 9, dict(filters=5, size=3, stride=1, padding=2, activation="linear"), dict(padding=2)),
    "explicit_padding1_5x5_stride2": (
        4,
        9,
        7,
        dict(filters=3, size=5, stride=2, padding=1, activation="linear"),
        dict(padding=1, stride_x=2, stride_y=2),
    ),
    "dilation2": (
        4,
        13,
        13,
        dict(filters=6, size=3, stride=1, pad=1, dilation=2, activation="linear"),
        dict(padding=1, dilation=2),
    ),
    "dilation2_5x5_stride2_bn": (
        3,
        13,
        11,
        dict(filters=4, size=5, stride=2, pad=1, dilation=2, batch_normalize=1, activation="swish"),
        dict(padding=2, dilation=2, stride_x=2, stride_y=2, bn=1),
    ),
    "dilation3_groups2": (
        6,
        11,
        9,
        dict(filters=4, size=3, stride=1, pad=1, dilation=3, groups=2, activation="linear"),
        dict(padding=1, dilation=3, groups=2),
    ),
    "even_kernel_2x2": (3, 7, 9, dict(filters=4, size=2, stride=1, pad=1, activation="linear"), dict(padding=1)),
    "1x1_stride2": (5, 7, 9, dict(filters=3, size=1, stride=2, activation="linear"), dict(stride_x=2, stride_y=2)),
    "default_activation_is_logistic": (3, 5, 7, dict(filters=3, size=3, pad=1), dict(padding=1)),
    "3x3_stride2_bn_leaky_13": (
        7,
        13,
        13,
        dict(filters=9, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky"),
        dict(padding=1, stride_x=2, stride_y=2, bn=1),
    ),
}


# Shapes that cross the engine's GEMM blocking (depth 256, 120 rows, 512 columns per tile) and vector tails.
LARGE_CONV_CASES = {
    "k576_m130_n575": (
        64,
        23,
        25,
        dict(filters=130, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky"),
        dict(padding=1, bn=1),
    ),
    "1x1_k300_m121_n1023": (300, 31, 33, dict(filters=121, size=1, stride=1, activation="linear"), dict()),
    "stride2_k333_n289": (
        37,
        33,
        34,
        dict(filters=45, size=3, stride=2, pad=1, activation="mish"),
        dict(padding=1, stride_x=2, stride_y=2),
    ),
    "groups3_wide": (
        24,
        9,
        67,
        dict(filters=33, size=3, stride=1, pad=1, groups=3, activation="swish"),
        dict(padding=1, groups=3),
    ),
    "depthwise_64": (
        64,
        17,
        19,
        dict(filters=64, size=3, stride=1, pad=1, groups=64, batch_normalize=1, activation="relu6"),
        dict(padding=1, groups=64, bn=1),
    ),
}


@pytest.mark.parametrize("case", sorted(LARGE_CONV_CASES))
def test_convolutional_large(engine, tmp_path, case):
    c, h, w, keys, rkeys = LARGE_CONV_CASES[case]
    net, rng = build(engine, tmp_path, w, h, c, ("convolutional", keys))
    x = random_input(rng, 2, c, h, w)
    want = conv_ref(net, net.layers[0], x, size=keys["size"], activation=keys["activation"], **rkeys)
    assert_close(net.forward_all(x)[0], want, what=f"conv {case}")


def test_param_writes_after_forward_take_effect(engine, tmp_path):
    """Parameters changed through the numpy views after a forward pass are used by the next one."""
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        ("convolutional", dict(filters=5, size=3, pad=1, batch_normalize=1, activation="leaky")),
        ("connected", dict(output=4, batch_normalize=1, activation="linear")),
        seed=21,
    )
    x = random_input(rng, 2, 3, 7, 9)
    net.forward_all(x)
    for layer in net.layers:
        for name, view in layer.params.items():
            if name in ("rolling_variance", "scales"):
                view[...] = rng.uniform(0.5, 2.0, view.shape).astype(np.float32)
            else:
                view[...] = rng.normal(0.0, 0.7, view.shape).astype(np.float32)
    o = net.forward_all(x)
    want0 = conv_ref(net, net.layers[0], x, size=3, padding=1, bn=1, activation="leaky")
    assert_close(o[0], want0, what="conv after parameter change")
    p = params64(net.layers[1])
    want1 = ref.connected(
        o[0],
        p["weights"],
        p["biases"],
        batch_normalize=True,
        scales=p["scales"],
        rolling_mean=p["rolling_mean"],
        rolling_variance=p["rolling_variance"],
        activation="linear",
    )
    assert_close(o[1], want1, what="connected after parameter change")
    # writing through net.params (the flat buffer) works as well
    net.params[...] = np.float32(0.0)
    o = net.forward_all(x)
    assert np.all(o[1] == 0.0)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_convolutional(engine, tmp_path, case, n):
    c, h, w, keys, rkeys = CONV_CASES[case]
    net, rng = build(engine, tmp_path, w, h, c, ("convolutional", keys))
    layer = net.layers[0]
    assert layer.type == "convolutional"
    x = random_input(rng, n, c, h, w)
    outs = net.forward_all(x)
    assert len(outs) == 1
    want = conv_ref(net, layer, x, size=keys["size"], activation=keys.get("activation", "logistic"), **rkeys)
    assert tuple(layer.out_shape) == want.shape[1:]
    assert_close(outs[0], want, what=f"conv {case}")


def test_conv_params_layout(engine, tmp_path):
    net, _ = build(
        engine, tmp_path, 9, 7, 6, ("convolutional", dict(filters=4, size=3, pad=1, groups=2, batch_normalize=1))
    )
    p = net.layers[0].params
    assert p["weights"].shape == (4, 3, 3, 3)
    for name in ("biases", "scales", "rolling_mean", "rolling_variance"):
        assert p[name].shape == (4,)
    net2, _ = build(engine, tmp_path, 9, 7, 6, ("convolutional", dict(filters=4, size=1)))
    assert set(net2.layers[0].params) == {"biases", "weights"}


def test_conv_chain_of_two(engine, tmp_path):
    """The second conv reads the first one's output."""
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        ("convolutional", dict(filters=8, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky")),
        ("convolutional", dict(filters=5, size=1, stride=1, activation="linear")),
    )
    x = random_input(rng, 2, 3, 7, 9)
    outs = net.forward_all(x)
    l0, l1 = net.layers
    a = conv_ref(net, l0, x, size=3, stride_x=2, stride_y=2, padding=1, bn=1, activation="leaky")
    assert_close(outs[0], a, what="conv0")
    assert_close(outs[1], conv_ref(net, l1, outs[0], size=1, activation="linear"), what="conv1")
    # fully chained reference as well
    assert_close(outs[1], conv_ref(net, l1, a, size=1, activation="linear"), what="conv1 chained")


def test_bn_epsilon(engine, tmp_path):
    net, rng = build(
        engine, tmp_path, 5, 5, 2, ("convolutional", dict(filters=3, size=1, batch_normalize=1, activation="linear"))
    )
    assert net.bn_epsilon == pytest.approx(1e-5)
    net.layers[0].params["rolling_variance"][...] = np.float32(2e-5)
    x = random_input(rng, 1, 2, 5, 5)
    p = params64(net.layers[0])

    def want(eps):
        return ref.convolutional(
            x,
            p["weights"],
            p["biases"],
            batch_normalize=True,
            scales=p["scales"],
            rolling_mean=p["rolling_mean"],
            rolling_variance=p["rolling_variance"],
            activation="linear",
            bn_eps=eps,
        )

    assert_close(net.forward_all(x)[0], want(1e-5), what="bn eps 1e-5")
    net.bn_epsilon = 1e-6
    assert_close(net.forward_all(x)[0], want(1e-6), what="bn eps 1e-6")


# ----------------------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------------------

# (channels, height, width, cfg keys, size, stride_x, stride_y, padding)
MAXPOOL_CASES = {
    "size2_stride1_13": (5, 13, 13, dict(size=2, stride=1), 2, 1, 1, 1),
    "size2_stride2_13": (5, 13, 13, dict(size=2, stride=2), 2, 2, 2, 1),
    "size2_stride2_odd": (3, 7, 9, dict(size=2, stride=2), 2, 2, 2, 1),
    "size3_stride2_odd": (3, 7, 9, dict(size=3, stride=2), 3, 2, 2, 2),
    "spp5": (6, 13, 13, dict(size=5, stride=1), 5, 1, 1, 4),
    "spp9": (6, 13, 13, dict(size=9, stride=1), 9, 1, 1, 8),
    "spp13": (6, 13, 13, dict(size=13, stride=1), 13, 1, 1, 12),
    "spp13_odd_small": (3, 7, 9, dict(size=13, stride=1), 13, 1, 1, 12),
    "stride_x2_y1": (3, 7, 9, dict(size=2, stride_x=2, stride_y=1), 2, 2, 1, 1),
    "stride_x1_y2_size3": (3, 9, 7, dict(size=3, stride_x=1, stride_y=2), 3, 1, 2, 2),
    "padding0_size3_stride2": (4, 9, 7, dict(size=3, stride=2, padding=0), 3, 2, 2, 0),
    "padding1_size2_stride2": (4, 7, 9, dict(size=2, stride=2, padding=1), 2, 2, 2, 1),
    "size_defaults_to_stride": (3, 7, 9, dict(stride=2), 2, 2, 2, 1),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(MAXPOOL_CASES))
def test_maxpool(engine, tmp_path, case, n):
    c, h, w, keys, size, sx, sy, padding = MAXPOOL_CASES[case]
    net, rng = build(engine, tmp_path, w, h, c, ("maxpool", keys))
    x = random_input(rng, n, c, h, w)
    got = net.forward_all(x)[0]
    want = ref.maxpool(x, size=size, stride_x=sx, stride_y=sy, padding=padding)
    assert tuple(net.layers[0].out_shape) == want.shape[1:]
    assert_close(got, want, what=f"maxpool {case}")


@pytest.mark.parametrize("case", ["2/2", "2/1", "3/2", "5/1", "3/1x2"])
@pytest.mark.parametrize("w", [16, 17, 33])
def test_maxpool_widths(engine, tmp_path, case, w):
    """Widths around vector lengths (8/16) for the pooling loops' tails."""
    size, rest = case.split("/")
    size = int(size)
    if "x" in rest:
        sx, sy = (int(v) for v in rest.split("x"))
        keys = dict(size=size, stride_x=sx, stride_y=sy)
    else:
        sx = sy = int(rest)
        keys = dict(size=size, stride=sx)
    net, rng = build(engine, tmp_path, w, 11, 9, ("maxpool", keys), ("local_avgpool", keys))
    x = random_input(rng, 2, 9, 11, w)
    o = net.forward_all(x)
    assert_close(o[0], ref.maxpool(x, size=size, stride_x=sx, stride_y=sy), what=f"maxpool {case} w={w}")
    assert_close(o[1], ref.local_avgpool(o[0], size=size, stride_x=sx, stride_y=sy), what=f"local_avgpool {case} w={w}")


def test_maxpool_window_entirely_outside_is_minus_flt_max(engine, tmp_path):
    """With a large explicit padding a window can miss the image: Darknet outputs -FLT_MAX there."""
    net, rng = build(engine, tmp_path, 5, 3, 2, ("maxpool", dict(size=2, stride=2, padding=4)))
    x = random_input(rng, 2, 2, 3, 5)
    got = net.forward_all(x)[0]
    want = ref.maxpool(x, size=2, stride_x=2, stride_y=2, padding=4)
    outside = want == -ref.FLT_MAX
    assert outside.any() and not outside.all()
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[outside], np.float32(-ref.FLT_MAX))
    assert_close(got[~outside], want[~outside], what="maxpool inside values")


@pytest.mark.parametrize("out_channels", [1, 2, 3])
def test_maxpool_depth(engine, tmp_path, out_channels):
    net, rng = build(engine, tmp_path, 9, 7, 7, ("maxpool", dict(maxpool_depth=1, out_channels=out_channels)))
    x = random_input(rng, 2, 7, 7, 9)
    want = ref.maxpool_depth(x, out_channels=out_channels)
    assert_close(net.forward_all(x)[0], want, what="maxpool_depth")


def test_maxpool_spp_block(engine, tmp_path):
    """The yolov4 SPP block: maxpools 5/9/13 stride 1 routed together with their input."""
    net, rng = build(
        engine,
        tmp_path,
        13,
        13,
        3,
        linear_conv(6),
        ("maxpool", dict(stride=1, size=5)),
        ("route", dict(layers=-2)),
        ("maxpool", dict(stride=1, size=9)),
        ("route", dict(layers=-4)),
        ("maxpool", dict(stride=1, size=13)),
        ("route", dict(layers=[-1, -3, -5, -6])),
    )
    x = random_input(rng, 2, 3, 13, 13)
    o = net.forward_all(x)
    assert_close(o[1], ref.maxpool(o[0], size=5, stride_x=1, stride_y=1), what="spp5")
    assert_close(o[3], ref.maxpool(o[2], size=9, stride_x=1, stride_y=1), what="spp9")
    assert_close(o[5], ref.maxpool(o[4], size=13, stride_x=1, stride_y=1), what="spp13")
    assert_close(o[6], ref.route([o[5], o[3], o[1], o[0]]), what="spp route")
    assert o[6].shape == (2, 24, 13, 13)


LOCAL_AVGPOOL_CASES = {
    "size2_stride2": (4, 7, 9, dict(size=2, stride=2), 2, 2, 2, 1),
    "size3_stride1": (3, 7, 9, dict(size=3, stride=1), 3, 1, 1, 2),
    "size2_stride1_13": (5, 13, 13, dict(size=2, stride=1), 2, 1, 1, 1),
    "size3_stride_x2_y1_padding0": (3, 9, 7, dict(size=3, stride_x=2, stride_y=1, padding=0), 3, 2, 1, 0),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(LOCAL_AVGPOOL_CASES))
def test_local_avgpool(engine, tmp_path, case, n):
    c, h, w, keys, size, sx, sy, padding = LOCAL_AVGPOOL_CASES[case]
    net, rng = build(engine, tmp_path, w, h, c, ("local_avgpool", keys))
    x = random_input(rng, n, c, h, w)
    want = ref.local_avgpool(x, size=size, stride_x=sx, stride_y=sy, padding=padding)
    assert_close(net.forward_all(x)[0], want, what=f"local_avgpool {case}")


@pytest.mark.parametrize("n", [1, 3])
def test_avgpool(engine, tmp_path, n):
    net, rng = build(engine, tmp_path, 9, 7, 5, linear_conv(11), ("avgpool", {}))
    x = random_input(rng, n, 5, 7, 9)
    o = net.forward_all(x)
    assert net.layers[1].type == "avgpool"
    assert_close(o[1], ref.avgpool(o[0]), what="avgpool")
    assert o[1].shape == (n, 11, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# Route, shortcut, sam, scale_channels
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_route(engine, tmp_path, n):
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        linear_conv(6),  # 0
        linear_conv(10),  # 1
        ("route", dict(layers=[-1, -2])),  # 2: 16 channels
        ("route", dict(layers=-2, groups=2, group_id=1)),  # 3: second half of 1
        ("route", dict(layers=[0, 1], groups=2, group_id=0)),  # 4: first halves of 0 and 1
        ("route", dict(layers=1, groups=5, group_id=3)),  # 5
        ("route", dict(layers=[3, 0, 2])),
    )  # 6
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[2], ref.route([o[1], o[0]]), what="route -1,-2")
    assert_close(o[3], ref.route([o[1]], groups=2, group_id=1), what="route groups=2 group_id=1")
    assert_close(o[4], ref.route([o[0], o[1]], groups=2, group_id=0), what="route multi groups")
    assert_close(o[5], ref.route([o[1]], groups=5, group_id=3), what="route groups=5")
    assert_close(o[6], ref.route([o[3], o[0], o[2]]), what="route three")
    assert [tuple(net.layers[i].out_shape)[0] for i in range(2, 7)] == [16, 5, 8, 2, 27]


SHORTCUT_CASES = {
    "plain": (dict(), "linear"),
    "leaky": (dict(activation="leaky"), "leaky"),
    "mish": (dict(activation="mish"), "mish"),
    "swish": (dict(activation="swish"), "swish"),
    "logistic": (dict(activation="logistic"), "logistic"),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(SHORTCUT_CASES))
def test_shortcut_one_from(engine, tmp_path, case, n):
    keys, act = SHORTCUT_CASES[case]
    net, rng = build(
        engine, tmp_path, 9, 7, 3, linear_conv(6), linear_conv(6), ("shortcut", dict({"from": -2}, **keys))
    )
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[2], ref.shortcut(o[1], [o[0]], activation=act), what=f"shortcut {case}")


@pytest.mark.parametrize("n", [1, 3])
def test_shortcut_two_from(engine, tmp_path, n):
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        linear_conv(5),
        linear_conv(5),
        linear_conv(5),
        ("shortcut", {"from": [-2, -3], "activation": "leaky"}),
        ("shortcut", {"from": [0, 1]}),
    )
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[3], ref.shortcut(o[2], [o[1], o[0]], activation="leaky"), what="shortcut from=-2,-3")
    assert_close(o[4], ref.shortcut(o[3], [o[0], o[1]]), what="shortcut from=0,1")


def test_shortcut_from_with_fewer_channels(engine, tmp_path):
    """Darknet adds only the overlapping prefix of the flat buffers (shortcut_multilayer_cpu)."""
    net, rng = build(engine, tmp_path, 9, 7, 3, linear_conv(4), linear_conv(6), ("shortcut", {"from": -2}))
    x = random_input(rng, 2, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[2], ref.shortcut(o[1], [o[0]]), what="shortcut smaller from")


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("wtype", ["per_feature", "per_layer", "per_channel"])
@pytest.mark.parametrize("wnorm", ["none", "relu", "softmax", "avg_relu"])
def test_shortcut_weighted(engine, tmp_path, wtype, wnorm, n):
    net, rng = build(
        engine,
        tmp_path,
        7,
        5,
        3,
        linear_conv(5),
        linear_conv(5),
        linear_conv(5),
        ("shortcut", {"from": [-2, -3], "weights_type": wtype, "weights_normalization": wnorm, "activation": "linear"}),
    )
    layer = net.layers[3]
    n_weights = 3 if wtype != "per_channel" else 3 * 5
    assert layer.params["weights"].shape in ((n_weights,), (3, 5), (3, 5, 1, 1))
    x = random_input(rng, n, 3, 5, 7)
    o = net.forward_all(x)
    want = ref.shortcut(
        o[2],
        [o[1], o[0]],
        weights=params64(layer)["weights"].reshape(-1),
        weights_type=wtype,
        weights_normalization=wnorm,
    )
    assert_close(o[3], want, what=f"shortcut {wtype}/{wnorm}")


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("act", ["linear", "logistic", "leaky"])
def test_sam(engine, tmp_path, act, n):
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        linear_conv(6),
        ("convolutional", dict(filters=6, size=1, activation="logistic")),
        ("sam", {"from": -2, "activation": act}),
    )
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[2], ref.sam(o[1], o[0], activation=act), what=f"sam {act}")


@pytest.mark.parametrize("n", [1, 3])
def test_scale_channels(engine, tmp_path, n):
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        linear_conv(6),  # 0 features
        ("avgpool", {}),  # 1
        ("convolutional", dict(filters=6, size=1, activation="logistic")),  # 2 scales
        ("scale_channels", {"from": -3}),  # 3
        ("convolutional", dict(filters=1, size=1, activation="logistic")),  # 4 spatial map
        ("scale_channels", {"from": -5, "scale_wh": 1, "activation": "leaky"}),
    )  # 5
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[3], ref.scale_channels(o[2], o[0]), what="scale_channels")
    assert tuple(net.layers[3].out_shape) == (6, 7, 9)
    assert_close(o[5], ref.scale_channels(o[4], o[0], scale_wh=1, activation="leaky"), what="scale_channels scale_wh=1")


# ----------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------

UPSAMPLE_CASES = {
    "stride2": (dict(stride=2), 2, 1.0),
    "stride4": (dict(stride=4), 4, 1.0),
    "default_stride": (dict(), 2, 1.0),
    "stride2_scale": (dict(stride=2, scale=0.5), 2, 0.5),
    "downsample2": (dict(stride=-2), -2, 1.0),
    "downsample3_scale": (dict(stride=-3, scale=0.25), -3, 0.25),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(UPSAMPLE_CASES))
def test_upsample(engine, tmp_path, case, n):
    keys, stride, scale = UPSAMPLE_CASES[case]
    net, rng = build(engine, tmp_path, 9, 7, 5, ("upsample", keys))
    x = random_input(rng, n, 5, 7, 9)
    want = ref.upsample(x, stride=stride, scale=scale)
    assert_close(net.forward_all(x)[0], want, what=f"upsample {case}")


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("c,h,w,stride", [(3, 6, 10, 2), (5, 9, 15, 3), (4, 8, 8, 4)])
def test_reorg3d(engine, tmp_path, c, h, w, stride, n):
    net, rng = build(engine, tmp_path, w, h, c, ("reorg3d", dict(stride=stride)))
    x = random_input(rng, n, c, h, w)
    want = ref.reorg3d(x, stride=stride)
    assert tuple(net.layers[0].out_shape) == want.shape[1:]
    assert_close(net.forward_all(x)[0], want, what="reorg3d")


def test_reorg3d_reverse(engine, tmp_path):
    """reverse=1 as AlexeyAB's forward_reorg_layer runs it (reorg_cpu with the output dims, forward=1)."""
    net, rng = build(engine, tmp_path, 5, 3, 16, ("reorg3d", dict(stride=2, reverse=1)))
    x = random_input(rng, 2, 16, 3, 5)
    want = ref.reorg3d_reverse(x, stride=2)
    assert tuple(net.layers[0].out_shape) == want.shape[1:]
    assert_close(net.forward_all(x)[0], want, what="reorg3d reverse")


# ----------------------------------------------------------------------------------------------------------
# Heads and the rest
# ----------------------------------------------------------------------------------------------------------

YOLO_CASES = {
    "classic": (dict(), "linear", 1.0, 0),
    "scale_x_y_1.05": (dict(scale_x_y=1.05), "linear", 1.05, 0),
    "scale_x_y_1.2": (dict(scale_x_y=1.2), "linear", 1.2, 0),
    "new_coords_scale2": (dict(scale_x_y=2.0, new_coords=1), "logistic", 2.0, 1),
    "new_coords_scale1": (dict(new_coords=1), "logistic", 1.0, 1),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(YOLO_CASES))
def test_yolo(engine, tmp_path, case, n):
    keys, head_act, s, new_coords = YOLO_CASES[case]
    classes, mask = 4, [3, 4, 5]
    yolo_keys = dict(mask=mask, anchors=[10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119], classes=classes, num=6)
    yolo_keys.update(keys)
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        ("convolutional", dict(filters=len(mask) * (5 + classes), size=3, pad=1, activation=head_act)),
        ("yolo", yolo_keys),
        weight_gain=3.0,
    )
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    want = ref.yolo(o[0], n_anchors=len(mask), classes=classes, scale_x_y=s, new_coords=new_coords)
    assert_close(o[1], want, what=f"yolo {case}")
    assert list(net.yolo_layers) == [1]
    heads = net.forward(x)
    assert len(heads) == 1
    assert_close(heads[0], o[1], rtol=1e-6, what="forward() vs forward_all() yolo output")


def test_yolo_80_classes(engine, tmp_path):
    anchors = [12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401]
    net, rng = build(
        engine,
        tmp_path,
        17,
        13,
        3,
        ("convolutional", dict(filters=255, size=1, activation="linear")),
        ("yolo", dict(mask=[6, 7, 8], anchors=anchors, classes=80, num=9, scale_x_y=1.05)),
        weight_gain=4.0,
    )
    x = random_input(rng, 2, 3, 13, 17)
    o = net.forward_all(x)
    assert_close(o[1], ref.yolo(o[0], n_anchors=3, classes=80, scale_x_y=1.05), what="yolo 80 classes")


def test_yolo_without_mask_uses_all_anchors(engine, tmp_path):
    net, rng = build(
        engine,
        tmp_path,
        7,
        5,
        3,
        ("convolutional", dict(filters=2 * 7, size=1, activation="linear")),
        ("yolo", dict(anchors=[10, 13, 16, 30], classes=2, num=2)),
        weight_gain=3.0,
    )
    x = random_input(rng, 1, 3, 5, 7)
    o = net.forward_all(x)
    assert_close(o[1], ref.yolo(o[0], n_anchors=2, classes=2), what="yolo without mask")


def test_yolo_two_heads(engine, tmp_path):
    anchors = [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]
    net, rng = build(
        engine,
        tmp_path,
        13,
        13,
        3,
        ("convolutional", dict(filters=8, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky")),  # 0: 7x7
        ("convolutional", dict(filters=3 * 7, size=1, activation="linear")),  # 1
        ("yolo", dict(mask=[3, 4, 5], anchors=anchors, classes=2, num=6, scale_x_y=1.05)),  # 2
        ("route", dict(layers=-3)),  # 3
        ("upsample", dict(stride=2)),  # 4: 14x14
        ("convolutional", dict(filters=3 * 7, size=1, activation="linear")),  # 5
        ("yolo", dict(mask=[0, 1, 2], anchors=anchors, classes=2, num=6)),
    )  # 6
    x = random_input(rng, 2, 3, 13, 13)
    o = net.forward_all(x)
    assert list(net.yolo_layers) == [2, 6]
    assert_close(o[2], ref.yolo(o[1], n_anchors=3, classes=2, scale_x_y=1.05), what="yolo head 1")
    assert_close(o[6], ref.yolo(o[5], n_anchors=3, classes=2), what="yolo head 2")
    heads = net.forward(x)
    assert [h.shape for h in heads] == [(2, 21, 7, 7), (2, 21, 14, 14)]
    assert_close(heads[0], o[2], rtol=1e-6, what="head 1")
    assert_close(heads[1], o[6], rtol=1e-6, what="head 2")


CONNECTED_CASES = {
    "leaky": (dict(output=10, activation="leaky"), 0, "leaky"),
    "bn_linear": (dict(output=7, batch_normalize=1, activation="linear"), 1, "linear"),
    "default_logistic": (dict(output=5), 0, "logistic"),
    "bn_mish": (dict(output=9, batch_normalize=1, activation="mish"), 1, "mish"),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(CONNECTED_CASES))
def test_connected(engine, tmp_path, case, n):
    keys, bn, act = CONNECTED_CASES[case]
    net, rng = build(engine, tmp_path, 7, 5, 3, ("connected", keys))
    layer = net.layers[0]
    p = params64(layer)
    assert p["weights"].shape == (keys["output"], 3 * 5 * 7)
    x = random_input(rng, n, 3, 5, 7)
    want = ref.connected(
        x,
        p["weights"],
        p["biases"],
        batch_normalize=bool(bn),
        scales=p.get("scales"),
        rolling_mean=p.get("rolling_mean"),
        rolling_variance=p.get("rolling_variance"),
        activation=act,
    )
    got = net.forward_all(x)[0]
    assert got.shape == (n, keys["output"], 1, 1)
    assert_close(got, want, what=f"connected {case}")


def test_connected_large(engine, tmp_path):
    net, rng = build(
        engine, tmp_path, 13, 13, 3, ("connected", dict(output=133, batch_normalize=1, activation="leaky"))
    )
    x = random_input(rng, 3, 3, 13, 13)
    p = params64(net.layers[0])
    want = ref.connected(
        x,
        p["weights"],
        p["biases"],
        batch_normalize=True,
        scales=p["scales"],
        rolling_mean=p["rolling_mean"],
        rolling_variance=p["rolling_variance"],
        activation="leaky",
    )
    assert_close(net.forward_all(x)[0], want, what="connected 507 -> 133")


def test_connected_after_conv(engine, tmp_path):
    net, rng = build(engine, tmp_path, 9, 7, 3, linear_conv(4), ("connected", dict(output=6, activation="relu")))
    x = random_input(rng, 3, 3, 7, 9)
    o = net.forward_all(x)
    p = params64(net.layers[1])
    assert_close(o[1], ref.connected(o[0], p["weights"], p["biases"], activation="relu"), what="conv->connected")


SOFTMAX_CASES = {
    "plain": (dict(), 1, 1.0),
    "groups3": (dict(groups=3), 3, 1.0),
    "temperature": (dict(temperature=0.5), 1, 0.5),
    "groups5_temperature2": (dict(groups=5, temperature=2.0), 5, 2.0),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", sorted(SOFTMAX_CASES))
def test_softmax(engine, tmp_path, case, n):
    keys, groups, temperature = SOFTMAX_CASES[case]
    net, rng = build(engine, tmp_path, 5, 3, 2, linear_conv(6), ("softmax", keys), weight_gain=4.0)
    x = random_input(rng, n, 2, 3, 5)
    o = net.forward_all(x)
    want = ref.softmax(o[0], groups=groups, temperature=temperature)  # (n, 90, 1, 1)
    got = o[1]
    assert got.shape[0] == n and got.size == want.size
    assert_close(got.reshape(n, -1), want.reshape(n, -1), what=f"softmax {case}")


def test_softmax_classifier_tail(engine, tmp_path):
    """darknet53-style tail: conv -> avgpool -> 1x1 conv -> softmax."""
    net, rng = build(
        engine,
        tmp_path,
        9,
        7,
        3,
        linear_conv(8),
        ("avgpool", {}),
        ("convolutional", dict(filters=10, size=1, activation="linear")),
        ("softmax", dict(groups=1)),
    )
    x = random_input(rng, 3, 3, 7, 9)
    o = net.forward_all(x)
    want = ref.softmax(o[2])
    assert_close(o[3].reshape(3, -1), want.reshape(3, -1), what="classifier softmax")
    # without [yolo] layers forward() returns [final output]
    final = net.forward(x)
    assert len(final) == 1
    assert_close(final[0], o[3], rtol=1e-6, what="forward() final output")


@pytest.mark.parametrize("n", [1, 3])
def test_dropout_is_identity(engine, tmp_path, n):
    net, rng = build(engine, tmp_path, 9, 7, 3, linear_conv(5), ("dropout", dict(probability=0.5)))
    x = random_input(rng, n, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[1], ref.dropout(o[0]), rtol=0.0, what="dropout")


# ----------------------------------------------------------------------------------------------------------
# Whole networks: chained references and batch consistency
# ----------------------------------------------------------------------------------------------------------

TINY_ANCHORS = [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]
TINY_SECTIONS = (
    ("convolutional", dict(filters=8, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky")),  # 0 13->7
    ("convolutional", dict(filters=12, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky")),  # 1
    ("route", dict(layers=-1, groups=2, group_id=1)),  # 2: 6
    ("convolutional", dict(filters=6, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky")),  # 3
    ("convolutional", dict(filters=6, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky")),  # 4
    ("route", dict(layers=[-1, -2])),  # 5: 12
    ("convolutional", dict(filters=12, size=1, stride=1, batch_normalize=1, activation="leaky")),  # 6
    ("route", dict(layers=[-6, -1])),  # 7: 24
    ("maxpool", dict(size=2, stride=2)),  # 8: 4x4
    ("convolutional", dict(filters=24, size=3, stride=1, pad=1, batch_normalize=1, activation="mish")),  # 9
    ("shortcut", {"from": -2, "activation": "linear"}),  # 10
    ("maxpool", dict(size=2, stride=1)),  # 11
    ("convolutional", dict(filters=3 * 8, size=1, stride=1, activation="linear")),  # 12
    ("yolo", dict(mask=[3, 4, 5], anchors=TINY_ANCHORS, classes=3, num=6, scale_x_y=1.05)),  # 13
    ("route", dict(layers=-4)),  # 14
    ("convolutional", dict(filters=8, size=1, stride=1, batch_normalize=1, activation="leaky")),  # 15
    ("upsample", dict(stride=2)),  # 16: 8x8
    ("local_avgpool", dict(size=2, stride=1)),  # 17
    ("convolutional", dict(filters=3 * 8, size=1, stride=1, activation="logistic")),  # 18
    ("yolo", dict(mask=[0, 1, 2], anchors=TINY_ANCHORS, classes=3, num=6, scale_x_y=2.0, new_coords=1)),  # 19
)


def chained_reference(net, x):
    """Run the TINY network with references only, each layer on the reference outputs of its inputs."""
    outs = []
    for i, (kind, keys) in enumerate(TINY_SECTIONS):
        layer = net.layers[i]
        prev = x if i == 0 else outs[i - 1]
        if kind == "convolutional":
            size = keys["size"]
            pad = size // 2 if keys.get("pad") else 0
            s = keys.get("stride", 1)
            y = conv_ref(
                net,
                layer,
                prev,
                size=size,
                stride_x=s,
                stride_y=s,
                padding=pad,
                bn=keys.get("batch_normalize", 0),
                activation=keys["activation"],
            )
        elif kind == "route":
            refs = keys["layers"] if isinstance(keys["layers"], list) else [keys["layers"]]
            srcs = [outs[i + r if r < 0 else r] for r in refs]
            y = ref.route(srcs, groups=keys.get("groups", 1), group_id=keys.get("group_id", 0))
        elif kind == "maxpool":
            y = ref.maxpool(prev, size=keys["size"], stride_x=keys["stride"], stride_y=keys["stride"])
        elif kind == "local_avgpool":
            y = ref.local_avgpool(prev, size=keys["size"], stride_x=keys["stride"], stride_y=keys["stride"])
        elif kind == "shortcut":
            f = keys["from"]
            y = ref.shortcut(prev, [outs[i + f]], activation=keys["activation"])
        elif kind == "upsample":
            y = ref.upsample(prev, stride=keys["stride"])
        elif kind == "yolo":
            y = ref.yolo(
                prev,
                n_anchors=len(keys["mask"]),
                classes=keys["classes"],
                scale_x_y=keys.get("scale_x_y", 1.0),
                new_coords=keys.get("new_coords", 0),
            )
        else:
            raise AssertionError(kind)
        outs.append(y)
    return outs


def test_tiny_network_chained(engine, tmp_path):
    net, rng = build(engine, tmp_path, 13, 13, 3, *TINY_SECTIONS)
    x = random_input(rng, 2, 3, 13, 13)
    got = net.forward_all(x)
    want = chained_reference(net, x)
    assert len(got) == len(want) == len(net.layers)
    for i, (g, w) in enumerate(zip(got, want)):
        assert tuple(net.layers[i].out_shape) == w.shape[1:], f"layer {i} out_shape"
        assert_close(g, w, what=f"layer {i} ({TINY_SECTIONS[i][0]})")
    heads = net.forward(x)
    assert list(net.yolo_layers) == [13, 19]
    assert_close(heads[0], want[13], what="head 13")
    assert_close(heads[1], want[19], what="head 19")


def test_batch_equals_single_images(engine, tmp_path):
    net, rng = build(engine, tmp_path, 13, 13, 3, *TINY_SECTIONS, seed=5)
    x = random_input(rng, 3, 3, 13, 13)
    batch = net.forward_all(x)
    for b in range(3):
        single = net.forward_all(x[b : b + 1])
        for i, (bo, so) in enumerate(zip(batch, single)):
            assert_close(bo[b : b + 1], so, rtol=1e-5, what=f"image {b} layer {i}: batch of 3 vs alone")


def test_forward_is_repeatable_and_does_not_modify_input(engine, tmp_path):
    net, rng = build(engine, tmp_path, 13, 13, 3, *TINY_SECTIONS, seed=6)
    x = random_input(rng, 2, 3, 13, 13)
    keep = x.copy()
    first = net.forward(x)
    second = net.forward(x)
    np.testing.assert_array_equal(x, keep)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
