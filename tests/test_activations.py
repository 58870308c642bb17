"""Every Darknet activation: the references against closed forms, then the engine against the references."""

import math

import numpy as np
import pytest
from support import reference as ref
from support.reference import assert_close, cfg_text, params64, random_input, randomize_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ----------------------------------------------------------------------------------------------------------
# References against closed forms and hand-computed values (no engine needed)
# ----------------------------------------------------------------------------------------------------------

GRID = np.linspace(-30.0, 30.0, 6001)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


CLOSED_FORMS = {
    "linear": lambda x: x,
    "leaky": lambda x: np.maximum(x, 0) + 0.1 * np.minimum(x, 0),
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "relie": lambda x: np.maximum(x, 0) + 0.01 * np.minimum(x, 0),
    "ramp": lambda x: np.maximum(x, 0) + 0.1 * x,
    "logistic": sig,
    "loggy": lambda x: np.tanh(x / 2),
    "tanh": lambda x: (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x)),
    "elu": lambda x: np.where(x >= 0, x, np.exp(x) - 1),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (np.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.797885 * x + 0.035677 * x * x * x)),
    "hardtan": lambda x: np.minimum(np.maximum(x, -1), 1),
    "swish": lambda x: x * sig(x),
    "revleaky": lambda x: np.maximum(x, 0) + 0.1 * np.minimum(x, 0),
    "hard_mish": lambda x: np.where(x > 0, x, np.where(x > -2, 0.5 * x * x + x, 0.0)),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_reference_matches_closed_form(name):
    np.testing.assert_allclose(ref.activate(GRID, name), CLOSED_FORMS[name](GRID), rtol=1e-12, atol=1e-12)


def test_reference_mish_and_softplus_threshold():
    mid = GRID[np.abs(GRID) <= 20]
    np.testing.assert_allclose(ref.act_mish(mid), mid * np.tanh(np.log1p(np.exp(mid))), rtol=1e-12, atol=1e-15)
    hi = GRID[GRID > 20]
    np.testing.assert_array_equal(ref.softplus(hi), hi)
    lo = GRID[GRID < -20]
    np.testing.assert_array_equal(ref.softplus(lo), np.exp(lo))
    np.testing.assert_allclose(ref.act_mish(lo), lo * np.tanh(np.exp(lo)), rtol=1e-12)
    # The thresholds are invisible at float32 precision: mish is smooth across them.
    for t in (20.0, -20.0):
        a, b = ref.act_mish(np.array([t - 1e-9, t + 1e-9]))
        assert abs(a - b) < 1e-6


def test_reference_gelu_is_the_tanh_approximation():
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in GRID])
    assert np.max(np.abs(ref.act_gelu(GRID) - exact)) < 2e-3
    assert ref.act_gelu(np.array([0.0]))[0] == 0.0


def test_reference_selu_constants():
    assert ref.act_selu(np.array([1.0]))[0] == pytest.approx(1.0507)
    assert ref.act_selu(np.array([-1.0]))[0] == pytest.approx(1.0507 * 1.6732 * (math.exp(-1) - 1))


@pytest.mark.parametrize(
    "x,want",
    [
        (0.0, 0.0),
        (0.5, 0.0),
        (1.0, 0.0),
        (1.5, 0.5),
        (2.0, 1.0),
        (2.5, 1.0),
        (3.0, 1.0),
        (3.25, 1.25),
        (4.0, 2.0),
        (-0.5, -0.5),
        (-1.0, -1.0),
        (-1.5, -1.0),
        (-2.0, -1.0),
        (-2.5, -1.5),
        (-3.5, -2.0),
    ],
)
def test_reference_stair_values(x, want):
    # n = floor(x); even n -> floor(x/2); odd n -> (x - n) + floor(x/2)
    assert ref.act_stair(np.array([x]))[0] == pytest.approx(want)


@pytest.mark.parametrize("x,want", [(-5.0, -0.01), (-4.0, 0.0), (0.0, 0.5), (4.0, 1.0), (6.0, 1.02)])
def test_reference_plse_values(x, want):
    assert ref.act_plse(np.array([x]))[0] == pytest.approx(want)


@pytest.mark.parametrize("x,want", [(-2.0, -0.002), (0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (3.0, 1.002)])
def test_reference_lhtan_values(x, want):
    assert ref.act_lhtan(np.array([x]))[0] == pytest.approx(want)


@pytest.mark.parametrize("name", ["stair", "plse", "lhtan", "hardtan", "relu6", "hard_mish", "elu", "selu"])
def test_reference_piecewise_functions_are_continuous(name):
    # Darknet's piecewise activations have no jumps (selu has none at 0 either: both sides are 0)
    for b in (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0):
        a, c = ref.activate(np.array([b - 1e-9, b + 1e-9]), name)
        assert abs(a - c) < 1e-7, (name, b)


def test_reference_normalize_channels():
    x = np.array([[[[1.0]], [[-2.0]], [[3.0]]]])  # (1, 3, 1, 1)
    out = ref.normalize_channels(x)
    np.testing.assert_allclose(out[0, :, 0, 0], [1 / 4.0001, 0.0, 3 / 4.0001])
    e = np.exp([1.0, -2.0, 3.0])
    np.testing.assert_allclose(ref.normalize_channels_softmax(x)[0, :, 0, 0], e / (1e-4 + e.sum()))
    em = np.exp(np.array([1.0, -2.0, 3.0]) - 3.0)
    np.testing.assert_allclose(ref.normalize_channels_softmax(x, use_max_val=True)[0, :, 0, 0], em / (1e-4 + em.sum()))


def test_reference_channel_activations_work_per_pixel_and_image():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3, 5))
    for name in ref.CHANNEL_ACTIVATIONS:
        whole = ref.activate(x, name)
        for b in range(2):
            for i in range(3):
                for j in range(5):
                    one = ref.activate(x[b : b + 1, :, i : i + 1, j : j + 1], name)
                    np.testing.assert_allclose(whole[b, :, i, j], one[0, :, 0, 0], rtol=1e-12)


