"""Mixed-precision training on the GPU (fp16 / bf16 networks; cuda/NOTES.md).

The convolution and [connected] training kernels round every multiplied operand (input, weight, output gradient)
to the half type and sum in float32, as an FP16/BF16 tensor-core GEMM with FP32 accumulation does; everything
else stays float32. Each layer case is compared with a float64 numpy reference that rounds the same operands the
same way (the same math: only the summation order and float32 sums differ) and with the fp32 training pass (which
shows the rounding matters). fp16 training scales the loss (LossScaler, GradScaler's defaults).

Skipped without a CUDA device; in the CUDA emulation build the kernels' arithmetic is checked, nothing about a
GPU's speed.
"""

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.errors import DeviceError, UsageError
from pydarknet.train.optim import LossScaler

HAS_GPU = _core.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")

EXACT = 1e-10  # against the reference rounding the same operands
VERSUS_FP32 = {
    "fp16": 1e-5,
    "bf16": 1e-2,
}  # against fp32 training (see test_layer_training_rounds_the_products_operands)
NET = "batch=4\nsubdivisions=1\nlearning_rate=0.01\nmomentum=0.9\ndecay=0.0005\nmax_batches=10\n"


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


def round_to(precision, x):
    """Round-to-nearest-even to fp16 / bf16, as float64 values (numpy's float16 cast rounds to even)."""
    x = np.asarray(x, np.float64)
    if precision == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float64)
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def test_rounding_is_to_nearest_even():
    # 1 + 2^-11 is halfway between two halves: rounds to even (1); 1 + 3 * 2^-11 rounds up to 1 + 2^-9.
    assert round_to("fp16", [1 + 2**-11, 1 + 3 * 2**-11, 65520.0, 2**-25 * 3]).tolist() == [
        1.0,
        1 + 2**-9,
        np.inf,
        2**-23,
    ]
    assert round_to("bf16", [1 + 2**-8, 1 + 3 * 2**-8]).tolist() == [1.0, 1 + 2**-6]


# ----- the float64 reference: one [convolutional] or [connected] layer, leaky, with or without batch-norm ------
def _windows(x, size, stride, pad, out_h, out_w):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty(x.shape[:2] + (size, size, out_h, out_w))
    for ky in range(size):
        for kx in range(size):
            cols[:, :, ky, kx] = xp[
                :, :, ky : ky + stride * (out_h - 1) + 1 : stride, kx : kx + stride * (out_w - 1) + 1 : stride
            ]
    return cols


def _unwindow(dcols, shape, size, stride, pad, out_h, out_w):
    b, c, h, w = shape
    dxp = np.zeros((b, c, h + 2 * pad, w + 2 * pad))
    for ky in range(size):
        for kx in range(size):
            dxp[:, :, ky : ky + stride * (out_h - 1) + 1 : stride, kx : kx + stride * (out_w - 1) + 1 : stride] += (
                dcols[:, :, ky, kx]
            )
    return dxp[:, :, pad : pad + h, pad : pad + w]


