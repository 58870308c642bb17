"""Darknet's weight update on a tiny network against a scalar float32 loop written from Darknet's formulas
(update_*_layer_gpu, adam_update_gpu, update_network_gpu switches, ema_update/ema_apply)."""

import math

import numpy as np
import pytest

import pydarknet
from pydarknet.core.cfg import parse_cfg_text
from pydarknet.core.graph import build_network
from pydarknet.train.optim import Optimizer, WeightEMA, first_nonfinite, gradient_norm
from pydarknet.train.schedule import learning_rate

F = np.float32

# 0 conv+BN, 1 conv (own learning rate, clip), 2 shortcut with learned weights, 3 batchnorm, 4 connected+BN,
# 5 connected.
CFG = """\
[net]
batch=8
subdivisions=2
width=4
height=4
channels=2
learning_rate=0.01
momentum=0.9
decay=0.0005
max_batches=100
policy=constant
{net_extra}

[convolutional]
batch_normalize=1
filters=3
size=3
pad=1
activation=leaky
{l0}

[convolutional]
filters=3
size=1
activation=linear
learning_rate=0.5
clip=0.3
{l1}

[shortcut]
from=-2
weights_type=per_feature
activation=linear

[batchnorm]

[connected]
output=4
batch_normalize=1
activation=linear
{l4}

[connected]
output=2
activation=linear
{l5}
"""


def make_desc(net_extra="", max_batches=100, decay=0.0005, **layer_extra):
    keys = dict.fromkeys(("l0", "l1", "l4", "l5"), "")
    keys.update(layer_extra)
    text = CFG.replace("max_batches=100", f"max_batches={max_batches}").replace("decay=0.0005", f"decay={decay}")
    return build_network(parse_cfg_text(text.format(net_extra=net_extra, **keys)))


def init_params(desc, seed=0):
    rng = np.random.default_rng(seed)
    p = (rng.standard_normal(desc.param_count) * 0.2).astype(np.float32)
    for layer in desc.layers:
        if layer.tensors and layer.type != "shortcut":
            for t in [t for t in layer.tensors if t.name == "rolling_variance"]:
                p[t.offset : t.offset + t.size] = np.abs(p[t.offset : t.offset + t.size]) + 0.5
    return p


def grad_for(desc, iteration, scale=0.5):
    rng = np.random.default_rng(1000 + iteration)
    return (rng.standard_normal(desc.param_count) * scale).astype(np.float32)


def view(desc, buf, layer, name):
    t = desc.layers[layer].tensor(name)
    return buf[t.offset : t.offset + t.size]