def test_every_activation_has_a_reference():
    assert len(ref.ALL_ACTIVATIONS) == 23
    for name in ref.ALL_ACTIVATIONS:
        assert ref.activate(np.zeros((1, 2, 1, 1)), name).shape == (1, 2, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------


def build(tmp_path, text, seed, weight_gain=1.0):
    net = ref.load_cfg(tmp_path, text)
    rng = np.random.default_rng(seed)
    randomize_params(net, rng, weight_gain=weight_gain)
    return net, rng


def conv_want(layer, x, *, size, padding, bn, activation):
    p = params64(layer)
    return ref.convolutional(
        x,
        p["weights"],
        p["biases"],
        padding=padding,
        batch_normalize=bool(bn),
        scales=p.get("scales"),
        rolling_mean=p.get("rolling_mean"),
        rolling_variance=p.get("rolling_variance"),
        activation=activation,
    )


@pytest.mark.parametrize("bn,n", [(0, 1), (1, 3)])
@pytest.mark.parametrize("name", ref.ALL_ACTIVATIONS)
def test_activation_on_conv(engine, tmp_path, name, bn, n):
    """3x3 conv with each activation; pre-activations roughly in [-4, 4]."""
    c, h, w = 4, 7, 9
    text = cfg_text(
        w, h, c, ("convolutional", dict(filters=6, size=3, stride=1, pad=1, batch_normalize=bn, activation=name))
    )
    net, rng = build(tmp_path, text, seed=ref.ALL_ACTIVATIONS.index(name) * 2 + bn, weight_gain=2.0)
    assert net.layers[0].options["activation"] == name
    x = random_input(rng, n, c, h, w)
    got = net.forward_all(x)[0]
    want = conv_want(net.layers[0], x, size=3, padding=1, bn=bn, activation=name)
    assert_close(got, want, what=f"conv activation={name} bn={bn}")


@pytest.mark.parametrize("name", ref.ALL_ACTIVATIONS)
def test_activation_wide_range_on_conv(engine, tmp_path, name):
    """Larger weights: pre-activations reach about +-30, past mish's softplus thresholds (+-20) and every
    breakpoint of the piecewise functions."""
    c, h, w = 3, 9, 7
    text = cfg_text(w, h, c, ("convolutional", dict(filters=5, size=3, stride=1, pad=1, activation=name)))
    net, rng = build(tmp_path, text, seed=17, weight_gain=1.0)
    layer = net.layers[0]
    scale = np.float32(12.0)
    layer.params["weights"][...] = (layer.params["weights"] * scale).astype(np.float32)
    layer.params["biases"][...] = np.linspace(-15, 15, 5, dtype=np.float32)
    x = random_input(rng, 2, c, h, w)
    pre = conv_want(layer, x, size=3, padding=1, bn=0, activation="linear")
    assert pre.max() > 20 and pre.min() < -20, "the test input should cover the softplus thresholds"
    got = net.forward_all(x)[0]
    assert_close(got, ref.activate(pre, name), what=f"wide conv activation={name}")


@pytest.mark.parametrize("lo,hi", [(-30.0, 30.0), (-5.0, 5.0)])
@pytest.mark.parametrize("name", ref.ALL_ACTIVATIONS)
def test_activation_dense_sweep(engine, tmp_path, name, lo, hi):
    """A 1x1, one-filter conv maps the input in [0, 1] linearly onto [lo, hi]: the output is the activation
    sampled densely over that range."""
    h, w = 31, 33
    text = cfg_text(w, h, 1, ("convolutional", dict(filters=1, size=1, stride=1, activation=name)))
    net = ref.load_cfg(tmp_path, text)
    layer = net.layers[0]
    layer.params["weights"][...] = np.float32(hi - lo)
    layer.params["biases"][...] = np.float32(lo)
    x = np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(1, 1, h, w)
    # what the engine computes before the activation, in float32: w*x + b
    pre32 = (np.float32(hi - lo) * x + np.float32(lo)).astype(np.float32)
    got = net.forward_all(x)[0]
    assert_close(got, ref.activate(pre32.astype(np.float64), name), what=f"sweep {name} [{lo}, {hi}]")


@pytest.mark.parametrize("name", sorted(ref.ELEMENTWISE_ACTIVATIONS))
def test_activation_on_shortcut(engine, tmp_path, name):
    text = cfg_text(
        9,
        7,
        3,
        ("convolutional", dict(filters=4, size=3, pad=1, activation="linear")),
        ("convolutional", dict(filters=4, size=3, pad=1, activation="linear")),
        ("shortcut", {"from": -2, "activation": name}),
    )
    net, rng = build(tmp_path, text, seed=3, weight_gain=3.0)
    x = random_input(rng, 2, 3, 7, 9)
    o = net.forward_all(x)
    assert_close(o[2], ref.shortcut(o[1], [o[0]], activation=name), what=f"shortcut activation={name}")


@pytest.mark.parametrize("name", sorted(ref.ELEMENTWISE_ACTIVATIONS))
def test_activation_on_connected(engine, tmp_path, name):
    text = cfg_text(5, 3, 2, ("connected", dict(output=12, activation=name)))
    net, rng = build(tmp_path, text, seed=4, weight_gain=4.0)
    x = random_input(rng, 2, 2, 3, 5)
    p = params64(net.layers[0])
    want = ref.connected(x, p["weights"], p["biases"], activation=name)
    assert_close(net.forward_all(x)[0], want, what=f"connected activation={name}")