def reference(kind, p, x, g, params, precision, bn, eps=1e-5):
    """Training forward output, input gradient and the layer's parameter gradients (a dict), in float64."""
    r = (lambda v: np.asarray(v, np.float64)) if precision == "fp32" else (lambda v: round_to(precision, v))
    w = params["weights"]
    if kind == "conv":
        size, stride, groups = p["size"], p["stride"], p["groups"]
        pad = size // 2
        b, c, h, wd = x.shape
        out_h, out_w = (h + 2 * pad - size) // stride + 1, (wd + 2 * pad - size) // stride + 1
        f = w.shape[0]
        gi, go = c // groups, f // groups
        cols = r(_windows(np.asarray(x, np.float64), size, stride, pad, out_h, out_w))
        wr = r(w)
        y = np.concatenate(
            [
                np.einsum("bcyxhw,fcyx->bfhw", cols[:, k * gi : (k + 1) * gi], wr[k * go : (k + 1) * go])
                for k in range(groups)
            ],
            axis=1,
        )
        axes = (0, 2, 3)
        shape = (1, f, 1, 1)
    else:
        y = r(x) @ r(w).T
        axes = (0,)
        shape = (1, -1)
    grads = {}
    if bn:
        n = y.size // y.shape[1]
        mean = y.mean(axis=axes, keepdims=True)
        var = ((y - mean) ** 2).sum(axis=axes, keepdims=True) / (n - 1)
        inv_std = 1 / np.sqrt(var + eps)
        xhat = (y - mean) * inv_std
        pre = params["scales"].reshape(shape) * xhat + params["biases"].reshape(shape)
    else:
        pre = y + params["biases"].reshape(shape)
    out = np.where(pre > 0, pre, 0.1 * pre)
    gp = np.asarray(g, np.float64) * np.where(pre > 0, 1.0, 0.1)
    grads["biases"] = gp.sum(axis=axes)
    if bn:
        grads["scales"] = (gp * xhat).sum(axis=axes)
        gy = (
            params["scales"].reshape(shape)
            * inv_std
            * (gp - gp.mean(axis=axes, keepdims=True) - xhat * (gp * xhat).sum(axis=axes, keepdims=True) / (n - 1))
        )
    else:
        gy = gp
    gr = r(gy)
    if kind == "conv":
        dw, dcols = [], []
        for k in range(groups):
            gk = gr[:, k * go : (k + 1) * go]
            dw.append(np.einsum("bfhw,bcyxhw->fcyx", gk, cols[:, k * gi : (k + 1) * gi]))
            dcols.append(np.einsum("bfhw,fcyx->bcyxhw", gk, wr[k * go : (k + 1) * go]))
        grads["weights"] = np.concatenate(dw)
        dx = _unwindow(np.concatenate(dcols, axis=1), x.shape, size, stride, pad, out_h, out_w)
    else:
        grads["weights"] = gr.T @ r(x)
        dx = gr @ r(w)
    return out, dx, grads


CASES = {
    "conv3x3": ("conv", dict(filters=6, size=3, stride=1, groups=1), (3, 9, 11), False),
    "conv3x3_bn": ("conv", dict(filters=6, size=3, stride=1, groups=1), (3, 9, 11), True),
    "conv_groups_stride": ("conv", dict(filters=8, size=3, stride=2, groups=2), (4, 10, 9), False),
    "conv1x1_bn_groups": ("conv", dict(filters=6, size=1, stride=1, groups=3), (6, 7, 8), True),
    "connected": ("connected", dict(output=7), (5, 3, 3), False),
    "connected_bn": ("connected", dict(output=7), (5, 3, 3), True),
}


def layer_net(tmp_path, name, precision, seed=0):
    kind, p, (c, h, w), bn = CASES[name]
    keys = dict(p, activation="leaky", batch_normalize=int(bn))
    if kind == "conv":
        keys["pad"] = 1
        section = ("convolutional", keys)
    else:
        section = ("connected", keys)
    path = tmp_path / f"{name}.cfg"
    path.write_text(cfg_text(w, h, c, section).replace("[net]\n", "[net]\n" + NET, 1))
    net = pydarknet.load(str(path), device="cuda", precision=precision)
    randomize_params(net, np.random.default_rng(seed))
    return net


