"""Whole networks with random weights against OpenCV's Darknet importer.

For every cfg the engine supports (the project's own ``cfg/`` folder):

1. ``net = pydarknet.load(cfg, width=W, height=H)``; every parameter gets a seeded random value
   (conv weights uniform with variance 2/fan_in, biases and batch-norm scales as below).
2. Batch-norm statistics are *calibrated* so that activations stay of order one through the whole
   network, as they are in a trained network: a sequential float32 numpy forward of the cfg on the
   test input measures every convolution's bare output before that layer's own parameters are
   applied, and ``rolling_mean``/``rolling_variance`` are set to the measured per-channel
   mean/variance, perturbed (mean +-0.1 sigma, variance x[0.8, 1.25]).  Convolutions without batch
   norm (the heads before ``[yolo]``, the classifier's last layer) get one weight scale per layer so
   that their pre-activation has rms 1 (2 before a softmax), and biases that centre each channel
   with a random offset of order one.
   This only chooses the random parameters (nothing is compared with it); without it the random
   residual networks (yolov3, yolov3-spp) overflow and the CSP networks decay to constant outputs,
   which would make the comparison meaningless.
3. ``net.save_weights(tmp)`` writes the ``.weights`` file; OpenCV reads the same cfg (``width``/
   ``height`` of ``[net]`` substituted where the test uses a reduced input size) and that file.
4. Both run the same random input batch, with ``net.bn_epsilon = 1e-6`` (OpenCV's batch-norm
   epsilon; Darknet's is 1e-5), so both compute the same function.  OpenCV runs with layer fusion
   and Winograd convolutions disabled: with fusion on, a requested intermediate blob (e.g. an
   activation read later by a route) can come back overwritten, and the Winograd path adds its own
   rounding (about 1e-5 here).

Random parameter scales: batch-norm ``scales`` ~ U(0.1, 0.3) and ``biases`` ~ U(-1, 1) keep every
pre-activation at N(b, s^2) with |b| <= 1 (so leaky/mish/swish/logistic are exercised on both
sides of zero) while keeping the random network away from the chaotic regime, where float32
rounding differences alone grow by orders of magnitude with depth (with scales ~ U(0.5, 1.5),
OpenCV with and without its own fusion differed by 7e-3 on yolov4).  With the values used here,
independent float32 implementations agree to about 1e-5.

Two comparisons per ``[yolo]`` layer, both must have max abs difference <= 1e-3:

* **raw**: our yolo output (Darknet layout ``(N, A*(5+C), h, w)``, what Darknet's yolo layer holds
  after forward) against the *input* blob of OpenCV's yolo layer (the head convolution, or its
  logistic activation for ``new_coords=1``) transformed exactly as Darknet's ``forward_yolo_layer``
  does (logistic on x, y, objectness and classes unless ``new_coords=1``; then
  ``x, y <- s*x - (s-1)/2`` with ``s = scale_x_y``).  This covers every value, w and h included.
* **decoded**: our yolo output converted into OpenCV's row format (one row per cell and anchor in
  (y, x, anchor) order: ``x, y, w, h`` relative to the network input, objectness,
  objectness*class scores with scores <= the layer's ``thresh`` (default 0.2) set to 0) against
  OpenCV's ``yolo_i`` output, which validates the decode against an independent implementation.
  A class score within 1e-4 of ``thresh`` may legitimately be zeroed on one side only; for those
  entries OpenCV's value must be 0 or within 1e-3 of ours.

The classifier (darknet53) has no ``[yolo]`` layer: its softmax output and its logits (the last
convolution, layer 76) are compared with OpenCV's ``softmax_77`` and ``conv_76``.

On a mismatch the failure message names the first Darknet layer whose output differs from OpenCV's
corresponding blob (``forward_all`` against ``net.forward(names)``; OpenCV names Darknet layer ``i``
``conv_i``/``bn_i``, the activation after it ``<act>_{i+1}``, ``concat_i``/``slice_i``/``identity_i``
for routes, ``pool_i``, ``shortcut_i``, ``upsample_i``).

Large networks run at a reduced input size (a multiple of 32; 64 for yolov4-p6) to keep the file
fast; the parameter count does not depend on the input size, so the whole ``.weights`` file is
exercised.  A few cases use non-square inputs and batch 2.
"""

from __future__ import annotations

import pathlib
import struct

import numpy as np
import pytest
from support.netcalib import calibrate, randomize, read_sections, with_input_size
from support.opencv import darknet_yolo_forward, decoded_diff, first_divergence, yolo_specs

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip(
        "this OpenCV build has no Darknet importer (OpenCV 5 removed it; use opencv-python-headless<5)",
        allow_module_level=True,
    )

