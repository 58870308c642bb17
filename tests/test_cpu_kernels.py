"""The CPU convolution paths against the float64 references, under every instruction set this CPU can run.

The engine picks AVX-512, AVX2+FMA or baseline kernels at run time; `_core.set_cpu_isa` caps the choice so that the
narrower kernels (and their register-tile shapes, edge handling and packing) are checked on a wide machine too.
Shapes are chosen to cross the tile edges of every kernel (rows not a multiple of 4/6/8/12/24, columns not a
multiple of 8/16/48, depths over one 512-deep block) with groups, strides, dilation, batch > 1 and every activation.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402
from reference import assert_close, cfg_text, params64, random_input, randomize_params  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ISA_ORDER = ["generic", "avx2", "avx512"]


@pytest.fixture(scope="module")
def core():
    from pydarknet import _core
    return _core


def _available_isas():
    from pydarknet import _core
    best = _core.cpu_best_isa()
    return ISA_ORDER[:ISA_ORDER.index(best) + 1]


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
        x, p["weights"], p["biases"], stride_x=keys.get("stride_x", stride), stride_y=keys.get("stride_y", stride),
        padding=padding, dilation=keys.get("dilation", 1), groups=keys.get("groups", 1),
        batch_normalize=bool(keys.get("batch_normalize", 0)), scales=p.get("scales"),
        rolling_mean=p.get("rolling_mean"), rolling_variance=p.get("rolling_variance"),
        activation=keys["activation"], bn_eps=ref.BN_EPSILON)


# (channels, height, width, batch, cfg keys)
EDGE_CASES = {
    # 1x1 (image read directly): rows 13 and columns 7*9=63 leave partial tiles for every kernel shape
    "1x1_m13_n63": (6, 7, 9, 2, dict(filters=13, size=1, stride=1, activation="leaky")),
    # 1x1 with many columns: several column blocks per thread, the last one partial
    "1x1_m50_n2491": (19, 47, 53, 1, dict(filters=50, size=1, stride=1, batch_normalize=1, activation="mish")),
    # 3x3 with a depth of 60*9 = 540 (two depth blocks) and 25 rows
    "3x3_k540_m25": (60, 11, 12, 2, dict(filters=25, size=3, stride=1, pad=1, batch_normalize=1,
                                         activation="logistic")),
    # few columns (narrow tiles): 5x5 map, 70 filters
    "3x3_small_map": (33, 5, 5, 3, dict(filters=70, size=3, stride=1, pad=1, activation="swish")),
    # strided, padded, the first layer of a detector in miniature
    "3x3_s2_rgb": (3, 37, 41, 2, dict(filters=32, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky")),
    # stride 2 in x only, dilation, even kernel
    "stride_x2_dil2": (5, 17, 23, 1, dict(filters=9, size=3, stride_x=2, stride_y=1, pad=1, dilation=2,
                                          activation="linear")),
    "even_kernel": (4, 9, 10, 2, dict(filters=7, size=2, stride=1, pad=1, activation="relu")),
    "5x5_s3": (7, 20, 19, 1, dict(filters=11, size=5, stride=3, pad=1, activation="tanh")),
    # groups, depthwise
    "groups3": (12, 13, 14, 2, dict(filters=21, size=3, stride=1, pad=1, groups=3, activation="leaky")),
    "depthwise": (16, 15, 9, 1, dict(filters=16, size=3, stride=1, pad=1, groups=16, batch_normalize=1,
                                     activation="relu6")),
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
