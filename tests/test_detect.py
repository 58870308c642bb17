"""Detection: pre-processing, decoding, thresholds, NMS and letterbox correction as Darknet computes them, and
real photos with the real yolov4-tiny / yolov3-tiny weights against OpenCV's Darknet importer.

The OpenCV comparison feeds OpenCV exactly the network input pydarknet prepared (same pre-processing), takes
OpenCV's decoded [yolo] rows and runs them through a literal, loop-by-loop port of Darknet's
``get_yolo_detections`` thresholds, ``correct_yolo_boxes`` and ``do_nms_sort``/``diounms_sort`` written
here. pydarknet's detections must be the same objects: same classes, box IoU >= 0.95 pairwise, confidence
within 0.02. A detection may be missing on one side only when its confidence is within 0.02 of the
threshold (the two engines legitimately differ by that much; OpenCV uses batch-norm epsilon 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pydarknet
from pydarknet.data.images import letterbox_size, load_image, preprocess, resize_image, to_planar
from pydarknet.hub import assets, models
from pydarknet.inference.detect import Detector, box_metric, correct_boxes, nms, uncorrect_boxes

PHOTOS = ["bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]
IOU_MIN = 0.95
CONF_TOL = 0.02
THRESH = 0.25
NMS = 0.45
F32 = np.float32


# ----- scalar references (ports of Darknet's C, written loop by loop) ------------------------------------------
def darknet_resize_ref(im, w, h):
    """image.c resize_image, scalar, float32 arithmetic."""
    c, H, W = im.shape
    if (W, H) == (w, h):
        return im.copy()
    part = np.zeros((c, H, w), F32)
    w_scale = F32(W - 1) / F32(w - 1) if w > 1 else F32(0)
    h_scale = F32(H - 1) / F32(h - 1) if h > 1 else F32(0)
    for k in range(c):
        for r in range(H):
            for col in range(w):
                if col == w - 1 or W == 1:
                    val = im[k, r, W - 1]
                else:
                    sx = F32(col) * w_scale
                    ix = int(sx)
                    dx = sx - F32(ix)
                    val = (F32(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, col] = val
    out = np.zeros((c, h, w), F32)
    for k in range(c):
        for r in range(h):
            sy = F32(r) * h_scale
            iy = int(sy)
            dy = sy - F32(iy)
            for col in range(w):
                out[k, r, col] = (F32(1) - dy) * part[k, iy, col]
            if r == h - 1 or H == 1:
                continue
            for col in range(w):
                out[k, r, col] += dy * part[k, iy + 1, col]
    return out


def c_box_iou(a, b):
    def overlap(x1, w1, x2, w2):
        left = max(x1 - w1 / 2, x2 - w2 / 2)
        right = min(x1 + w1 / 2, x2 + w2 / 2)
        return right - left

    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if (w < 0 or h < 0) else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    if inter == 0 or union == 0:
        return 0.0
    return inter / union


def c_box_diou(a, b, beta):
    top = min(a[1] - a[3] / 2, b[1] - b[3] / 2)
    bot = max(a[1] + a[3] / 2, b[1] + b[3] / 2)
    left = min(a[0] - a[2] / 2, b[0] - b[2] / 2)
    right = max(a[0] + a[2] / 2, b[0] + b[2] / 2)
    c = (right - left) ** 2 + (bot - top) ** 2
    iou = c_box_iou(a, b)
    if c == 0:
        return iou
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    return iou - (d / c) ** beta


def reference_detections(rows, img_w, img_h, net_w, net_h, letterbox, thresh, nms_thresh, nms_kind, beta):
    """Darknet's post-processing, literally, on OpenCV's [yolo] rows (x, y, w, h, obj, obj*cls...)."""
    dets = []
    for row in rows:
        obj = float(row[4])
        if not obj > thresh:
            continue
        probs = [p if p > thresh else 0.0 for p in (float(v) for v in row[5:])]
        dets.append({"box": [float(v) for v in row[:4]], "obj": obj, "prob": probs})
    if letterbox:
        if net_w / img_w < net_h / img_h:
            new_w, new_h = net_w, (img_h * net_w) // img_w
        else:
            new_w, new_h = (img_w * net_h) // img_h, net_h
    else:
        new_w, new_h = net_w, net_h
    for d in dets:
        x, y, w, h = d["box"]
        d["box"] = [
            (x - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w),
            (y - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h),
            w * net_w / new_w,
            h * net_h / new_h,
        ]
    classes = len(dets[0]["prob"]) if dets else 0
    for k in range(classes):
        if not any(d["prob"][k] > 0 for d in dets):
            continue
        dets.sort(key=lambda d: -d["prob"][k])
        for i in range(len(dets)):
            if dets[i]["prob"][k] == 0:
                continue
            a = dets[i]["box"]
            for j in range(i + 1, len(dets)):
                b = dets[j]["box"]
                if nms_kind in ("default", "cornersnms"):
                    m = c_box_iou(a, b)
                else:
                    m = c_box_diou(a, b, 0.6 if nms_kind == "greedynms" else beta)
                if m > nms_thresh:
                    dets[j]["prob"][k] = 0.0
    out = []
    for d in dets:
        x, y, w, h = d["box"]
        xyxy = ((x - w / 2) * img_w, (y - h / 2) * img_h, (x + w / 2) * img_w, (y + h / 2) * img_h)
        for k, p in enumerate(d["prob"]):
            if p > 0:
                out.append((k, p, xyxy))
    return out


def iou_xyxy(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match_detections(ours, ref, thresh):
    """Pair detections (same class, best IoU first); returns (pairs, unmatched_ours, unmatched_ref)."""
    cands = []
    for i, (c1, p1, b1) in enumerate(ours):
        for j, (c2, p2, b2) in enumerate(ref):
            if c1 == c2:
                cands.append((iou_xyxy(b1, b2), -abs(p1 - p2), i, j))
    cands.sort(reverse=True)
    used_i, used_j, pairs = set(), set(), []
    for iou, _, i, j in cands:
        if i in used_i or j in used_j or iou < 0.5:
            continue
        used_i.add(i)
        used_j.add(j)
        pairs.append((i, j, iou, abs(ours[i][1] - ref[j][1])))
    return (
        pairs,
        [ours[i] for i in range(len(ours)) if i not in used_i],
        [ref[j] for j in range(len(ref)) if j not in used_j],
    )


# ----- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos():
    return {name: assets.fetch(name) for name in PHOTOS}


_NETS = {}


def real_net(name):
    if name not in _NETS:
        _NETS[name] = models.load(name)
    return _NETS[name]


TINY_CFG = """
[net]
width={w}
height={h}
channels=3
{extra_net}

