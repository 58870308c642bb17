"""The CPU convolution paths against the float64 references, under every instruction set this CPU can run.

The engine picks AVX-512, AVX2+FMA or baseline kernels at run time; `_core.set_cpu_isa` caps the choice so that the
narrower kernels (and their register-tile shapes, edge handling and packing) are checked on a wide machine too.
Shapes are chosen to cross the tile edges of every kernel (rows not a multiple of 4/6/8/12/24, columns not a
multiple of 8/16/48, depths over one 512-deep block) with groups, strides, dilation, batch > 1 and every activation.
"""

import numpy as np
import pytest
from support import reference as ref
from support.assets import fetch_or_skip
from support.reference import assert_close, cfg_text, params64, random_input, randomize_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ISA_ORDER = ["generic", "avx2", "avx512"]


@pytest.fixture(scope="module")
def core():
    from pydarknet import _core

    return _core


def _available_isas():
    from pydarknet import _core

    best = _core.cpu_best_isa()
    return ISA_ORDER[: ISA_ORDER.index(best) + 1]


@pytest.fixture(params=ISA_ORDER)
def isa(request, core):
    if request.param not in _available_isas():
        pytest.skip(f"this CPU has no {request.param}")
    assert core.set_cpu_isa(request.param) == request.param
    yield request.param
    core.set_cpu_isa(ISA_ORDER[-1])


def conv_net(tmp_path, c, h, w, keys, seed=0):
    net = ref.load_cfg(tmp_path, cfg_text(w, h, c, ("convolutional", keys)))
    rng = np.random.default_rng(seed)
    randomize_params(net, rng)
    return net, rng


