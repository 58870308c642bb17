"""ONNX export checked by running the exported file in ONNX Runtime (CPU) against the engine.

* every shipped cfg at 128x128 with random weights: the raw heads within 1e-4 (max abs) of ``net.forward``;
* every layer option and activation that the shipped cfgs do not use, in small cfgs;
* the options: opsets 13 and 21, dynamic batch and input size, fp16 weights, decoded boxes, NMS in the graph;
* the real yolov3-tiny and yolov4-tiny weights on real photos: the same detections as ``net.detect``.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from support.assets import fetch_or_skip
from support.reference import cfg_text, load_cfg

from pydarknet.core import graph

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFGS = sorted(p.name for p in (ROOT / "cfg").glob("*.cfg"))
SIZE = 128
TOL = 1e-4


def session(model_bytes):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def randomize(net, rng, shift=0.1):
    """Random parameters that keep activations of order one in every shipped cfg: the engine's He-uniform
    weights (load with a seed), and biases, batch-norm statistics and shortcut weights drawn around their
    neutral values (wider draws make deep random residual networks overflow, which would test nothing).
    ``shift``: the spread of biases and batch-norm means. (Without them, the Darknet-scale weights make deep
    activations vanish; with them, the deepest layers of a random yolov4-p6 depend only weakly on the input, but
    vary over the image, which is what each layer's comparison needs.)"""
    for layer in net.layers:
        for name, view in layer.params.items():
            if name == "weights" and layer.type in ("convolutional", "connected"):
                continue
            if name == "biases":
                view[...] = rng.normal(0.0, shift, view.shape)
            elif name == "scales":
                view[...] = rng.uniform(0.8, 1.2, view.shape)
            elif name == "rolling_mean":
                view[...] = rng.normal(0.0, shift, view.shape)
            elif name == "rolling_variance":
                view[...] = rng.uniform(0.8, 1.25, view.shape)
            else:
                view[...] = rng.uniform(0.5, 1.5, view.shape)


def max_diff(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
    return max(float(np.abs(g.astype(np.float64) - w).max()) for g, w in zip(got, want))


def load_shipped(engine, name, size=SIZE, shift=0.1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused keys some shipped cfgs carry
        net = engine.load(str(ROOT / "cfg" / name), width=size, height=size, seed=0)
    randomize(net, np.random.default_rng(1), shift)
    return net


# Not marked slow: this whole file took 2.2 minutes on the 2-core machine under other load (the five largest
# cfgs, 70-130 million parameters, 6-13 s each).
@pytest.mark.parametrize("name", CFGS)
def test_shipped_cfg_matches_forward(engine, name):
    """The heads within 1e-4 of net.forward, and every layer's output within 1e-4 of net.forward_all: each layer
    is checked where it is, also where a deep random network's heads hardly depend on the input any more."""
    from pydarknet.export.onnx import build_model

    net = load_shipped(engine, name)
    _, data = build_model(net, layer_outputs=True)
    x = np.random.default_rng(2).random((1, *net.input_shape), dtype=np.float32)
    want_layers = net.forward_all(x)
    want = net.forward(x)
    got = session(data).run(None, {"images": x})
    assert max(float(np.abs(w).max()) for w in want_layers) < 100  # activations of order one: 1e-4 means something
    assert max_diff(got[: len(want)], want) <= TOL
    assert max_diff(got[len(want) :], want_layers) <= TOL


# ----- layers and options the shipped cfgs do not use ---------------------------------------------------------
def conv(filters, size=3, activation="linear", **extra):
    keys = {"filters": filters, "size": size, "stride": 1, "pad": 1, "activation": activation}
    keys.update(extra)
    return ("convolutional", keys)


LAYER_CASES = {
    "activations": [
        conv(6, activation=a, batch_normalize=1)
        for a in graph.ACTIVATIONS[1:]  # every activation but linear
    ],
    "conv_shapes": [
        conv(8, size=3, stride=2, activation="leaky"),
        conv(8, size=3, dilation=2, groups=4, activation="mish"),
        conv(6, size=5, pad=0, padding=1, stride_x=2, stride_y=1, activation="swish"),
        conv(6, size=1, pad=0, activation="linear"),
    ],
    "weighted_shortcuts": [
        conv(6, activation="leaky"),
        conv(6, activation="leaky"),
        ("shortcut", {"from": "-2", "weights_type": "per_feature", "weights_normalization": "relu"}),
        conv(6, activation="leaky"),
        (
            "shortcut",
            {"from": "-3,-4", "weights_type": "per_channel", "weights_normalization": "softmax", "activation": "swish"},
        ),
        ("shortcut", {"from": "-2", "weights_type": "per_layer", "weights_normalization": "none"}),
        ("shortcut", {"from": "-3", "weights_type": "per_channel", "weights_normalization": "avg_relu"}),
    ],
    "shortcut_other_size": [
        conv(6, activation="leaky"),
        conv(4, activation="leaky"),
        ("shortcut", {"from": "-2"}),
        conv(8, activation="leaky"),
        ("shortcut", {"from": "-2", "activation": "leaky"}),
    ],
    "pools": [
        conv(8, activation="leaky"),
        ("maxpool", {"size": 3, "stride": 2}),
        ("maxpool", {"size": 2, "stride": 1}),
        ("maxpool", {"size": 5, "stride": 1, "padding": 3}),
        ("local_avgpool", {"size": 3, "stride": 2}),
        ("maxpool", {"maxpool_depth": 1, "out_channels": 4}),
        ("avgpool", {}),
    ],
    "resampling": [
        conv(8, activation="leaky"),
        ("upsample", {"stride": 2, "scale": 0.5}),
        ("upsample", {"stride": -2, "scale": 0.25}),
        ("upsample", {"stride": -3}),
        ("reorg3d", {"stride": 2}),
        ("reorg3d", {"stride": 2, "reverse": 1}),
        ("route", {"layers": "-1,-3", "groups": 2, "group_id": 1}),
    ],
    "attention": [
        conv(8, activation="leaky"),
        conv(8, activation="logistic"),
        ("sam", {"from": "-2"}),
        ("avgpool", {}),
        ("scale_channels", {"from": "-2", "activation": "linear"}),
        conv(1, size=1, activation="logistic"),
        ("scale_channels", {"from": "-2", "scale_wh": 1}),
        ("batchnorm", {}),
        ("dropout", {"probability": 0.3}),
    ],
    "classifier": [
        conv(4, stride=2, activation="leaky"),
        ("connected", {"output": 20, "activation": "leaky", "batch_normalize": 1}),
        ("connected", {"output": 12, "activation": "linear"}),
        ("softmax", {"groups": 3, "temperature": 2.0}),
    ],
    "yolo_heads": [
        conv(8, activation="leaky"),
        conv(2 * (5 + 3), size=1, pad=0, activation="logistic"),
        (
            "yolo",
            {"mask": "0,1", "anchors": "3,4, 8,9, 20,11", "classes": 3, "num": 3, "new_coords": 1, "scale_x_y": 2.0},
        ),
        ("route", {"layers": "-3"}),
        conv(1 * (5 + 3), size=1, pad=0, activation="linear"),
        ("yolo", {"mask": "2", "anchors": "3,4, 8,9, 20,11", "classes": 3, "num": 3, "scale_x_y": 1.05}),
    ],
}


# Input sizes other than 24x16 where a case's layers need them (the resampling chain divides by 2, 3 and 2).
CASE_SIZES = {"resampling": (36, 24)}


def build_case(tmp_path, name, channels=3):
    import pydarknet

    width, height = CASE_SIZES.get(name, (24, 16))
    net = load_cfg(tmp_path, cfg_text(width, height, channels, *LAYER_CASES[name]), seed=0)
    randomize(net, np.random.default_rng(3))
    return net, pydarknet


@pytest.mark.parametrize("opset", [13, 21])  # both ends: some operators changed form in between (ReduceMax)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_options_match_forward(engine, tmp_path, name, opset):
    from pydarknet.export.onnx import build_model

    net, _ = build_case(tmp_path, name)
    _, data = build_model(net, batch=2, opset=opset)
    x = np.random.default_rng(4).normal(0.0, 1.0, (2, *net.input_shape)).astype(np.float32)
    want = net.forward(x)
    assert max_diff(session(data).run(None, {"images": x}), want) <= TOL


@pytest.mark.parametrize("opset", [13, 21])
def test_opset_range(engine, tmp_path, opset):
    from pydarknet.export.onnx import build_model

    net = load_shipped(engine, "yolov4-tiny.cfg", size=96)
    model, data = build_model(net, opset=opset, outputs="decoded")
    assert model.opset_import[0].version == opset
    x = np.random.default_rng(5).random((1, *net.input_shape), dtype=np.float32)
    raw = build_model(net, opset=opset)[1]
    assert max_diff(session(raw).run(None, {"images": x}), net.forward(x)) <= TOL
    boxes, scores = session(data).run(None, {"images": x})
    assert boxes.shape == (1, 3 * (3 * 3 + 6 * 6), 4) and scores.shape == (1, 135, 80)


def test_bad_options(engine):
    from pydarknet.export.onnx import build_model

    net = load_shipped(engine, "yolov3-tiny.cfg", size=64)
    for options in ({"opset": 12}, {"opset": 22}, {"batch": 0}, {"outputs": "boxes"}, {"thresh": 2.0}):
        with pytest.raises(engine.ExportError):
            build_model(net, **options)
    with pytest.raises(engine.ExportError, match="unknown export format"):
        net.export("x.onnx", format="tflite")
    classifier = load_shipped(engine, "darknet53.cfg", size=64)
    with pytest.raises(engine.ExportError, match="needs \\[yolo\\] layers"):
        build_model(classifier, outputs="nms")


def test_dynamic_size_refuses_size_bound_layers(engine, tmp_path):
    from pydarknet.export.onnx import build_model

    net, _ = build_case(tmp_path, "classifier")
    with pytest.raises(
        engine.ExportError,
        match=r"net\.cfg:\d+: layer 1 \[connected\]: cannot be exported with a "
        r"dynamic input size",
    ):
        build_model(net, dynamic_size=True)


def test_dynamic_batch_and_size(engine):
    from pydarknet.export.onnx import build_model

    net = load_shipped(engine, "yolov4-tiny.cfg", size=96)
    model, data = build_model(net, batch=None, dynamic_size=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    sess = session(data)
    other = net.resized(160, 64)  # the same parameters at another input size
    for n, ref in ((3, net), (2, other)):
        x = np.random.default_rng(n).random((n, *ref.input_shape), dtype=np.float32)
        assert max_diff(sess.run(None, {"images": x}), ref.forward(x)) <= TOL


def test_fp16_weights(engine):
    import onnx

    from pydarknet.export.onnx import build_model
    from pydarknet.hub import models
    from pydarknet.inference.detect import Detector

    fetch_or_skip("yolov4-tiny.weights")
    net = models.load("yolov4-tiny")
    model32, data32 = build_model(net)
    model16, data16 = build_model(net, fp16=True)
    assert len(data16) < 0.55 * len(data32)
    kinds = {t.data_type for t in model16.graph.initializer if "_fp16_" in t.name}
    assert kinds == {onnx.TensorProto.FLOAT16}
    x = Detector(net).prepare(fetch_or_skip("bus.jpg")).tensor[None]
    want = net.forward(x)
    assert max_diff(session(data32).run(None, {"images": x}), want) <= TOL
    # float16 weights (11-bit significands) in the real yolov4-tiny on bus.jpg: measured 5.0e-3 on the heads
    # (logistic outputs in [0, 1], raw w/h logits; yolov3-tiny: 6.3e-3); the stated bound is 2e-2.
    assert max_diff(session(data16).run(None, {"images": x}), want) <= 2e-2


def test_export_writes_file_with_metadata(engine, tmp_path):
    import onnx

    net = load_shipped(engine, "yolov3-tiny.cfg", size=64)
    path = tmp_path / "tiny.onnx"
    net.names = [f"c{i}" for i in range(80)]
    model = net.export(path, outputs="nms", thresh=0.3, nms=0.5)
    loaded = onnx.load(str(path))
    assert loaded == model
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert meta["outputs"] == "nms" and meta["thresh"] == "0.3" and meta["nms"] == "0.5"
    assert meta["names"].split("\n")[79] == "c79"
    assert [o.name for o in loaded.graph.output] == ["detections"]


# ----- real weights on real photos --------------------------------------------------------------------------
PHOTOS = ["bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]


def box_iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def assert_same_detections(got, want):
    key = lambda r: sorted(zip(r.class_id.tolist(), (-r.conf).tolist(), map(tuple, r.xyxy)))  # noqa: E731
    g, w = key(got), key(want)
    assert [c for c, _, _ in g] == [c for c, _, _ in w]
    for (_, cg, bg), (_, cw, bw) in zip(g, w):
        assert abs(cg - cw) <= 1e-4
        assert box_iou(np.array(bg), np.array(bw)) >= 0.99


@pytest.mark.parametrize("model", ["yolov3-tiny", "yolov4-tiny"])
def test_real_weights_same_detections(engine, tmp_path, model):
    from pydarknet.export.runtime import OnnxDetector
    from pydarknet.hub import models

    fetch_or_skip(f"{model}.weights")
    net = models.load(model)
    kind = net.desc.layers[net.yolo_layers[-1]].options["nms_kind"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.export(tmp_path / "nms.onnx", outputs="nms")
    # ONNX NonMaxSuppression is IoU NMS: an export of a DIoU-NMS cfg says so.
    assert any("NonMaxSuppression" in str(w.message) for w in caught) == (kind != "default")
    net.export(tmp_path / "decoded.onnx", outputs="decoded")
    in_graph = OnnxDetector(tmp_path / "nms.onnx")
    decoded = OnnxDetector(tmp_path / "decoded.onnx", nms_kind=kind)
    found = 0
    for photo in PHOTOS:
        path = fetch_or_skip(photo)
        want = net.detect(path)
        found += len(want)
        assert_same_detections(decoded(path), want)
        assert_same_detections(in_graph(path), net.detect(path, nms_kind="default"))
    assert found >= 5  # the photos do hold objects: the comparison is not between empty lists


def test_cli_export(engine, tmp_path, capsys):
    import onnx

    from pydarknet.cli.main import main

    out = tmp_path / "tiny.onnx"
    cfg = str(ROOT / "cfg" / "yolov3-tiny.cfg")
    rc = main(
        [
            "export",
            cfg,
            "-o",
            str(out),
            "--width",
            "96",
            "--height",
            "64",
            "--outputs",
            "decoded",
            "--dynamic-batch",
            "--opset",
            "13",
            "--verify",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "input images (N, 3, 64, 96), outputs decoded" in printed and "checked with onnx.checker" in printed
    diff = float(printed.split("max abs difference to net.forward ")[1].split()[0])
    assert diff <= TOL
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 13 and [o.name for o in model.graph.output] == ["boxes", "scores"]
    assert main(["export", str(tmp_path / "missing.cfg")]) == 2
    assert "missing.cfg: no such file" in capsys.readouterr().err
    assert main(["export", cfg, "-o", str(out), "--opset", "9"]) == 2
    assert "opset 9 is not supported; use 13 to 21" in capsys.readouterr().err
