"""Test-time augmentation: each pass's boxes map back to the original image (a stand-in network that reports
exactly where a bright square is, then the real yolov4-tiny on composed photos), mirrored passes on a mirror-
symmetric image, the merge before NMS, and the option through the API and the command line."""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import numpy as np
import pytest

import pydarknet
from pydarknet.evaluation.metrics import box_iou
from pydarknet.hub import assets
from pydarknet.inference.detect import TTA_PASSES, Detector

detect_mod = importlib.import_module("pydarknet.inference.detect")


# ----- a stand-in network: finds the bright square in its input and reports it as one yolo detection ----------
class SquareFinder:
    """Quacks like a pydarknet Network with one [yolo] head (1 anchor of 1x1 pixels, 1 class, stride 32); its
    output puts objectness 1 in the cell holding the centre of the pixels brighter than 0.75, with that box."""

    def __init__(self, width, height, letter_box=0):
        opts = dict(classes=1, mask=[0], anchors=[1.0, 1.0], new_coords=0, nms_kind="default", beta_nms=0.6)
        self.input_shape = (3, height, width)
        self.yolo_layers = [0]
        self.desc = SimpleNamespace(
            layers=[SimpleNamespace(options=opts, out_shape=(6, height // 32, width // 32))],
            net=dict(letter_box=letter_box),
            path="<square finder>",
        )
        self.seen_sizes = []

    def forward(self, x):
        n, _, h, w = x.shape
        self.seen_sizes.append((w, h))
        out = np.zeros((n, 6, h // 32, w // 32), np.float32)
        for b in range(n):
            ys, xs = np.nonzero(x[b].min(axis=0) > 0.75)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            col, row = int(cx // 32), int(cy // 32)
            out[b, :, row, col] = [cx / 32 - col, cy / 32 - row, math.log(x2 - x1), math.log(y2 - y1), 1.0, 1.0]
        return [out]

    def resized(self, width, height):
        return pydarknet.Network.resized(self, width, height)  # refuses: not built from a cfg file


def _square_image(w, h, box):
    img = np.full((h, w, 3), 60, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


@pytest.mark.parametrize("letterbox", [False, True], ids=["stretch", "letterbox"])
@pytest.mark.parametrize("scale, flip", [(1.0, False), (1.0, True), (0.83, True), (0.67, False), (0.5, True)])
def test_each_pass_maps_boxes_back(monkeypatch, letterbox, scale, flip):
    base = SquareFinder(416, 416)
    built = {}

    def at_size(net, width, height):
        return net if (width, height) == (416, 416) else built.setdefault((width, height), SquareFinder(width, height))

    monkeypatch.setattr(detect_mod, "network_at_size", at_size)
    box = (700, 150, 900, 300)  # well off the centre: a missed un-mirroring shows
    image = _square_image(1000, 600, box)
    det = Detector(base, thresh=0.5, nms=0.45, names=["square"], letterbox=letterbox, batch=1, tta=[(scale, flip)])
    res = det(image)
    assert len(res) == 1
    p = det.passes[0]
    if scale != 1.0:
        assert (p.content_w, p.content_h) == (int(416 * scale), int(416 * scale))
        assert (p.input_w % 32, p.input_h % 32) == (0, 0) and list(built) == [(p.input_w, p.input_h)]
        assert built[(p.input_w, p.input_h)].seen_sizes == [(p.input_w, p.input_h)]
    # the square's edges land within a network-input pixel or two, whatever the pass
    pixel = 1000 / p.content_w
    np.testing.assert_allclose(res.xyxy[0], box, atol=2.5 * pixel)


def test_passes_are_merged_before_nms(monkeypatch):
    monkeypatch.setattr(
        detect_mod, "network_at_size", lambda net, w, h: net if (w, h) == (416, 416) else SquareFinder(w, h)
    )
    image = _square_image(640, 480, (40, 300, 200, 420))
    det = Detector(SquareFinder(416, 416), thresh=0.5, nms=0.45, names=["square"], batch=2, tta=True)
    assert det.tta == [(1.0, False), (0.83, True), (0.67, False)] == [tuple(p) for p in TTA_PASSES]
    prepared = det.prepare(image)
    parts = [
        det.pass_candidates([o[0] for o in det._pass_network(p).forward(x[None])], p, 640, 480)
        for p, x in zip(det.passes, prepared.tta_tensors)
    ]
    assert [len(b) for b, _, _ in parts] == [1, 1, 1]
    merged = det([image, image])
    assert [len(r) for r in merged] == [1, 1]  # three candidates, one object after NMS
    without_nms = Detector(SquareFinder(416, 416), thresh=0.5, nms=0, names=["square"], tta=True)(image)
    assert len(without_nms) == 3


def test_tta_option_errors():
    net = SquareFinder(416, 416)
    for bad in ([(0, False)], [(-1, True)], [("x", False)], [1.0], [(float("nan"), True)]):
        with pytest.raises(ValueError, match="tta"):
            Detector(net, names=["square"], tta=bad)
    with pytest.raises(pydarknet.DarknetError, match="not loaded from a file"):
        Detector(net, names=["square"], tta=True)


def test_pass_networks_keep_the_precision(tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(
        "[net]\nwidth=64\nheight=64\nchannels=3\n\n"
        "[convolutional]\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
    )
    net = pydarknet.load(str(cfg), precision="bf16", seed=1)
    other = detect_mod.network_at_size(net, 96, 96)
    assert other.input_shape == (3, 96, 96) and (other.device, other.precision) == ("cpu", "bf16")
    np.testing.assert_array_equal(other.params, net.params)


# ----- the real yolov4-tiny -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    try:
        return pydarknet.models.load("yolov4-tiny")
    except Exception as e:
        pytest.skip(f"cannot fetch the yolov4-tiny weights: {e}")


def _photo(name):
    from PIL import Image

    try:
        return np.asarray(Image.open(assets.fetch(name)).convert("RGB"))
    except Exception as e:
        pytest.skip(f"cannot fetch {name}: {e}")


def _same_detections(a, b, conf_tol=2e-3, iou_min=0.99, thresh=0.25):
    """Every detection of one has a partner of the same class in the other (box IoU, confidence); one may lack
    a partner only when its confidence is at the threshold's edge."""
    for x, y in ((a, b), (b, a)):
        ious = box_iou(x.xyxy, y.xyxy) if len(y) else np.zeros((len(x), 0))
        for i in range(len(x)):
            ok = [
                j
                for j in range(len(y))
                if y.class_id[j] == x.class_id[i]
                and ious[i, j] >= iou_min
                and abs(float(y.conf[j]) - float(x.conf[i])) <= conf_tol
            ]
            assert ok or float(x.conf[i]) < thresh + conf_tol, (
                f"{x.names[x.class_id[i]]} {x.conf[i]:.3f} {x.xyxy[i]} has no partner"
            )


def test_real_weights_passes_find_a_placed_object(net):
    """A cat photo pasted off-centre on a grey canvas: every pass alone finds it where it was pasted."""
    cat = _photo("chelsea.png")  # 451 x 300
    canvas = np.full((720, 1000, 3), 128, np.uint8)
    x0, y0 = 500, 330
    canvas[y0 : y0 + cat.shape[0], x0 : x0 + cat.shape[1]] = cat
    pasted = np.array([[x0, y0, x0 + cat.shape[1], y0 + cat.shape[0]]], float)
    boxes = {}
    for scale, flip in [(1.0, False), (1.0, True), (0.83, True), (0.67, False)]:
        res = net.detect(canvas, tta=[(scale, flip)])
        cats = [d for d in res if d.name == "cat"]
        assert cats, f"pass {scale}, flip {flip}: no cat found"
        boxes[(scale, flip)] = np.array([cats[0].xyxy])
        assert box_iou(boxes[(scale, flip)], pasted)[0, 0] > 0.75, (scale, flip, cats[0].xyxy)
    for key, b in boxes.items():
        assert box_iou(b, boxes[(1.0, False)])[0, 0] > 0.85, key
    plain = net.detect(canvas)
    np.testing.assert_allclose(boxes[(1.0, False)], plain.xyxy[:1], atol=1e-3)
    merged = net.detect(canvas, tta=True)
    top = [d for d in merged if d.name == "cat"]
    assert len(top) == 1 and box_iou(np.array([top[0].xyxy]), pasted)[0, 0] > 0.75


def _mirrored(res):
    """The same detections mirrored left-right in their image."""
    b = res.xywhn
    b[:, 0] = 1.0 - b[:, 0]
    return pydarknet.Results(b, res.conf, res.class_id, names=res.names, image_size=res.image_size)


@pytest.mark.parametrize("letterbox", [False, True], ids=["stretch", "letterbox"])
def test_real_weights_mirror_symmetric_image(net, letterbox):
    """An image equal to its own mirror gives the mirrored pass the very input of the plain pass, so un-mirrored
    boxes must come out as the plain pass's boxes mirrored; passes closed under mirroring give a symmetric result."""
    half = _photo("bus.jpg")[::2, ::2]  # 405 x 540
    gap = np.full((half.shape[0], 90, 3), 128, np.uint8)
    image = np.concatenate([half, gap, half[:, ::-1]], axis=1)
    assert np.array_equal(image, image[:, ::-1])
    for scale in (1.0, 0.83):
        plain = net.detect(image, letterbox=letterbox, tta=[(scale, False)])
        mirrored = net.detect(image, letterbox=letterbox, tta=[(scale, True)])
        assert len(plain) >= 4
        _same_detections(_mirrored(plain), mirrored)
        # the scene itself is not symmetric in what the network sees (it is not mirror-equivariant): the
        # un-mirroring, not a coincidence, is what makes the two agree
        assert not np.allclose(np.sort(plain.xyxy[:, 0]), np.sort(mirrored.xyxy[:, 0]), atol=1.0)
    both = net.detect(image, letterbox=letterbox, tta=[(1.0, False), (1.0, True)])
    _same_detections(both, _mirrored(both))


def test_real_weights_default_tta_keeps_the_clear_objects(net):
    path = assets.fetch("bus.jpg")
    plain = net.detect(path)
    tta = net.detect(path, tta=True)
    for d in plain:
        if d.conf > 0.5:
            partners = [
                e
                for e in tta
                if e.class_id == d.class_id and box_iou(np.array([e.xyxy]), np.array([d.xyxy]))[0, 0] > 0.5
            ]
            assert partners, f"{d.name} {d.conf:.2f} lost by TTA"


def test_cli_detect_tta(net, tmp_path, capsys):
    import json

    from pydarknet.cli.main import main

    path = assets.fetch("bus.jpg")
    out = tmp_path / "tta.json"
    assert main(["detect", str(path), "--tta", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Predicted in" in text and "person:" in text
    names = [o["name"] for o in json.loads(out.read_text())[0]["objects"]]
    assert "bus" in names and names.count("person") >= 3