[maxpool]
size=8
stride=8

[convolutional]
filters={filters}
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 32,32
classes=2
num=3
{extra_yolo}
"""


def tiny_net(tmp_path, w=64, h=32, extra_net="", extra_yolo=""):
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_CFG.format(w=w, h=h, filters=3 * 7, extra_net=extra_net, extra_yolo=extra_yolo))
    return pydarknet.load(path, seed=0)


# ----- pre-processing ------------------------------------------------------------------------------------------
def test_to_planar_is_value_over_255():
    rgb = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :, None].repeat(3, axis=2)
    rgb[..., 1] = 255 - rgb[..., 0]
    planar = to_planar(rgb)
    assert planar.shape == (3, 16, 16) and planar.dtype == np.float32
    expect = np.array([np.float32(v / 255.0) for v in range(256)], np.float32).reshape(16, 16)
    np.testing.assert_array_equal(planar[0], expect)
    np.testing.assert_array_equal(planar[1], expect[::-1, ::-1])


@pytest.mark.parametrize(
    "src,dst",
    [
        ((13, 9), (5, 7)),
        ((4, 3), (11, 8)),
        ((7, 7), (7, 7)),
        ((1, 5), (4, 3)),
        ((6, 1), (3, 4)),
        ((31, 17), (16, 16)),
        ((10, 6), (416, 2)),
    ],
)
def test_resize_matches_darknet_resize_image(src, dst):
    rng = np.random.default_rng(sum(src) * 100 + sum(dst))
    im = rng.random((3, src[1], src[0]), dtype=np.float32)
    ours = resize_image(im, *dst)
    ref = darknet_resize_ref(im, *dst)
    assert ours.shape == (3, dst[1], dst[0])
    np.testing.assert_array_equal(ours, ref)


def test_resize_real_photo_against_reference_rows(photos):
    rgb, _ = load_image(photos["chelsea.png"])
    planar = to_planar(rgb)
    ours = resize_image(planar, 416, 416)
    # the scalar port is slow on a whole photo: check its formula at chosen rows and columns (first, last, inner)
    c, H, W = planar.shape
    w_scale, h_scale = F32(W - 1) / F32(415), F32(H - 1) / F32(415)
    for r in (0, 1, 200, 414, 415):
        sy = F32(r) * h_scale
        iy, dy = int(sy), sy - F32(int(sy))
        for col in (0, 3, 207, 414, 415):

            def part(row):
                if col == 415:
                    return planar[:, row, W - 1]
                sx = F32(col) * w_scale
                ix, dx = int(sx), sx - F32(int(sx))
                return (F32(1) - dx) * planar[:, row, ix] + dx * planar[:, row, ix + 1]

            val = (F32(1) - dy) * part(iy)
            if r != 415:
                val = val + dy * part(iy + 1)
            np.testing.assert_array_equal(ours[:, r, col], val.astype(np.float32))


@pytest.mark.parametrize("size", [(810, 1080), (1280, 720), (451, 300), (416, 416), (100, 1000), (1000, 3)])
def test_letterbox_layout(size):
    W, H = size
    rng = np.random.default_rng(W + H)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    new_w, new_h = letterbox_size(W, H, 416, 416)
    if 416 / W < 416 / H:
        assert (new_w, new_h) == (416, max(1, H * 416 // W))
    else:
        assert (new_w, new_h) == (max(1, W * 416 // H), 416)
    boxed = preprocess(rgb, 416, 416, letterbox=True)
    assert boxed.shape == (3, 416, 416)
    dx, dy = (416 - new_w) // 2, (416 - new_h) // 2
    inner = boxed[:, dy : dy + new_h, dx : dx + new_w]
    np.testing.assert_array_equal(inner, resize_image(to_planar(rgb), new_w, new_h))
    mask = np.ones((416, 416), bool)
    mask[dy : dy + new_h, dx : dx + new_w] = False
    assert np.all(boxed[:, mask] == np.float32(0.5))


def test_stretch_is_plain_resize(photos):
    rgb, _ = load_image(photos["coffee.png"])
    np.testing.assert_array_equal(preprocess(rgb, 320, 256), resize_image(to_planar(rgb), 320, 256))


def test_load_image_sources(tmp_path, photos):
    from PIL import Image

    arr, path = load_image(photos["coffee.png"])
    assert arr.shape == (400, 600, 3) and arr.dtype == np.uint8 and path == str(photos["coffee.png"])
    pil = Image.open(photos["coffee.png"])
    np.testing.assert_array_equal(load_image(pil)[0], arr)
    np.testing.assert_array_equal(load_image(arr)[0], arr)
    grey = arr[:, :, 0].copy()
    np.testing.assert_array_equal(load_image(grey)[0], np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(rgba)[0], arr)
    # PNG with alpha and a palette image decode to RGB
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png")[0], arr)
    Image.fromarray(arr).convert("P").save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png")[0].shape == (400, 600, 3)
    with pytest.raises(ValueError, match="uint8"):
        load_image(arr.astype(np.float32))
    with pytest.raises(TypeError):
        load_image(12)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(pydarknet.ImageError, match="bad.jpg: cannot read image"):
        load_image(bad)
    good = assets.fetch("bus.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(pydarknet.ImageError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    assert isinstance(pydarknet.ImageError("x"), pydarknet.DarknetError)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white band on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    rgb, _ = load_image(tmp_path / "rot.jpg")
    assert rgb.shape == (40, 20, 3)  # displayed upright, as cv::imread gives it
    assert rgb[:10].mean() > 200 and rgb[-10:].mean() < 50


# ----- decoding and thresholds ---------------------------------------------------------------------------------
def _empty_out(classes=2, anchors=3, h=4, w=8):
    return np.zeros((anchors * (5 + classes), h, w), np.float32)


def _put(out, anchor, row, col, x, y, tw, th, obj, cls, classes=2):
    base = anchor * (5 + classes)
    out[base + 0, row, col] = x
    out[base + 1, row, col] = y
    out[base + 2, row, col] = tw
    out[base + 3, row, col] = th
    out[base + 4, row, col] = obj
    for k, v in enumerate(cls):
        out[base + 5 + k, row, col] = v


def test_decode_box_formula(tmp_path):
    net = tiny_net(tmp_path)  # 64x32 input, 8x4 grid, anchors 8,16,32 px
    det = Detector(net, names=["a", "b"], nms=0)
    out = _empty_out()
    _put(out, 1, 1, 3, 0.5, 0.25, math.log(2.0), 0.0, 0.9, [0.8, 0.1])
    res = det.postprocess([out], None, image_size=(640, 320))
    assert len(res) == 1 and res.labels == ["a"]
    np.testing.assert_allclose(res.conf, [np.float32(0.9) * np.float32(0.8)], rtol=1e-7)
    # x = (col + x)/lw, y = (row + y)/lh, w = exp(tw)*anchor_w/net_w, h = exp(th)*anchor_h/net_h
    np.testing.assert_allclose(res.xywhn[0], [3.5 / 8, 1.25 / 4, 2 * 16 / 64, 16 / 32], rtol=1e-6)
    np.testing.assert_allclose(res.xywh[0], [3.5 / 8 * 640, 1.25 / 4 * 320, 0.5 * 640, 0.5 * 320], rtol=1e-6)
    np.testing.assert_allclose(res.xyxy[0], [280 - 160, 100 - 80, 280 + 160, 100 + 80], rtol=1e-6)


def test_decode_new_coords(tmp_path):
    net = tiny_net(tmp_path, extra_yolo="new_coords=1\nscale_x_y=2.0")
    det = Detector(net, names=["a", "b"], nms=0)
    out = _empty_out()
    _put(out, 2, 0, 0, 0.25, 0.75, 0.5, 0.25, 0.6, [0.0, 0.9])
    res = det.postprocess([out], None, image_size=(64, 32))
    # new_coords: w = tw^2 * 4 * anchor / net (x, y already transformed in the layer)
    np.testing.assert_allclose(res.xywhn[0], [0.25 / 8, 0.75 / 4, 0.25 * 4 * 32 / 64, 0.0625 * 4 * 32 / 32], rtol=1e-6)
    assert res.labels == ["b"]


def test_thresholds_are_strict_and_per_class(tmp_path):
    net = tiny_net(tmp_path)
    det = Detector(net, names=["a", "b"], thresh=0.5, nms=0)
    out = _empty_out()
    _put(out, 0, 0, 0, 0.5, 0.5, 0, 0, 0.5, [1.0, 1.0])  # objectness == thresh: not a candidate
    _put(out, 0, 0, 1, 0.5, 0.5, 0, 0, 0.75, [0.5, 1.0])  # 0.375 for a (dropped), 0.75 for b (kept)
    _put(out, 1, 2, 2, 0.5, 0.5, 0, 0, 0.625, [0.8, 0.8])  # 0.5 exactly for both: dropped
    _put(out, 2, 3, 7, 0.5, 0.5, 0, 0, 1.0, [0.75, 0.625])  # both classes kept: two rows, one box
    res = det.postprocess([out], None, image_size=(64, 32))
    got = sorted(zip(res.labels, np.round(res.conf, 6).tolist(), res.box_index.tolist()))
    assert got == [("a", 0.75, 0), ("b", 0.625, 0), ("b", 0.75, 1)] or got == [
        ("a", 0.75, 1),
        ("b", 0.625, 1),
        ("b", 0.75, 0),
    ]
    # the two rows of the two-class box share a box index and a box
    two = [i for i in range(len(res)) if res.xywhn[i][0] > 0.5]
    assert len(two) == 2 and res.box_index[two[0]] == res.box_index[two[1]]


def test_nan_objectness_is_not_a_detection(tmp_path):
    net = tiny_net(tmp_path)
    out = _empty_out()
    _put(out, 0, 0, 0, 0.5, 0.5, 0, 0, np.nan, [1.0, 1.0])
    assert len(Detector(net, names=["a", "b"]).postprocess([out], None, image_size=(64, 32))) == 0


def test_detector_options(tmp_path):
    net = tiny_net(tmp_path, extra_yolo="nms_kind=diounms\nbeta_nms=0.8")
    det = Detector(net, names=["a", "b"])
    assert (det.nms_kind, det.beta_nms, det.letterbox) == ("diounms", 0.8, False)
    assert Detector(net, names=["a", "b"], nms_kind="default").nms_kind == "default"
    lb = tiny_net(tmp_path, extra_net="letter_box=1")
    assert Detector(lb, names=["a", "b"]).letterbox is True
    assert Detector(lb, names=["a", "b"], letterbox=False).letterbox is False
    assert Detector(net).names == ["0", "1"]
    with pytest.raises(ValueError, match="names"):
        Detector(net, names=["only one"])
    with pytest.raises(ValueError, match="thresh"):
        Detector(net, names=["a", "b"], thresh=2)
    with pytest.raises(ValueError, match="nms_kind"):
        Detector(net, names=["a", "b"], nms_kind="soft")
    assert Detector(real_net("yolov4-tiny")).nms_kind == "greedynms"
    assert Detector(real_net("yolov3-tiny")).nms_kind == "default"
    assert Detector(real_net("yolov4-tiny")).names[:3] == ["person", "bicycle", "car"]


# ----- NMS ----------------------------------------------------------------------------------------------------
def test_box_metric_matches_box_c():
    rng = np.random.default_rng(3)
    a = np.array([0.5, 0.5, 0.3, 0.4])
    bs = np.concatenate([rng.random((200, 2)), rng.random((200, 2)) * 0.5 + 0.01], axis=1)
    bs[0] = a
    bs[1] = [0.9, 0.9, 0.05, 0.05]  # disjoint
    bs[2] = [0.5 + 0.15 + 0.1, 0.5, 0.2, 0.4]  # touching edges: IoU 0
    for kind, beta in (("default", 0.6), ("greedynms", 0.6), ("diounms", 0.6), ("diounms", 1.3)):
        m = box_metric(a, bs, kind, beta)
        for b, v in zip(bs, m):
            ref = c_box_iou(a, b) if kind == "default" else c_box_diou(a, b, 0.6 if kind == "greedynms" else beta)
            assert v == pytest.approx(ref, abs=1e-12)


def test_nms_default_iou():
    boxes = np.array(
        [
            [0.5, 0.5, 0.4, 0.4],  # 0: best
            [0.6, 0.5, 0.4, 0.4],  # 1: IoU 0.6 with 0 -> suppressed
            [0.75, 0.5, 0.4, 0.4],  # 2: IoU 0.23 with 0, 0.6 with 1 (suppressed, cannot suppress)
            [0.5, 0.5, 0.4, 0.4],
        ]
    )  # 3: identical to 0 but another class
    probs = np.array([[0.9, 0], [0.8, 0], [0.7, 0], [0, 0.95]], np.float32)
    out = nms(boxes, probs, 0.45)
    np.testing.assert_array_equal(out, np.array([[0.9, 0], [0, 0], [0.7, 0], [0, 0.95]], F32))
    # not above the threshold: kept (suppression needs IoU > nms)
    np.testing.assert_array_equal(nms(boxes[:2], probs[:2], 0.6), probs[:2])
    assert c_box_iou(boxes[0], boxes[1]) == pytest.approx(0.6)
    # NMS disabled
    np.testing.assert_array_equal(nms(boxes, probs, 0), probs)


def test_nms_sorts_by_probability_per_class():
    boxes = np.array([[0.5, 0.5, 0.4, 0.4], [0.55, 0.5, 0.4, 0.4]])
    probs = np.array([[0.3, 0.9], [0.8, 0.4]], np.float32)  # each box wins one class
    np.testing.assert_array_equal(nms(boxes, probs, 0.45), np.array([[0, 0.9], [0.8, 0]], F32))


def test_greedynms_and_diounms_differ_from_iou():
    # IoU 0.6, centre distance 0.1, enclosing diagonal^2 0.41: DIoU(0.6) = 0.6 - (0.01/0.41)^0.6 = 0.492,
    # DIoU with beta 1 = 0.6 - 0.0244 = 0.576.
    boxes = np.array([[0.5, 0.5, 0.4, 0.4], [0.6, 0.5, 0.4, 0.4]])
    probs = np.array([[0.9], [0.8]], np.float32)
    assert box_metric(boxes[0], boxes[1:], "greedynms")[0] == pytest.approx(0.6 - (0.01 / 0.41) ** 0.6)
    suppressed = np.array([[0.9], [0.0]], np.float32)
    np.testing.assert_array_equal(nms(boxes, probs, 0.5, "default"), suppressed)
    np.testing.assert_array_equal(nms(boxes, probs, 0.5, "greedynms"), probs)  # 0.492 <= 0.5: kept
    np.testing.assert_array_equal(nms(boxes, probs, 0.5, "diounms", beta=0.6), probs)  # same rule as greedy
    np.testing.assert_array_equal(nms(boxes, probs, 0.5, "diounms", beta=1.0), suppressed)
    # greedynms ignores beta_nms (its exponent is hard-coded 0.6 in box_diou)
    np.testing.assert_array_equal(nms(boxes, probs, 0.5, "greedynms", beta=1.0), probs)
    with pytest.raises(ValueError):
        nms(boxes, probs, 0.5, "soft")


def test_nms_kind_from_cfg_is_used(tmp_path):
    # two candidates of one cell (two anchors) decoding to (0.5, 0.5, 0.4, 0.4) and (0.6, 0.5, 0.4, 0.4):
    # IoU 0.6 > 0.5 but DIoU 0.492 <= 0.5
    out2 = _empty_out()
    _put(out2, 2, 2, 4, 0.0, 0.0, math.log(0.4 * 64 / 32), math.log(0.4 * 32 / 32), 1.0, [0.9, 0])
    _put(out2, 1, 2, 4, 0.8, 0.0, math.log(0.4 * 64 / 16), math.log(0.4 * 32 / 16), 1.0, [0.8, 0])
    kept = {}
    for kind in ("default", "greedynms"):
        net = tiny_net(tmp_path, extra_yolo=f"nms_kind={kind}")
        kept[kind] = len(Detector(net, names=["a", "b"], nms=0.5).postprocess([out2], None, image_size=(64, 32)))
    assert kept == {"default": 1, "greedynms": 2}


# ----- letterbox correction ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(810, 1080), (1280, 720), (451, 300), (500, 500), (333, 1001)])
@pytest.mark.parametrize("net_size", [(416, 416), (512, 320)])
def test_letterbox_correction_round_trip(size, net_size):
    rng = np.random.default_rng(size[0] * 7 + net_size[1])
    boxes = np.concatenate([rng.random((50, 2)), rng.random((50, 2)) * 0.5 + 0.01], axis=1)
    in_net = uncorrect_boxes(boxes, *size, *net_size)
    back = correct_boxes(in_net, *size, *net_size, letterbox=True)
    np.testing.assert_allclose(back, boxes, atol=2e-6)
    # the letterboxed content area maps to the whole image
    new_w, new_h = letterbox_size(*size, *net_size)
    nw, nh = net_size
    content = [[((nw - new_w) // 2 + new_w / 2) / nw, ((nh - new_h) // 2 + new_h / 2) / nh, new_w / nw, new_h / nh]]
    full = correct_boxes(content, *size, *net_size, letterbox=True)[0]
    # Darknet centres with (net-new)/2 as a float, the image is placed at the integer (net-new)//2
    assert full[2] == pytest.approx(1.0, abs=1e-6) and full[3] == pytest.approx(1.0, abs=1e-6)
    assert abs(full[0] - 0.5) <= 0.5 / new_w + 1e-6 and abs(full[1] - 0.5) <= 0.5 / new_h + 1e-6
    # stretch: identity
    np.testing.assert_array_equal(correct_boxes(boxes, *size, *net_size, letterbox=False), boxes.astype(F32))


@pytest.mark.parametrize("size", [(300, 200), (200, 300)])
def test_letterbox_pixels_and_correction_agree(size):
    """A bright rectangle in the image, found in the letterboxed network input and corrected back, lands where it
    was in the image (to within the resize's pixel blur)."""
    W, H = size
    rgb = np.zeros((H, W, 3), np.uint8)
    x0, y0, x1, y1 = W // 5, H // 3, W // 2, H * 3 // 4
    rgb[y0:y1, x0:x1] = 255
    boxed = preprocess(rgb, 416, 416, letterbox=True)
    ys, xs = np.nonzero(boxed[0] > 0.75)
    found = [
        (xs.min() + xs.max() + 1) / 2 / 416,
        (ys.min() + ys.max() + 1) / 2 / 416,
        (xs.max() + 1 - xs.min()) / 416,
        (ys.max() + 1 - ys.min()) / 416,
    ]
    got = correct_boxes([found], W, H, 416, 416, letterbox=True)[0] * [W, H, W, H]
    expect = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
    np.testing.assert_allclose(got, expect, atol=2.0)


# ----- the whole pipeline on real photos against OpenCV ---------------------------------------------------------
cv2 = pytest.importorskip("cv2")
HAS_DARKNET_IMPORTER = hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromDarknet")

_CV = {}


def opencv_net(name):
    if name not in _CV:
        m = models.get(name)
        _CV[name] = cv2.dnn.readNetFromDarknet(str(models.find_data_file(m.cfg)), str(models.fetch(m)))
    return _CV[name]


@pytest.mark.skipif(not HAS_DARKNET_IMPORTER, reason="OpenCV without the Darknet importer (use opencv<5)")
@pytest.mark.parametrize("letterbox", [False, True], ids=["stretch", "letterbox"])
@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov3-tiny"])
def test_real_photos_match_opencv(model, letterbox, photos):
    net = real_net(model)
    det = Detector(net, thresh=THRESH, nms=NMS, letterbox=letterbox, batch=len(PHOTOS))
    prepared = [det.prepare(photos[p]) for p in PHOTOS]
    results = det.infer(prepared)  # one batched forward
    cvn = opencv_net(model)
    names = cvn.getUnconnectedOutLayersNames()
    total = 0
    for photo, p, res in zip(PHOTOS, prepared, results):
        cvn.setInput(p.tensor[None])  # the same network input
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in cvn.forward(names)])
        H, W = p.image.shape[:2]
        ref = reference_detections(rows, W, H, det.net_w, det.net_h, letterbox, THRESH, NMS, det.nms_kind, det.beta_nms)
        ours = [(int(c), float(s), tuple(map(float, b))) for c, s, b in zip(res.class_id, res.conf, res.xyxy)]
        pairs, only_ours, only_ref = match_detections(ours, ref, THRESH)
        where = f"{model} {'letterbox' if letterbox else 'stretch'} {photo}"
        for i, j, iou, dconf in pairs:
            assert iou >= IOU_MIN, f"{where}: {res.names[ours[i][0]]} box IoU {iou:.4f} with OpenCV's"
            assert dconf <= CONF_TOL, f"{where}: {res.names[ours[i][0]]} confidence {ours[i][1]:.4f} vs {ref[j][1]:.4f}"
        for c, s, _ in only_ours + only_ref:
            assert s < THRESH + CONF_TOL, f"{where}: {res.names[c]} {s:.3f} found by only one of pydarknet/OpenCV"
        assert sorted({c for c, s, _ in ours if s >= THRESH + CONF_TOL}) == sorted(
            {c for c, s, _ in ref if s >= THRESH + CONF_TOL}
        ), where
        assert res.image_size == (W, H) and res.path == str(photos[photo])
        total += len(pairs)
    assert total >= 5  # the photos hold real objects for both models


