"""The training passes at sizes that take their fast paths, against float64 references of whole tensors.

test_gradients.py checks every layer with finite differences on tiny inputs. The CPU kernels behind training
change route with size: vectorised loops with ragged tails, threads above a size threshold, 8x8 register
transposes, the input gradient of stride-1 convolutions as a convolution of the output gradient with flipped
filters (else a GEMM and col2im), batch-norm fused with the activation. Here convolutions large enough for all
of those get every entry of dL/dx, dL/dW and the batch-norm gradients compared with a float64 chain rule written
out per kernel tap (independent of the engine's im2col/GEMM formulation), with the error measure and tolerance
of tests/gradcheck.py. Then: gradients do not depend on the thread count (the reductions have a fixed order, which
keeps resumed training bit-identical), and the per-layer profile.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from support import gradcheck as gc
from support import reference as ref
from support.reference import cfg_text, randomize_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def activation_derivative(pre, name):
    if name == "linear":
        return np.ones_like(pre)
    if name == "leaky":
        return np.where(pre > 0, 1.0, 0.1)
    if name == "logistic":
        s = 1.0 / (1.0 + np.exp(-pre))
        return s * (1.0 - s)
    raise KeyError(name)


def conv_backward64(x, w, r, *, stride_x, stride_y, padding, dilation, groups):
    """dL/dx and dL/dw of L = sum(conv2d_raw(x, w) * r) in float64, tap by tap: output pixel (oy, ox) reads
    input (oy*stride_y - pad + ky*dilation, ox*stride_x - pad + kx*dilation) with pad = padding*dilation."""
    n, c, h, wid = x.shape
    filters, c_per_group, k, _ = w.shape
    out_h, out_w = r.shape[2:]
    pad = padding * dilation
    reach_h = (out_h - 1) * stride_y + (k - 1) * dilation + 1
    reach_w = (out_w - 1) * stride_x + (k - 1) * dilation + 1
    xp = np.zeros((n, c, max(reach_h, pad + h), max(reach_w, pad + wid)))
    xp[:, :, pad : pad + h, pad : pad + wid] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    per_group = filters // groups
    for g in range(groups):
        cs, fs = slice(g * c_per_group, (g + 1) * c_per_group), slice(g * per_group, (g + 1) * per_group)
        for ky in range(k):
            for kx in range(k):
                rows = slice(ky * dilation, ky * dilation + (out_h - 1) * stride_y + 1, stride_y)
                cols = slice(kx * dilation, kx * dilation + (out_w - 1) * stride_x + 1, stride_x)
                dw[fs, :, ky, kx] = np.einsum("bohw,bchw->oc", r[:, fs], xp[:, cs, rows, cols])
                dxp[:, cs, rows, cols] += np.einsum("bohw,oc->bchw", r[:, fs], w[fs, :, ky, kx])
    return dxp[:, :, pad : pad + h, pad : pad + wid], dw


def bn_backward64(z, scales, biases, r, activation):
    """For L = sum(activation(BN_train(z)) * r): dL/dz, dL/dscales, dL/dbiases in float64 (the exact derivative
    of the variance with Bessel's correction)."""
    count = z.size // z.shape[1]
    axes = (0, 2, 3)
    mean = z.mean(axis=axes, keepdims=True)
    std = np.sqrt(((z - mean) ** 2).sum(axis=axes, keepdims=True) / (count - 1) + ref.BN_EPSILON)
    xhat = (z - mean) / std
    pre = scales.reshape(1, -1, 1, 1) * xhat + biases.reshape(1, -1, 1, 1)
    g = r * activation_derivative(pre, activation)
    dxhat = g * scales.reshape(1, -1, 1, 1)
    dz = (
        dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True) / (count - 1)
    ) / std
    return dz, (g * xhat).sum(axis=axes), g.sum(axis=axes)