def train_layer(net, x, g):
    net.zero_grads()
    net.forward_train(x, seed=1, iteration=1)
    out = net.train_output(0)
    dx = net.backward({0: g}, input_grad=True)
    return out, dx, net.grads.copy()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_training_rounds_the_products_operands(tmp_path, name, precision):
    kind, p, shape, bn = CASES[name]
    rng = np.random.default_rng(11)
    net = layer_net(tmp_path, name, precision)
    fp32 = layer_net(tmp_path, name, "fp32")
    np.testing.assert_array_equal(net.params, fp32.params)
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    params = {k: np.asarray(v, np.float64) for k, v in net.layers[0].params.items()}
    if kind == "conv":
        params["weights"] = params["weights"].reshape(p["filters"], shape[0] // p["groups"], p["size"], p["size"])
    else:
        params["weights"] = params["weights"].reshape(p["output"], -1)
    fp32.forward_train(x, seed=1, iteration=1)
    g = rng.standard_normal(fp32.train_output(0).shape).astype(np.float32)
    got = train_layer(net, x, g)
    base = train_layer(fp32, x, g)
    flat_x = x.reshape(3, -1) if kind == "connected" else x
    want_out, want_dx, want_grads = reference(
        kind, p, flat_x, g.reshape(3, -1) if kind == "connected" else g, params, precision, bn
    )
    tensors = {t.name: t for t in net.desc.layers[0].tensors}
    got_grads = {k: got[2][tensors[k].offset : tensors[k].offset + tensors[k].size] for k in want_grads}
    base_grads = {k: base[2][tensors[k].offset : tensors[k].offset + tensors[k].size] for k in want_grads}
    errors, versus = {}, {}
    errors["output"] = nmse(got[0], want_out.reshape(got[0].shape))
    errors["input_grad"] = nmse(got[1], want_dx.reshape(got[1].shape))
    versus["output"] = nmse(got[0], base[0])
    versus["input_grad"] = nmse(got[1], base[1])
    for k, v in want_grads.items():
        errors[k] = nmse(got_grads[k], v.reshape(-1))
        versus[k] = nmse(got_grads[k], base_grads[k])
    print(f"{name} {precision}: vs reference {max(errors.values()):.3g}; vs fp32 {max(versus.values()):.3g}")
    for what, e in errors.items():
        assert e <= EXACT, f"{what}: {e:.3g} against the reference rounding the same operands"
    # The rounding matters: measured output vs fp32 >= 4.3e-8 (fp16) and 1.2e-6 (bf16). Upper bounds from the
    # unit roundoffs (2^-11, 2^-8) with margin: measured <= 7.3e-7 (fp16); bf16 <= 7.3e-5, but 4.5e-3 for the
    # 3x3 convolution without batch-norm, where leaky's kink turns a near-zero pre-activation whose sign the
    # rounding flipped into a 10x different gradient.
    assert versus["output"] >= 1e-9, "fp16/bf16 training equals fp32: the operands were not rounded"
    assert max(versus.values()) <= VERSUS_FP32[precision]


# ----- the loss scaler and the trainer ---------------------------------------------------------------------------
def test_loss_scaler_halves_on_overflow_and_grows_after_finite_steps():
    s = LossScaler(growth_interval=3)
    assert s.scale == 2.0**16
    assert not s.update(True) and not s.update(True) and s.update(True)
    assert (s.scale, s.good_steps) == (2.0**17, 0)
    s.update(True)
    assert s.update(False) and (s.scale, s.good_steps) == (2.0**16, 0)
    restored = LossScaler()
    restored.load_state_dict(s.state_dict())
    assert (restored.scale, restored.good_steps) == (s.scale, s.good_steps)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pydarknet.data import synthetic
    from pydarknet.train.anchors import calc_anchors

    folder = tmp_path_factory.mktemp("amp-shapes")
    data = synthetic.generate(folder, n_train=16, n_valid=2, size=64, classes=3, seed=3)
    return data, calc_anchors(str(data), 6, 64, 64, seed=0).anchors


def tiny_cfg(tmp_path, anchors, max_batches=6):
    from pydarknet.train.starter import starter_cfg

    text = starter_cfg(3, 64, 64, anchors, max_batches=max_batches, batch=4)
    text = text.replace("burn_in=200", "burn_in=0").replace("subdivisions=1", "subdivisions=2")
    path = tmp_path / "tiny.cfg"
    path.write_text(text)
    return path


def trainer(cfg, data, folder, precision, weights=None, device="cuda", **options):
    from pydarknet.train.trainer import Trainer, TrainOptions

    options = dict(dict(backup=str(folder), workers=0, seed=5, quiet=True), **options)
    return Trainer(cfg, data, weights, TrainOptions(device=device, precision=precision, **options))


def test_mixed_precision_needs_a_cuda_device(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        trainer(cfg, data, tmp_path / "cpu", "fp16", device="cpu")
    with pytest.raises(DeviceError, match="needs device='cuda'"):
        pydarknet.load(str(cfg), precision="fp16")


# Three iterations vs fp32 (the weights then differ by nmse 1.3e-4 fp16, 3.2e-4 bf16); the bound allows the
# operand rounding (relative 2^-11 / 2^-8 per product) to move the loss by about twice what was measured.
LOSS_REL = {"fp16": 1e-2, "bf16": 3e-2}  # measured 4.55e-3 (fp16), 1.16e-2 (bf16) by the third iteration


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_three_iterations_in_mixed_precision_follow_fp32(dataset, tmp_path, precision):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors)
    base = trainer(cfg, data, tmp_path / "fp32", "fp32")
    amp = trainer(cfg, data, tmp_path / precision, precision)
    assert (amp.scaler is not None) == (precision == "fp16")
    if amp.scaler is not None:
        amp.scaler.scale = 2.0**8  # 2^16 overflows this cfg's first gradient (a skip): compare updates from the start
    worst = 0.0
    for _ in range(3):
        want, got = base.step(), amp.step()
        assert not want.skipped and not got.skipped
        worst = max(worst, abs(got.loss - want.loss) / abs(want.loss))
    error = nmse(amp.net.flat_params, base.net.flat_params)
    print(f"{precision}: losses within {worst:.3g} relative of fp32, weights after 3 iterations nmse {error:.3g}")
    assert 0 < worst <= LOSS_REL[precision]


def test_fp16_overflow_skips_the_update_without_counting_a_failure(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors)
    lines = []
    t = trainer(cfg, data, tmp_path / "o", "fp16", max_nonfinite=1)
    t.log = lines.append
    t._nonfinite_run = 0  # as run() starts
    t.scaler.scale = 2.0**100  # every scaled gradient overflows fp16
    before = t.net.flat_params.copy()
    entry = t.step()  # max_nonfinite=1: a counted failure would raise TrainingError here
    assert entry.skipped and t.scaler.scale == 2.0**99 and t._nonfinite_run == 0
    np.testing.assert_array_equal(t.net.flat_params, before)
    assert len(lines) == 1 and "loss scale" in lines[0]


def test_fp16_growth_after_finite_steps(dataset, tmp_path):
    data, anchors = dataset
    t = trainer(tiny_cfg(tmp_path, anchors), data, tmp_path / "g", "fp16", loss_scale_growth_interval=2)
    t.scaler.scale = 2.0**4
    for _ in range(2):
        assert not t.step().skipped
    assert t.scaler.scale == 2.0**5


def test_fp16_resume_is_bit_identical_and_restores_the_scale(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors, max_batches=4)
    straight = trainer(cfg, data, tmp_path / "a", "fp16", save_last_every=2, loss_scale_growth_interval=3)
    straight.run()
    first = trainer(cfg, data, tmp_path / "b", "fp16", save_last_every=2, loss_scale_growth_interval=3)
    first.run(stop_after=2)
    saved = first.scaler.state_dict()
    assert saved["scale"] != 2.0**16 or saved["good_steps"] > 0  # the scaler moved: its state matters
    last = tmp_path / "b" / "tiny_last.weights"
    resumed = trainer(cfg, data, tmp_path / "b", "fp16", weights=str(last), loss_scale_growth_interval=3)
    assert resumed.state.iteration == 2 and resumed.scaler.state_dict() == saved
    resumed.run()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for name in ("tiny_final.weights", "tiny_last.weights"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_train_command_in_bf16(dataset, tmp_path):
    from pydarknet.cli.main import main

    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors, max_batches=2)
    args = ["train", str(cfg), str(data), "--workers", "0", "--seed", "5", "--no-progress", "--quiet"]
    assert main(args + ["--backup", str(tmp_path / "out"), "--device", "cuda", "--precision", "bf16"]) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"tiny_final.weights", "tiny_last.weights", "tiny_last.state", "results.csv"} <= names
    assert main(args + ["--backup", str(tmp_path / "cpu"), "--precision", "bf16"]) != 0