CFG_DIR = pathlib.Path(__file__).resolve().parents[1] / "cfg"
TOL = 1e-3
OPENCV_BN_EPS = 1e-6

# (cfg name, input width, input height, batch)
CASES = [
    ("yolov3-tiny", 416, 416, 2),
    ("yolov3-tiny_3l", 416, 320, 1),
    ("yolov4-tiny", 416, 416, 2),
    ("yolov4-tiny-3l", 320, 416, 1),
    ("yolov7-tiny", 416, 416, 1),
    ("yolov3", 416, 416, 1),
    ("yolov3-spp", 416, 320, 1),
    ("yolov4", 416, 416, 1),
    ("yolov4-csp", 320, 320, 1),
    ("yolov4-csp-swish", 320, 256, 1),
    ("yolov4-csp-x-swish", 256, 256, 1),
    ("yolov4x-mish", 320, 320, 1),
    ("yolov4-p5", 320, 320, 1),
    ("yolov4-p6", 320, 256, 1),
    ("yolov7", 320, 320, 1),
    ("yolov7x", 256, 320, 1),
]
# .weights sizes (20-byte header + 4 bytes per parameter), independent of the input size
WEIGHTS_BYTES = {
    "yolov3": 248_007_048,
    "yolov3-tiny": 35_434_956,
    "yolov3-tiny_3l": 36_039_888,
    "yolov3-spp": 252_209_544,
    "yolov4": 257_717_640,
    "yolov4-tiny": 24_251_276,
    "yolov4-tiny-3l": 25_336_200,
    "yolov4-csp": 211_944_840,
    "yolov4-csp-swish": 211_944_840,
    "yolov4-csp-x-swish": 399_388_168,
    "yolov4x-mish": 399_388_168,
    "yolov4-p5": 283_669_892,
    "yolov4-p6": 510_868_180,
    "yolov7-tiny": 24_967_560,
    "yolov7": 147_898_248,
    "yolov7x": 285_638_760,
    "darknet53": 166_582_580,
}
SLOW = {"yolov4-csp-x-swish", "yolov4x-mish", "yolov4-p5", "yolov4-p6", "yolov7x"}


# ------------------------------------------------------------------------------------------------
# cfg text helpers (independent of the engine's parser)
# ------------------------------------------------------------------------------------------------


def _cfg_path(name):
    path = CFG_DIR / f"{name}.cfg"
    if not path.is_file():
        pytest.fail(f"missing {path}")
    return path


def _setup(engine, name, width, height, batch, seed, tmp_path):
    cfg = _cfg_path(name)
    text = cfg.read_text()
    sized = with_input_size(text, width, height)
    net = engine.load(str(cfg), width=width, height=height)
    assert tuple(net.input_shape) == (3, height, width)
    net.bn_epsilon = OPENCV_BN_EPS
    rng = np.random.default_rng(seed)
    randomize(net, rng)
    x = rng.random((batch, 3, height, width), dtype=np.float32)
    calibrate(net, sized, x, rng, bn_eps=OPENCV_BN_EPS)
    weights = tmp_path / f"{name}.weights"
    net.save_weights(str(weights))
    assert weights.stat().st_size == 20 + 4 * net.params.size == WEIGHTS_BYTES[name]
    cv_cfg = tmp_path / f"{name}.cfg"
    cv_cfg.write_text(sized)
    cv_net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(cv_net, "enableWinograd"):  # OpenCV >= 4.7
        cv_net.enableWinograd(False)
    cv_net.enableFusion(False)
    return net, cv_net, sized, x


def _case_params():
    out = []
    for name, w, h, b in CASES:
        marks = [pytest.mark.slow] if name in SLOW else []
        out.append(pytest.param(name, w, h, b, id=f"{name}-{w}x{h}-b{b}", marks=marks))
    return out


@pytest.mark.parametrize("name,width,height,batch", _case_params())
def test_yolo_outputs_match_opencv(engine, tmp_path, name, width, height, batch):
    net, cv_net, text, x = _setup(engine, name, width, height, batch, seed=1234, tmp_path=tmp_path)
    specs = yolo_specs(text)
    assert [s["index"] for s in specs] == list(net.yolo_layers)

    layer_names = list(cv_net.getLayerNames())
    request = []
    for s in specs:
        permute = layer_names.index(f"permute_{s['index']}")
        request += [layer_names[permute - 1], f"yolo_{s['index']}"]
    cv_net.setInput(x)
    blobs = cv_net.forward(request)
    ours = net.forward(x)
    assert len(ours) == len(specs)

    report, failures = [], []
    for k, s in enumerate(specs):
        mine = np.asarray(ours[k])
        yolo_in, yolo_rows = blobs[2 * k], blobs[2 * k + 1]
        assert mine.shape == yolo_in.shape, (s["index"], mine.shape, yolo_in.shape)
        assert np.isfinite(mine).all(), f"non-finite values in yolo layer {s['index']}"
        raw = float(np.abs(mine.astype(np.float64) - darknet_yolo_forward(yolo_in, s)).max())
        dec = decoded_diff(mine, yolo_rows, s, width, height)
        report.append(f"yolo {s['index']}: raw {raw:.2e} decoded {dec:.2e}")
        if not (raw <= TOL and dec <= TOL):
            failures.append(s["index"])
    print(f"{name} {width}x{height} b{batch}: " + "; ".join(report))
    if failures:
        pytest.fail(
            f"{name}: yolo layers {failures} differ from OpenCV ({'; '.join(report)}); "
            + first_divergence(net, cv_net, x)
        )