# (channels, height, width, conv options, batch); the comment names the path each one takes.
LARGE_CONV_CASES = {
    # stride 1: input gradient as a convolution (three images per product); batch-norm fused with leaky; outputs
    # above the thread threshold
    "3x3_bn_leaky": (16, 20, 23, dict(filters=24, size=3, stride=1, pad=1, batch_normalize=1, activation="leaky"), 3),
    # stride 2 on odd sizes: GEMM + col2im, strided unrolling, 8x8 transposes with ragged edges
    "3x3_s2_linear": (12, 25, 23, dict(filters=20, size=3, stride=2, pad=1, activation="linear"), 2),
    # stride 2 with a columns gradient larger than one band: GEMM + col2im band by band (22 + 18 rows here)
    "3x3_s2_bands_bn_leaky": (
        128,
        79,
        81,
        dict(filters=16, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky"),
        2,
    ),
    # maps of 1024 positions or more: one image per product (1x1: the gradient itself is the column matrix)
    "3x3_large_plane_bn_leaky": (4, 32, 33, dict(filters=6, size=3, pad=1, batch_normalize=1, activation="leaky"), 2),
    "1x1_large_plane": (6, 32, 33, dict(filters=5, size=1, activation="linear"), 2),
    # smaller maps: two images per product here, and a batch of three leaves one image for the last product
    "3x3_chunk_remainder_bn": (8, 24, 30, dict(filters=8, size=3, pad=1, batch_normalize=1, activation="linear"), 3),
    # dilation 2 with Darknet's padding: stride-1 transposed path with a dilated kernel
    "3x3_dilation2_bn_logistic": (
        8,
        17,
        21,
        dict(filters=12, size=3, pad=1, dilation=2, batch_normalize=1, activation="logistic"),
        2,
    ),
    # 1x1 with padding: the output has a zero border, more than a convolution of the gradient gives back (col2im)
    "1x1_padding1": (10, 15, 16, dict(filters=9, size=1, padding=1, activation="leaky"), 2),
    # 1x1: the image is the column matrix
    "1x1_leaky": (32, 17, 15, dict(filters=40, size=1, stride=1, activation="leaky"), 2),
    # 5x5 without padding: the flipped-filter convolution pads the output gradient by 4
    "5x5_valid_bn": (6, 22, 18, dict(filters=10, size=5, padding=0, batch_normalize=1, activation="linear"), 2),
    # groups: each group its own GEMMs
    "3x3_groups2_bn": (16, 19, 21, dict(filters=16, size=3, pad=1, groups=2, batch_normalize=1, activation="leaky"), 2),
}


@pytest.mark.parametrize("case", sorted(LARGE_CONV_CASES))
def test_large_convolution_gradients(engine, tmp_path, case):
    c, h, w, keys, batch = LARGE_CONV_CASES[case]
    net = ref.load_cfg(tmp_path, cfg_text(w, h, c, ("convolutional", keys)))
    rng = np.random.default_rng(21)
    randomize_params(net, rng)
    o = net.desc.layers[0].options
    p = ref.params64(net.layers[0])
    x = rng.normal(size=(batch, c, h, w)).astype(np.float32)
    r = rng.normal(size=(batch,) + tuple(net.layers[0].out_shape)).astype(np.float32)
    net.zero_grads()
    net.forward_train(x)
    got_dx = net.backward({0: r}, input_grad=True)
    grads = {
        t.name: np.array(net.grads[t.offset : t.offset + t.size]).reshape(t.shape) for t in net.desc.layers[0].tensors
    }

    geometry = dict(
        stride_x=o["stride_x"], stride_y=o["stride_y"], padding=o["padding"], dilation=o["dilation"], groups=o["groups"]
    )
    x64, r64 = x.astype(np.float64), r.astype(np.float64)
    z = ref.conv2d_raw(x64, p["weights"], **geometry)
    if o["batch_normalize"]:
        dz, d_scales, d_biases = bn_backward64(z, p["scales"], p["biases"], r64, o["activation"])
        want = {"scales": d_scales, "biases": d_biases}
    else:
        pre = z + p["biases"].reshape(1, -1, 1, 1)
        dz = r64 * activation_derivative(pre, o["activation"])
        want = {"biases": dz.sum(axis=(0, 2, 3))}
    want_dx, want["weights"] = conv_backward64(x64, p["weights"], dz, **geometry)
    assert got_dx.shape == want_dx.shape
    errors = {"input": gc.relative_errors(got_dx.reshape(-1), want_dx.reshape(-1)).max()}
    for name, value in want.items():
        errors[name] = gc.relative_errors(grads[name].reshape(-1), value.reshape(-1)).max()
    print(f"{case}: " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= gc.RTOL, errors
    # The rolling statistics get no gradient.
    for name in ("rolling_mean", "rolling_variance"):
        if name in grads:
            assert np.all(grads[name] == 0)


def test_large_mish_batchnorm_chain_by_finite_differences(engine, tmp_path):
    """Activations whose gradient needs the pre-activation value (mish, swish) get it from batch-norm's fused
    pass; a chain of two such layers at a size above the thread threshold, checked by finite differences."""
    text = cfg_text(
        19,
        18,
        6,
        ("convolutional", dict(filters=16, size=3, pad=1, batch_normalize=1, activation="mish")),
        ("convolutional", dict(filters=12, size=3, pad=1, batch_normalize=1, activation="swish")),
    )
    net = ref.load_cfg(tmp_path, text)
    rng = np.random.default_rng(22)
    randomize_params(net, rng)
    x = rng.normal(size=(3, 6, 18, 19)).astype(np.float32)
    check = gc.GradCheck(net, x, {1: rng.normal(size=(3, 12, 18, 19)).astype(np.float32)})
    errors = check.check_all(limit=48, rng=rng)
    print("mish/swish chain:", errors)


def _gradients_in_subprocess(threads, cfg, seed):
    """Runs forward_train + backward of cfg in a fresh interpreter with OMP_NUM_THREADS=threads and returns the
    parameter and input gradients as hex bytes (to compare bit for bit)."""
    code = f"""
import json, numpy as np, pydarknet
net = pydarknet.load({str(cfg)!r}, seed={seed})
rng = np.random.default_rng({seed})
x = rng.normal(size=(3,) + tuple(net.input_shape)).astype(np.float32)
heads = net.yolo_layers
grads = {{i: rng.normal(size=(3,) + tuple(net.layers[i].out_shape)).astype(np.float32) for i in heads}}
net.zero_grads()
net.forward_train(x, seed=5, iteration=1)
dx = net.backward(grads, input_grad=True)
print(json.dumps({{"grads": np.asarray(net.grads).tobytes().hex(), "input": dx.tobytes().hex()}}))
"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # cwd outside the checkout: `python -c` puts the working folder first on sys.path, and the source tree's
    # pydarknet has no compiled engine unless it was installed in place.
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.abspath(str(cfg))),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gradients_do_not_depend_on_the_thread_count(engine, tmp_path):
    """Every sum in forward_train and backward has an order fixed by the shapes, so one and two threads give the
    same bits (and a resumed run repeats an uninterrupted one on any thread count)."""
    from pydarknet.train.starter import starter_cfg

    cfg = tmp_path / "starter.cfg"
    cfg.write_text(starter_cfg(3, 64, 64))
    one = _gradients_in_subprocess(1, cfg, 3)
    two = _gradients_in_subprocess(2, cfg, 3)
    assert one["grads"] == two["grads"]
    assert one["input"] == two["input"]
    assert any(c != "0" for c in one["grads"])


def test_per_layer_profile(engine, tmp_path):
    text = cfg_text(
        16,
        16,
        3,
        ("convolutional", dict(filters=8, size=3, pad=1, batch_normalize=1, activation="leaky")),
        ("maxpool", dict(size=2, stride=2)),
        ("convolutional", dict(filters=4, size=1, activation="linear", stopbackward=1)),
        ("convolutional", dict(filters=4, size=1, activation="linear")),
    )
    net = ref.load_cfg(tmp_path, text)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    assert net.layer_times() == {"forward": [], "forward_train": [], "backward": []}
    net.profile = True
    assert net.profile
    net.forward(x)
    net.forward_train(x)
    net.backward({3: np.ones((2, 4, 8, 8), np.float32)})
    times = net.layer_times()
    assert all(len(v) == 4 for v in times.values())
    assert all(t > 0 for t in times["forward"] + times["forward_train"])
    # stopbackward=1 on layer 2: layers 0-2 are never run backward.
    assert times["backward"][:3] == [0.0, 0.0, 0.0] and times["backward"][3] > 0


def test_maxpool_2x2_training_path(engine, tmp_path):
    """The 2x2 stride-2 pool of even planes has its own training loop: the same outputs as the general rule
    (start from -FLT_MAX, strictly greater wins, top row then left first), so ties send the gradient to the
    first of equal values and an all -inf window outputs -FLT_MAX and passes nothing back."""
    net = ref.load_cfg(tmp_path, cfg_text(34, 20, 8, ("maxpool", dict(size=2, stride=2))))
    rng = np.random.default_rng(23)
    x = rng.integers(-2, 3, size=(3, 8, 20, 34)).astype(np.float32)  # few distinct values: many ties
    x[0, 0, :2, :2] = -np.inf
    out = net.forward_train(x)[0]
    r = rng.normal(size=out.shape).astype(np.float32)
    got = net.backward({0: r}, input_grad=True)

    windows = x.reshape(3, 8, 10, 2, 17, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 8, 10, 17, 4)
    best = np.full(windows.shape[:-1], -np.finfo(np.float32).max, np.float32)
    which = np.full(windows.shape[:-1], -1)
    for k in range(4):
        wins = windows[..., k] > best
        best = np.where(wins, windows[..., k], best)
        which = np.where(wins, k, which)
    np.testing.assert_array_equal(out, best)
    want = np.zeros((3, 8, 10, 17, 4), np.float32)
    for k in range(4):
        want[..., k] = np.where(which == k, r, 0)
    want = want.reshape(3, 8, 10, 17, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
    np.testing.assert_array_equal(got, want)
    assert out[0, 0, 0, 0] == -np.finfo(np.float32).max and np.all(got[0, 0, :2, :2] == 0)
    assert np.mean(which == 0) < 0.9 and np.mean(which == 3) > 0.01  # ties and every window position occur