# ----- the scalar reference ---------------------------------------------------------------------------------------
class Reference:
    """Darknet's update written element by element with C-float arithmetic."""

    def __init__(self, desc):
        self.desc = desc
        n = desc.param_count
        self.U = np.zeros(n, F)  # *_updates (SGD momentum / pending Adam gradients)
        self.M = np.zeros(n, F)
        self.V = np.zeros(n, F)
        net = desc.net
        self.adam = bool(net["adam"])
        self.momentum, self.decay = F(net["momentum"]), F(net["decay"])
        self.B1, self.B2, self.eps = F(net["B1"]), F(net["B2"]), F(net["eps"])
        self.B = (net["batch"] // net["subdivisions"]) * net["subdivisions"]
        self.burn_in = net["burn_in"]
        layers = desc.layers
        last_stop = max([l.index for l in layers if l.options["stopbackward"] == 1], default=-1)
        last_bn = max([l.index for l in layers if l.options["train_only_bn"]], default=-1)
        self.never = {l.index for l in layers if l.index < last_stop or l.index <= last_bn}

    def step(self, W, g, it, rate):
        B = F(self.B)
        decay_coef = F(F(-self.decay) * B)
        for layer in self.desc.layers:
            if not layer.tensors or layer.index in self.never:
                continue
            o = layer.options
            skip = (o["burnin_update"] and o["burnin_update"] * self.burn_in > it) or o["dont_update"] >= it
            lr = F(F(rate) * F(o["learning_rate"]))
            adam = self.adam and layer.type == "convolutional"
            for t in layer.tensors:
                if t.name in ("rolling_mean", "rolling_variance"):
                    continue
                for i in range(t.offset, t.offset + t.size):
                    if skip:
                        self.U[i] = F(self.U[i] - g[i])
                        continue
                    if adam:
                        d = F(self.U[i] - g[i])
                        self.U[i] = F(0)
                        m = F(self.M[i] * self.B1)
                        v = F(self.V[i] * self.B2)
                        d = F(d + F(decay_coef * W[i]))
                        m = F(m + F(F(F(1) - self.B1) * d))
                        v = F(v + F(F(F(1) - self.B2) * F(d * d)))
                        self.M[i], self.V[i] = m, v
                        m_hat = F(m / F(F(1) - F(math.pow(self.B1, it))))
                        v_hat = F(v / F(F(1) - F(math.pow(self.B2, it))))
                        W[i] = F(W[i] + F(F(lr * m_hat) / F(F(math.sqrt(v_hat)) + self.eps)))
                        continue
                    u = F(self.U[i] - g[i])
                    if layer.type == "shortcut":
                        u = min(max(u, F(-1)), F(1))
                    elif t.name == "weights":
                        u = F(u + F(decay_coef * W[i]))
                    W[i] = F(W[i] + F(F(lr / B) * u))
                    self.U[i] = F(u * self.momentum)
            if layer.type == "convolutional" and o["clip"] and not skip:
                c = F(o["clip"])
                w = view(self.desc, W, layer.index, "weights")
                w[:] = np.minimum(c, np.maximum(-c, w))


def run_both(desc, iterations, rate=0.01, grad_scale=0.5):
    opt, ref = Optimizer(desc), Reference(desc)
    p_opt, p_ref = init_params(desc), init_params(desc)
    for it in iterations:
        g = grad_for(desc, it, grad_scale)
        res = opt.step(p_opt, g, it)
        assert not res.skipped and res.rate == float(F(rate))
        ref.step(p_ref, g, it, rate)
    return opt, ref, p_opt, p_ref


# ----- SGD --------------------------------------------------------------------------------------------------------
def test_sgd_matches_the_scalar_reference_bit_for_bit():
    desc = make_desc()
    opt, ref, p_opt, p_ref = run_both(desc, [1, 2, 3])
    np.testing.assert_array_equal(p_opt, p_ref)
    np.testing.assert_array_equal(opt.velocity, ref.U)
    assert not np.array_equal(p_opt, init_params(desc))


def test_decay_only_on_weights_and_rolling_stats_untouched():
    desc = make_desc()
    opt = Optimizer(desc)
    p0 = init_params(desc)
    p = p0.copy()
    g = np.zeros_like(p)
    for layer in desc.layers:  # gradients on the running statistics must be ignored too
        for t in layer.tensors:
            if t.name.startswith("rolling"):
                g[t.offset : t.offset + t.size] = 3.0
    opt.step(p, g, 1)
    for layer in desc.layers:
        for t in layer.tensors:
            before, after = view(desc, p0, layer.index, t.name), view(desc, p, layer.index, t.name)
            if t.name == "weights" and layer.type in ("convolutional", "connected"):
                # W + lr/B * (-decay*B*W) = W * (1 - lr*decay), hand-computed (layer 1: lr x0.5, clip 0.3)
                lr = 0.01 * layer.options["learning_rate"]
                want = before * (1 - lr * 0.0005)
                if layer.options["clip"]:
                    want = np.clip(want, -0.3, 0.3)
                np.testing.assert_allclose(after, want, rtol=2e-7)
                assert not np.array_equal(after, before)
            else:  # biases, scales, shortcut weights, rolling statistics: no decay, no gradient
                np.testing.assert_array_equal(after, before, err_msg=f"layer {layer.index} {t.name}")
    for layer in desc.layers:
        for t in layer.tensors:
            if t.name.startswith("rolling"):
                assert not view(desc, opt.velocity, layer.index, t.name).any()


def test_momentum_carries_over():
    desc = make_desc()
    opt = Optimizer(desc)
    p = init_params(desc)
    b = view(desc, p, 5, "biases")
    start = b.copy()
    g = np.zeros_like(p)
    view(desc, g, 5, "biases")[:] = -1.0  # dL/db = -1: Darknet's update +1 per image-sum
    opt.step(p, g, 1)
    after1 = b.copy()
    opt.step(p, np.zeros_like(p), 2)  # no gradient: momentum alone moves it by 0.9 of the step
    np.testing.assert_allclose(after1, start + 0.01 / 8, rtol=1e-7)
    np.testing.assert_allclose(b, after1 + 0.9 * 0.01 / 8, rtol=1e-7)


def test_shortcut_update_is_clamped_and_not_decayed():
    desc = make_desc()
    opt = Optimizer(desc)
    p = init_params(desc)
    w0 = view(desc, p, 2, "weights").copy()
    g = np.zeros_like(p)
    view(desc, g, 2, "weights")[:] = [-5.0, 0.25]
    opt.step(p, g, 1)
    np.testing.assert_allclose(
        view(desc, p, 2, "weights"), w0 + np.array([0.01 / 8 * 1.0, 0.01 / 8 * -0.25]), rtol=1e-7
    )
    np.testing.assert_allclose(view(desc, opt.velocity, 2, "weights"), [0.9, -0.225], rtol=1e-6)


def test_clip_bounds_convolutional_weights():
    desc = make_desc()
    opt = Optimizer(desc)
    p = init_params(desc)
    g = np.zeros_like(p)
    view(desc, g, 1, "weights")[:] = np.linspace(-1e4, 1e4, 9)
    opt.step(p, g, 1)
    w = view(desc, p, 1, "weights")
    assert np.abs(w).max() == F(0.3) and (np.abs(w) == F(0.3)).sum() >= 2
    assert np.abs(view(desc, p, 0, "weights")).max() > 0.3  # layer 0 has no clip


# ----- layer switches ---------------------------------------------------------------------------------------------
def test_stopbackward_freezes_earlier_layers():
    desc = make_desc(l4="stopbackward=1")
    opt, ref, p_opt, p_ref = run_both(desc, [1, 2])
    p0 = init_params(desc)
    end = desc.layers[3].tensors[-1]
    np.testing.assert_array_equal(p_opt[: end.offset + end.size], p0[: end.offset + end.size])  # layers 0-3
    assert not opt.velocity[: end.offset + end.size].any()
    assert not np.array_equal(view(desc, p_opt, 4, "weights"), view(desc, p0, 4, "weights"))
    np.testing.assert_array_equal(p_opt, p_ref)
    assert set(opt.frozen_layers()) == {0, 1, 2, 3}


def test_train_only_bn_freezes_the_layer_and_all_before():
    desc = make_desc(l1="train_only_bn=1")
    opt, ref, p_opt, p_ref = run_both(desc, [1, 2])
    p0 = init_params(desc)
    for layer in (0, 1):
        for t in desc.layers[layer].tensors:
            np.testing.assert_array_equal(view(desc, p_opt, layer, t.name), view(desc, p0, layer, t.name))
    assert not np.array_equal(view(desc, p_opt, 2, "weights"), view(desc, p0, 2, "weights"))
    assert set(opt.frozen_layers()) == {0, 1}
    np.testing.assert_array_equal(p_opt, p_ref)


def test_dont_update_accumulates_then_applies_everything():
    desc = make_desc(l4="dont_update=2")
    opt, ref, p_opt, p_ref = run_both(desc, [1, 2])
    p0 = init_params(desc)
    for name in ("weights", "biases", "scales"):
        np.testing.assert_array_equal(view(desc, p_opt, 4, name), view(desc, p0, 4, name))
    g1, g2 = grad_for(desc, 1), grad_for(desc, 2)
    np.testing.assert_array_equal(
        view(desc, opt.velocity, 4, "biases"), F(0) - view(desc, g1, 4, "biases") - view(desc, g2, 4, "biases")
    )
    g3 = grad_for(desc, 3)
    opt.step(p_opt, g3, 3)
    ref.step(p_ref, g3, 3, 0.01)
    assert not np.array_equal(view(desc, p_opt, 4, "biases"), view(desc, p0, 4, "biases"))
    np.testing.assert_array_equal(p_opt, p_ref)
    np.testing.assert_array_equal(opt.velocity, ref.U)


def test_burnin_update_waits_for_burnin_update_times_burn_in():
    desc = make_desc(net_extra="burn_in=2", l5="burnin_update=1")
    opt = Optimizer(desc)
    p0 = init_params(desc)
    p = p0.copy()
    opt.step(p, grad_for(desc, 1), 1)  # 1 * 2 > 1: skipped
    np.testing.assert_array_equal(view(desc, p, 5, "weights"), view(desc, p0, 5, "weights"))
    opt.step(p, grad_for(desc, 2), 2)  # 1 * 2 > 2 is false: updated
    assert not np.array_equal(view(desc, p, 5, "weights"), view(desc, p0, 5, "weights"))
    ref = Reference(desc)
    q = p0.copy()
    for it in (1, 2):
        ref.step(q, grad_for(desc, it), it, learning_rate(it, desc))
    np.testing.assert_array_equal(p, q)


# ----- Adam -------------------------------------------------------------------------------------------------------
def test_adam_matches_the_scalar_reference():
    desc = make_desc(net_extra="adam=1\nB1=0.9\nB2=0.999\neps=0.000001")
    opt, ref, p_opt, p_ref = run_both(desc, [1, 2, 3])
    # Bit-identical on this machine; the one operation that could differ elsewhere is powf(B, t) (numpy's
    # float32 pow against the C library's double pow rounded), hence one unit in the last place allowed.
    np.testing.assert_array_max_ulp(p_opt, p_ref, maxulp=1)
    np.testing.assert_array_equal(opt.adam_m, ref.M)
    np.testing.assert_array_equal(opt.adam_v, ref.V)
    # Adam only for convolutional layers: the connected layers' momentum buffer is in use, the conv one is not.
    assert view(desc, opt.velocity, 5, "weights").any() and not view(desc, opt.velocity, 0, "weights").any()
    assert view(desc, opt.adam_m, 0, "biases").any() and not view(desc, opt.adam_m, 5, "weights").any()


def test_adam_first_step_by_hand():
    """t=1: m_hat = d, v_hat = d*d, so W moves by lr * d / (|d| + eps) = about lr * sign(d)."""
    desc = make_desc(net_extra="adam=1", decay=0)
    opt = Optimizer(desc)
    p0 = init_params(desc)
    p = p0.copy()
    g = grad_for(desc, 1)
    opt.step(p, g, 1)
    d = -view(desc, g, 0, "weights").astype(np.float64)
    want = view(desc, p0, 0, "weights") + 0.01 * d / (np.abs(d) + 1e-6)
    # float32 arithmetic against the float64 formula: within one unit in the last place
    np.testing.assert_array_max_ulp(view(desc, p, 0, "weights"), want.astype(np.float32), maxulp=1)


# ----- non-finite gradients ---------------------------------------------------------------------------------------
def test_nonfinite_gradient_skips_everything_and_names_the_tensor():
    desc = make_desc()
    opt = Optimizer(desc)
    p = init_params(desc)
    opt.step(p, grad_for(desc, 1), 1)
    p_before, u_before = p.copy(), opt.velocity.copy()
    g = grad_for(desc, 2)
    view(desc, g, 4, "scales")[2] = np.nan
    view(desc, g, 5, "weights")[0] = np.inf
    res = opt.step(p, g, 2)
    assert res.skipped and res.rate is None and math.isnan(res.grad_norm)
    assert (res.nonfinite.layer, res.nonfinite.layer_type, res.nonfinite.tensor, res.nonfinite.index) == (
        4,
        "connected",
        "scales",
        2,
    )
    np.testing.assert_array_equal(p, p_before)
    np.testing.assert_array_equal(opt.velocity, u_before)
    assert np.isnan(g).sum() == 1  # the gradient itself is not "repaired"
    g2 = grad_for(desc, 2)
    view(desc, g2, 1, "biases")[1] = -np.inf
    found = first_nonfinite(desc, g2)
    assert (found.layer, found.tensor, found.index, found.value) == (1, "biases", 1, -math.inf)
    assert math.isinf(opt.step(p, g2, 2).grad_norm)
    assert first_nonfinite(desc, grad_for(desc, 3)) is None


def test_gradient_norm_in_float64_and_chunked():
    rng = np.random.default_rng(3)
    g = (rng.standard_normal(3_000_001) * 1e3).astype(np.float32)
    want = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    assert gradient_norm(g) == pytest.approx(want, rel=1e-12)
    big = np.full(10, 3e38, np.float32)  # float32 squares would overflow
    assert gradient_norm(big) == pytest.approx(math.sqrt(10) * 3e38, rel=1e-7)


# ----- EMA --------------------------------------------------------------------------------------------------------
def test_ema_start_update_apply_and_stop():
    desc = make_desc(net_extra="ema_alpha=0.9", max_batches=2010)
    opt = Optimizer(desc)
    assert opt.ema.start == 1005 and opt.ema.apply_at == 1010
    p = init_params(desc)
    ema_ref = None
    alpha, keep = F(0.9), F(F(1) - F(0.9))
    conv_slices = [
        (t.offset, t.offset + t.size)
        for l in (0, 1)
        for t in desc.layers[l].tensors
        if t.name in ("weights", "biases", "scales")
    ]
    actions = {}
    for it in range(1003, 1013):
        res = opt.step(p, grad_for(desc, it), it, rate=0.01)
        actions[it] = res.ema
        if it < 1005:
            assert res.ema is None and not opt.ema.initialized
            continue
        if ema_ref is None:  # initialisation copies the updated weights, then the first average runs
            ema_ref = p.copy()
        if it < 1010:
            ema_ref = alpha * ema_ref + keep * p
            for a, b in conv_slices:
                np.testing.assert_array_equal(opt.ema.values[a:b], ema_ref[a:b])
        elif it == 1010:
            for a, b in conv_slices:
                np.testing.assert_array_equal(p[a:b], ema_ref[a:b])  # averages replace the weights
        else:
            for a, b in conv_slices:  # frozen after the apply point
                np.testing.assert_array_equal(opt.ema.values[a:b], ema_ref[a:b])
    assert actions == {
        1003: None,
        1004: None,
        1005: "update",
        1006: "update",
        1007: "update",
        1008: "update",
        1009: "update",
        1010: "apply",
        1011: None,
        1012: None,
    }
    # only convolutional weights, biases and scales are averaged
    for layer, name in [(0, "rolling_mean"), (0, "rolling_variance"), (2, "weights"), (4, "weights"), (5, "biases")]:
        assert not view(desc, opt.ema.values, layer, name).any()
    averaged = opt.ema.averaged(p)
    np.testing.assert_array_equal(view(desc, averaged, 4, "weights"), view(desc, p, 4, "weights"))
    np.testing.assert_array_equal(view(desc, averaged, 0, "rolling_mean"), view(desc, p, 0, "rolling_mean"))


def test_ema_short_training_only_initialises():
    """max_batches < 2000: the apply point is before the start, so the average is taken once and never updated."""
    desc = make_desc(net_extra="ema_alpha=0.9", max_batches=1500)
    ema = WeightEMA(desc)
    p = init_params(desc)
    assert ema.after_update(p, 749) is None and not ema.initialized
    assert ema.after_update(p, 750) is None and ema.initialized
    first = ema.values.copy()
    p += 1
    assert ema.after_update(p, 751) is None
    np.testing.assert_array_equal(ema.values, first)


# ----- state and API ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["", "adam=1"])
def test_state_dict_round_trip_continues_identically(extra):
    desc = make_desc(net_extra=extra, l4="dont_update=3")
    a = Optimizer(desc)
    p = init_params(desc)
    for it in (1, 2):
        a.step(p, grad_for(desc, it), it)
    b = Optimizer(desc)
    b.load_state_dict(a.state_dict())
    q = p.copy()
    for it in (3, 4):
        a.step(p, grad_for(desc, it), it)
        b.step(q, grad_for(desc, it), it)
    np.testing.assert_array_equal(p, q)
    other = Optimizer(make_desc(net_extra="" if extra else "adam=1"))
    with pytest.raises(ValueError, match="trains with"):
        other.load_state_dict(a.state_dict())


def test_bad_buffers_are_refused():
    desc = make_desc()
    opt = Optimizer(desc)
    p = init_params(desc)
    with pytest.raises(ValueError, match="flat float32"):
        opt.step(p, np.zeros(desc.param_count, np.float64), 1)
    with pytest.raises(ValueError, match="flat float32"):
        opt.step(p[:-1], np.zeros(desc.param_count - 1, np.float32), 1)
    with pytest.raises(ValueError, match="counts from 1"):
        opt.step(p, np.zeros_like(p), 0)


def test_updates_a_network_in_place():
    desc = make_desc()
    net = pydarknet.Network(desc, seed=1)
    opt = Optimizer(net)
    before = net.params.copy()
    x = np.random.default_rng(0).random((1, 2, 4, 4)).astype(np.float32)
    out_before = net.forward_all(x)[-1].copy()
    opt.step(net, grad_for(desc, 1), 1)
    assert not np.array_equal(net.params, before)
    assert not np.array_equal(net.forward_all(x)[-1], out_before)