def test_darknet53_classifier_matches_opencv(engine, tmp_path):
    name, size = "darknet53", 256
    net, cv_net, text, x = _setup(engine, name, size, size, 2, seed=99, tmp_path=tmp_path)
    assert net.layers[-1].type == "softmax" and net.layers[-2].type == "convolutional"
    last_conv = net.layers[-2].index
    cv_net.setInput(x)
    logits_ref, probs_ref = cv_net.forward([f"conv_{last_conv}", f"softmax_{last_conv + 1}"])
    (probs,) = net.forward(x)
    logits = net.forward_all(x)[last_conv]
    n = x.shape[0]
    probs = np.asarray(probs, dtype=np.float64).reshape(n, -1)
    logits = np.asarray(logits, dtype=np.float64).reshape(n, -1)
    d_probs = float(np.abs(probs - probs_ref.reshape(n, -1)).max())
    d_logits = float(np.abs(logits - logits_ref.reshape(n, -1)).max())
    print(f"{name} {size}x{size} b{n}: softmax {d_probs:.2e} logits {d_logits:.2e} (max prob {probs.max():.3f})")
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    if not (d_probs <= TOL and d_logits <= TOL):
        pytest.fail(
            f"{name}: softmax diff {d_probs:.3g}, logits diff {d_logits:.3g}; " + first_divergence(net, cv_net, x)
        )


def _random_darknet_params(text, rng):
    """Random parameters for a cfg made of conv/route/maxpool/upsample/yolo layers (engine-free)."""
    sections = read_sections(text)
    channels = [int(sections[0][1].get("channels", 3))]
    out_channels, blobs = [], []
    for index, (name, opts) in enumerate(sections[1:]):
        c = channels[-1]
        if name == "convolutional":
            n, size = int(opts["filters"]), int(opts.get("size", 1))
            fan_in = c // int(opts.get("groups", 1)) * size * size
            blobs.append(rng.uniform(-0.1, 0.1, n))
            if int(opts.get("batch_normalize", 0)):
                blobs += [rng.uniform(0.5, 1.5, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.5, 1.5, n)]
            blobs.append(rng.uniform(-1.0, 1.0, n * fan_in) * np.sqrt(3.0 / fan_in))
            c = n
        elif name == "route":
            refs = [int(v) for v in opts["layers"].split(",")]
            c = sum(out_channels[r if r >= 0 else index + r] for r in refs) // int(opts.get("groups", 1))
        else:
            assert name in ("maxpool", "upsample", "yolo"), name
        out_channels.append(c)
        channels.append(c)
    return np.concatenate(blobs).astype(np.float32)


def test_row_conversion_reproduces_opencv_decode():
    """The numpy yolo forward + row conversion used above reproduce OpenCV's own yolo rows from
    OpenCV's yolo input blob: an engine-free check of the comparison machinery."""
    width, height = 256, 192
    text = with_input_size(_cfg_path("yolov4-tiny").read_text(), width, height)
    rng = np.random.default_rng(7)
    params = _random_darknet_params(text, rng)
    assert params.size == 6_062_814
    buf = np.frombuffer(struct.pack("<iiiQ", 0, 2, 5, 0) + params.tobytes(), dtype=np.uint8)
    cv_net = cv2.dnn.readNetFromDarknet(np.frombuffer(text.encode(), np.uint8), buf)
    x = rng.random((2, 3, height, width), dtype=np.float32)
    names = list(cv_net.getLayerNames())
    specs = yolo_specs(text)
    request = []
    for s in specs:
        request += [names[names.index(f"permute_{s['index']}") - 1], f"yolo_{s['index']}"]
    cv_net.setInput(x)
    blobs = cv_net.forward(request)
    for k, s in enumerate(specs):
        out = darknet_yolo_forward(blobs[2 * k], s)
        assert decoded_diff(out, blobs[2 * k + 1], s, width, height) < 1e-5