def test_known_objects_in_photos(photos):
    net = real_net("yolov4-tiny")
    bus, zidane, coffee, cat = net.detect(
        [photos[p] for p in ("bus.jpg", "zidane.jpg", "coffee.png", "chelsea.png")], letterbox=True
    )
    assert bus.counts().get("person", 0) >= 3 and "bus" in bus.labels
    assert "person" in zidane.labels and "tie" in zidane.labels
    assert coffee.labels[0] == "cup"
    assert cat.labels[0] == "cat"
    for r in (bus, zidane, coffee, cat):
        assert set(r.speed) == {"preprocess", "inference", "postprocess"}
        assert r.speed["inference"] > 0 and r.speed["preprocess"] > 0 and r.timings == r.speed


def test_detect_inputs_agree(photos):
    from PIL import Image

    net = real_net("yolov4-tiny")
    path = photos["coffee.png"]
    r_path = net.detect(path)
    assert isinstance(r_path, pydarknet.Results)
    r_arr = net.detect(np.asarray(Image.open(path).convert("RGB")))
    r_pil, r_str = net.detect([Image.open(path), str(path)], batch=2)
    for r in (r_arr, r_pil, r_str):
        np.testing.assert_array_equal(r.class_id, r_path.class_id)
        np.testing.assert_allclose(r.xyxy, r_path.xyxy, atol=1e-3)
        np.testing.assert_allclose(r.conf, r_path.conf, atol=1e-5)
    assert r_arr.path is None and r_str.path == str(path)
    assert net.detect([]) == []
    # module-level function and a higher threshold
    strict = pydarknet.detect(net, path, thresh=0.7)
    assert len(strict) < len(r_path) and all(strict.conf > 0.7)