def conv_want(net, x, keys):
    p = params64(net.layers[0])
    size = keys["size"]
    padding = keys.get("padding", size // 2 if keys.get("pad") else 0)
    stride = keys.get("stride", 1)
    return ref.convolutional(
        x,
        p["weights"],
        p["biases"],
        stride_x=keys.get("stride_x", stride),
        stride_y=keys.get("stride_y", stride),
        padding=padding,
        dilation=keys.get("dilation", 1),
        groups=keys.get("groups", 1),
        batch_normalize=bool(keys.get("batch_normalize", 0)),
        scales=p.get("scales"),
        rolling_mean=p.get("rolling_mean"),
        rolling_variance=p.get("rolling_variance"),
        activation=keys["activation"],
        bn_eps=ref.BN_EPSILON,
    )


# (channels, height, width, batch, cfg keys)
EDGE_CASES = {
    # 1x1 (image read directly): rows 13 and columns 7*9=63 leave partial tiles for every kernel shape
    "1x1_m13_n63": (6, 7, 9, 2, dict(filters=13, size=1, stride=1, activation="leaky")),
    # 1x1 with many columns: several column blocks per thread, the last one partial
    "1x1_m50_n2491": (19, 47, 53, 1, dict(filters=50, size=1, stride=1, batch_normalize=1, activation="mish")),
    # 3x3 with a depth of 60*9 = 540 (two depth blocks) and 25 rows
    "3x3_k540_m25": (
        60,
        11,
        12,
        2,
        dict(filters=25, size=3, stride=1, pad=1, batch_normalize=1, activation="logistic"),
    ),
    # few columns (narrow tiles): 5x5 map, 70 filters
    "3x3_small_map": (33, 5, 5, 3, dict(filters=70, size=3, stride=1, pad=1, activation="swish")),
    # strided, padded, the first layer of a detector in miniature
    "3x3_s2_rgb": (3, 37, 41, 2, dict(filters=32, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky")),
    # stride 2 in x only, dilation, even kernel
    "stride_x2_dil2": (
        5,
        17,
        23,
        1,
        dict(filters=9, size=3, stride_x=2, stride_y=1, pad=1, dilation=2, activation="linear"),
    ),
    "even_kernel": (4, 9, 10, 2, dict(filters=7, size=2, stride=1, pad=1, activation="relu")),
    "5x5_s3": (7, 20, 19, 1, dict(filters=11, size=5, stride=3, pad=1, activation="tanh")),
    # groups, depthwise
    "groups3": (12, 13, 14, 2, dict(filters=21, size=3, stride=1, pad=1, groups=3, activation="leaky")),
    "depthwise": (
        16,
        15,
        9,
        1,
        dict(filters=16, size=3, stride=1, pad=1, groups=16, batch_normalize=1, activation="relu6"),
    ),
    # more rows than one thread's share, columns fewer than a wide tile
    "1x1_m300_n40": (64, 5, 8, 1, dict(filters=300, size=1, stride=1, activation="linear")),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_conv_edges(isa, tmp_path, case):
    c, h, w, n, keys = EDGE_CASES[case]
    net, rng = conv_net(tmp_path, c, h, w, keys)
    x = random_input(rng, n, c, h, w)
    assert_close(net.forward(x)[0], conv_want(net, x, keys), what=f"{case} ({isa})")


@pytest.mark.parametrize("activation", ref.ALL_ACTIVATIONS)
def test_conv_every_activation(isa, tmp_path, activation):
    keys = dict(filters=10, size=3, stride=1, pad=1, batch_normalize=1, activation=activation)
    net, rng = conv_net(tmp_path, 5, 9, 11, keys, seed=3)
    x = random_input(rng, 2, 5, 9, 11)
    assert_close(net.forward(x)[0], conv_want(net, x, keys), what=f"{activation} ({isa})")


def test_switching_isa_repacks(core, tmp_path):
    """Weights packed for one instruction set are repacked when the kernels change, with the same results."""
    keys = dict(filters=20, size=3, stride=1, pad=1, activation="leaky")
    net, rng = conv_net(tmp_path, 8, 10, 12, keys)
    x = random_input(rng, 1, 8, 10, 12)
    want = conv_want(net, x, keys)
    try:
        for name in _available_isas() + _available_isas()[::-1]:
            core.set_cpu_isa(name)
            assert_close(net.forward(x)[0], want, what=f"after switching to {name}")
    finally:
        core.set_cpu_isa(ISA_ORDER[-1])


def test_set_cpu_isa_rejects_unknown_names(core):
    with pytest.raises(ValueError, match="unknown instruction set"):
        core.set_cpu_isa("sse9")
    assert core.cpu_isa() in ISA_ORDER


# ----------------------------------------------------------------------------------------------------------
# Winograd F(4x4, 3x3)
# ----------------------------------------------------------------------------------------------------------


# The transform matrices of F(4x4, 3x3) for the interpolation points 0, 1, -1, 2, -1/2 and infinity (the engine's
# choice), built here by the Toom-Cook construction; test_winograd_reference_is_a_convolution checks them against
# the direct sum, independently of the engine.
def toom_cook_f43(points):
    from numpy.polynomial import polynomial as P

    p = np.asarray(points, dtype=np.float64)
    at = np.zeros((4, 6))
    for i in range(4):
        at[i, :5] = p**i
    at[3, 5] = 1.0
    g = np.zeros((6, 3))
    for j in range(5):
        g[j] = p[j] ** np.arange(3) / np.prod([p[j] - p[k] for k in range(5) if k != j])
    g[5, 2] = 1.0
    bt = np.zeros((6, 6))
    for j in range(5):
        bt[j, :5] = P.polyfromroots(np.delete(p, j))  # coefficients of prod_{k != j} (x - p_k), lowest first
    bt[5] = P.polyfromroots(p)
    return bt, g, at


WINO_BT, WINO_G, WINO_AT = toom_cook_f43([0, 1, -1, 2, -0.5])


def winograd_f43(x, w, padding, magnitude=False):
    """3x3 stride-1 convolution through F(4x4, 3x3) tiles in float64. With magnitude=True, the same with every
    matrix and operand replaced by its absolute value: the size of the terms whose rounding makes the errors."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    bt, g, at = WINO_BT, WINO_G, WINO_AT
    if magnitude:
        x, w, bt, g, at = np.abs(x), np.abs(w), np.abs(bt), np.abs(g), np.abs(at)
    n, c, h, wd = x.shape
    out_h, out_w = h + 2 * padding - 2, wd + 2 * padding - 2
    ty, tx = -(-out_h // 4), -(-out_w // 4)
    xp = np.zeros((n, c, 4 * ty + 2, 4 * tx + 2))
    rows, cols = min(h, 4 * ty + 2 - padding), min(wd, 4 * tx + 2 - padding)
    xp[:, :, padding : padding + rows, padding : padding + cols] = x[:, :, :rows, :cols]
    d = np.empty((n, c, ty, tx, 6, 6))
    for i in range(ty):
        for j in range(tx):
            d[:, :, i, j] = xp[:, :, 4 * i : 4 * i + 6, 4 * j : 4 * j + 6]
    v = np.einsum("ab,nctxbd,ed->nctxae", bt, d, bt)
    u = np.einsum("ab,fcbd,ed->fcae", g, w, g)
    if magnitude:
        v, u = np.abs(v), np.abs(u)
    m = np.einsum("fcae,nctxae->nftxae", u, v)
    y = np.einsum("ia,nftxab,jb->nftxij", at, m, at)
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(n, w.shape[0], 4 * ty, 4 * tx)
    return y[:, :, :out_h, :out_w]


def folded(net):
    """The layer's weights and bias with batch norm folded in, in float64 (what the engine multiplies)."""
    p = params64(net.layers[0])
    w, b = p["weights"], p["biases"]
    if "scales" in p:
        factor = p["scales"] / np.sqrt(p["rolling_variance"] + ref.BN_EPSILON)
        w = w * factor[:, None, None, None]
        b = b - p["rolling_mean"] * factor
    return w, b


@pytest.mark.parametrize("h,w,padding", [(13, 13, 1), (9, 14, 1), (10, 7, 0), (4, 5, 1)])
def test_winograd_reference_is_a_convolution(h, w, padding):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, h, w))
    k = rng.normal(size=(4, 3, 3, 3))
    np.testing.assert_allclose(
        winograd_f43(x, k, padding), ref.conv2d_raw(x, k, padding=padding), rtol=1e-12, atol=1e-12
    )


@pytest.fixture
def winograd_switch(core):
    yield core
    core.set_cpu_winograd(True)
    core.set_cpu_winograd_band(0)


# (channels, height, width, batch, cfg keys): shapes the engine runs through Winograd (3x3, stride 1, at least
# 16 channels and filters, maps of 8 or more) with sizes that are not multiples of the 4x4 tile.
WINOGRAD_CASES = {
    "pad1_odd_map": (16, 13, 13, 1, dict(filters=16, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky")),
    "pad1_batch3_rect": (24, 9, 18, 3, dict(filters=37, size=3, stride=1, pad=1, activation="mish")),
    "valid_pad0": (20, 11, 10, 2, dict(filters=19, size=3, stride=1, padding=0, activation="linear")),
    "deep_k600": (600, 8, 9, 1, dict(filters=30, size=3, stride=1, pad=1, batch_normalize=1, activation="logistic")),
    "wide_map_many_filters": (17, 26, 31, 2, dict(filters=70, size=3, stride=1, pad=1, activation="swish")),
    "channel_activation": (
        16,
        10,
        12,
        2,
        dict(filters=18, size=3, stride=1, pad=1, activation="normalize_channels_softmax"),
    ),
}


@pytest.mark.parametrize("case", sorted(WINOGRAD_CASES))
def test_winograd_conv(isa, winograd_switch, tmp_path, case):
    c, h, w, n, keys = WINOGRAD_CASES[case]
    net, rng = conv_net(tmp_path, c, h, w, keys)
    x = random_input(rng, n, c, h, w)
    want = conv_want(net, x, keys)
    winograd_switch.set_cpu_winograd(True)
    got = net.forward(x)[0]
    assert_close(got, want, what=f"winograd {case} ({isa})")
    winograd_switch.set_cpu_winograd(False)
    plain = net.forward(x)[0]
    assert_close(plain, want, what=f"plain GEMM {case} ({isa})")
    # the two paths round differently: Winograd does not give bit-identical results
    assert np.abs(got - plain).max() > 0


def test_winograd_many_bands(winograd_switch, tmp_path):
    """Tiles split into many bands (a small band budget), batch crossing band boundaries."""
    keys = dict(filters=20, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky")
    net, rng = conv_net(tmp_path, 18, 21, 19, keys)
    x = random_input(rng, 3, 18, 21, 19)
    want = conv_want(net, x, keys)
    for budget in (36 * 38 * 16, 36 * 38 * 48, 36 * 38 * 100):
        winograd_switch.set_cpu_winograd_band(budget)
        assert_close(net.forward(x)[0], want, what=f"band budget {budget}")


def test_winograd_error_is_bounded_by_its_terms(winograd_switch, tmp_path):
    """The Winograd path's deviation from the exact convolution stays within float32 rounding of the terms the
    transforms add up: |error| <= 64 * 2^-24 * (|A^T| (sum_c |U| |V|) |A|), about 100x above the typical error and
    far below what a wrong transform gives."""
    keys = dict(filters=32, size=3, stride=1, pad=1, activation="linear")
    net, rng = conv_net(tmp_path, 48, 17, 22, keys)
    x = rng.normal(size=(2, 48, 17, 22)).astype(np.float32)
    wf, bias = folded(net)
    exact = ref.conv2d_raw(x, wf, padding=1) + bias[None, :, None, None]
    terms = winograd_f43(x, wf, 1, magnitude=True)
    winograd_switch.set_cpu_winograd(True)
    err = np.abs(net.forward(x)[0] - exact)
    assert np.all(err <= 64 * 2.0**-24 * terms + 1e-7), float(np.max(err / (terms + 1e-30)))


# ----------------------------------------------------------------------------------------------------------
# bf16 precision
# ----------------------------------------------------------------------------------------------------------


def bf16_net(tmp_path, c, h, w, keys, seed=0):
    import pydarknet

    text = cfg_text(w, h, c, ("convolutional", keys))
    path = tmp_path / "bf16.cfg"
    path.write_text(text)
    net = pydarknet.load(str(path), precision="bf16")
    rng = np.random.default_rng(seed)
    randomize_params(net, rng)
    return net, rng


# bf16 keeps 8 significant bits, so rounding to nearest is off by at most 2^-8 relative; two rounded operands make
# each product off by at most 2^-7 + 2^-16. Float32 sums and transforms add far less (a 1e-5 relative allowance).
BF16_PRODUCT = 2.0**-7 + 2.0**-16 + 1e-5

# (channels, height, width, batch, cfg keys, padding): odd depths (unpaired last bf16), 1x1, strided, Winograd
BF16_CASES = {
    "1x1_odd_depth": (7, 9, 11, 2, dict(filters=13, size=1, stride=1, activation="linear"), 0),
    "3x3_s2_rgb": (3, 21, 19, 1, dict(filters=32, size=3, stride=2, pad=1, batch_normalize=1, activation="linear"), 1),
    "3x3_k540": (60, 11, 12, 2, dict(filters=25, size=3, stride=1, pad=1, activation="leaky"), 1),
    "3x3_small_filters": (5, 12, 12, 1, dict(filters=9, size=3, stride=1, pad=1, activation="linear"), 1),
    "winograd_odd_channels": (17, 12, 13, 2, dict(filters=18, size=3, stride=1, pad=1, activation="linear"), 1),
}


@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_bf16_conv_within_rounding_bound(isa, winograd_switch, tmp_path, case):
    """bf16 results differ from the exact convolution by no more than bf16 rounding of each product allows:
    |error| <= BF16_PRODUCT * sum |w| |x| (through Winograd: the same over its transformed terms). The leaky
    activation is 1-Lipschitz, so the bound holds after it too."""
    c, h, w, n, keys, padding = BF16_CASES[case]
    net, rng = bf16_net(tmp_path, c, h, w, keys)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    wf, bias = folded(net)
    stride = keys.get("stride", 1)
    exact = ref.conv2d_raw(x, wf, stride_x=stride, stride_y=stride, padding=padding) + bias[None, :, None, None]
    exact = ref.activate(exact, keys["activation"])
    direct_terms = ref.conv2d_raw(np.abs(x), np.abs(wf), stride_x=stride, stride_y=stride, padding=padding)
    paths = [(False, direct_terms)]
    if keys["size"] == 3 and stride == 1 and c >= 16 and keys["filters"] >= 16:
        paths.append((True, winograd_f43(x, wf, padding, magnitude=True)))
    for winograd, terms in paths:
        winograd_switch.set_cpu_winograd(winograd)
        got = net.forward(x)[0]
        err = np.abs(got - exact)
        bound = BF16_PRODUCT * terms + 1e-6
        assert np.all(err <= bound), (
            f"{case} winograd={winograd} ({isa}): worst error/bound {float(np.max(err / bound)):.3g}"
        )
        # and bf16 is really in use: float32 stays within ~1e-5 of the largest output, bf16 goes beyond 1e-3
        assert float(np.max(err)) > 1e-3 * float(np.max(np.abs(exact)))


def test_bf16_precision_is_checked(tmp_path):
    import pydarknet

    path = tmp_path / "p.cfg"
    path.write_text(cfg_text(8, 8, 3, ("convolutional", dict(filters=4, size=3, pad=1))))
    with pytest.raises(pydarknet.DeviceError, match="unknown precision"):
        pydarknet.load(str(path), precision="fp8")
    with pytest.raises(pydarknet.DeviceError, match="needs device='cuda'; the CPU runs fp32 or bf16"):
        pydarknet.load(str(path), precision="fp16")
    assert pydarknet.load(str(path), precision="BF16").precision == "bf16"
    assert pydarknet.load(str(path)).precision == "fp32"


# ----------------------------------------------------------------------------------------------------------
# Denormals
# ----------------------------------------------------------------------------------------------------------


def test_forward_leaves_the_callers_denormal_mode_alone(tmp_path):
    """The engine flushes denormals in its threads during a forward pass and restores the caller's mode."""
    keys = dict(filters=32, size=3, stride=1, pad=1, activation="leaky")
    net, rng = conv_net(tmp_path, 16, 20, 20, keys)
    net.forward(random_input(rng, 1, 16, 20, 20))
    tiny = np.array([1e-38], np.float32) * np.float32(0.25)
    assert tiny[0] != 0.0 and tiny[0] < np.finfo(np.float32).tiny


# ----------------------------------------------------------------------------------------------------------
# Whole networks: the fast paths against the plain float32 path, batching and threads
# ----------------------------------------------------------------------------------------------------------

PHOTOS = ["bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]


@pytest.fixture(scope="module")
def photos_416():
    from PIL import Image

    blobs = []
    for name in PHOTOS:
        with Image.open(fetch_or_skip(name)) as im:
            rgb = im.convert("RGB").resize((416, 416), Image.BILINEAR)
        blobs.append((np.asarray(rgb, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(blobs))


@pytest.fixture(scope="module")
def tiny_weights():
    return fetch_or_skip("yolov4-tiny.weights")


def _tiny(weights, precision="fp32"):
    from pathlib import Path

    import pydarknet

    cfg = Path(__file__).resolve().parents[1] / "cfg" / "yolov4-tiny.cfg"
    return pydarknet.load(str(cfg), str(weights), precision=precision)


def test_winograd_network_matches_plain_path(core, winograd_switch, tiny_weights, photos_416):
    """The real yolov4-tiny on six real photos: every yolo output of the default path (Winograd) within 1e-4 of the
    plain float32 GEMM path, under each instruction set (measured: 3.3e-6)."""
    net = _tiny(tiny_weights)
    core.set_cpu_winograd(False)
    plain = net.forward(photos_416)
    core.set_cpu_winograd(True)
    try:
        for name in _available_isas():
            core.set_cpu_isa(name)
            for a, b in zip(plain, net.forward(photos_416)):
                d = float(np.abs(a.astype(np.float64) - b).max())
                assert d <= 1e-4, f"{name}: max abs diff {d:.3g}"
                assert d > 0  # Winograd did run
    finally:
        core.set_cpu_isa(ISA_ORDER[-1])


def test_bf16_detections_match_fp32(tiny_weights):
    """bf16 finds the same objects on real photos: every fp32 detection with confidence >= 0.35 has a bf16 one of
    the same class with IoU >= 0.9 and confidence within 0.05, and the other way round (0.35: a margin of 0.1
    above the 0.25 threshold, where bf16 rounding can move a borderline box in or out)."""
    import pydarknet

    n32 = pydarknet.models.load("yolov4-tiny", weights=tiny_weights)
    n16 = pydarknet.models.load("yolov4-tiny", weights=tiny_weights, precision="bf16")

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    def covered(ref, other):
        for i in np.flatnonzero(ref.conf >= 0.35):
            same = [j for j in range(len(other.conf)) if other.class_id[j] == ref.class_id[i]]
            best = max(same, key=lambda j: iou(ref.xyxy[i], other.xyxy[j]), default=None)
            assert best is not None, f"class {ref.class_id[i]} missing"
            assert iou(ref.xyxy[i], other.xyxy[best]) >= 0.9
            assert abs(float(ref.conf[i]) - float(other.conf[best])) <= 0.05

    total = 0
    for name in PHOTOS:
        path = str(fetch_or_skip(name))
        r32, r16 = n32.detect(path), n16.detect(path)
        covered(r32, r16)
        covered(r16, r32)
        total += len(r32.conf)
    assert total >= 10  # the photos do contain objects


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_and_threads_do_not_change_results(core, tiny_weights, photos_416, precision):
    """Each output value is computed with the same operations in the same order whatever the batch size and the
    thread count (threads split outputs, never a sum), so the results are bit-identical."""
    net = _tiny(tiny_weights, precision)
    threads = core.cpu_threads()
    try:
        core.set_cpu_threads(1)
        alone = [net.forward(photos_416[i : i + 1]) for i in range(len(photos_416))]
        core.set_cpu_threads(max(2, threads))
        together = net.forward(photos_416)
    finally:
        core.set_cpu_threads(threads)
    for i, outs in enumerate(alone):
        for a, b in zip(outs, together):
            np.testing.assert_array_equal(a[0], b[i])


def test_route_copies_in_parallel(tmp_path):
    """Large concatenations (copied in chunks by all threads) equal numpy's."""
    keys = dict(filters=40, size=1, stride=1, activation="linear")
    net = ref.load_cfg(
        tmp_path,
        cfg_text(
            70,
            65,
            8,
            ("convolutional", keys),
            ("convolutional", keys),
            ("route", {"layers": "-1,-2"}),
            ("route", {"layers": "-1", "groups": 2, "group_id": 1}),
        ),
    )
    rng = np.random.default_rng(4)
    randomize_params(net, rng)
    outs = net.forward_all(random_input(rng, 3, 8, 65, 70))
    both = np.concatenate([outs[1], outs[0]], axis=1)
    np.testing.assert_array_equal(outs[2], both)
    np.testing.assert_array_equal(outs[3], both[:, 40:])


def test_peak_measurement(core):
    fp32 = core.cpu_peak_gflops(1, False, 0.05)
    assert fp32 > 0.5  # even a scalar loop on a slow core does this
    bf16 = core.cpu_peak_gflops(1, True, 0.05)
    assert (bf16 > 0) == core.cpu_has_avx512_bf16()
