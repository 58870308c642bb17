"""Darknet's [yolo] training loss (pydarknet.yolo_loss) against hand-computed expectations.

Every case is small (a 3x3 grid, 2-3 anchors, 2 classes, a 96x96 network) so the expected deltas can be written
out with plain scalar code here: MSE targets from the truth, class targets with smoothing/focal/multipliers,
the ignore rule from a corner-based IoU. The analytic IoU/GIoU/DIoU/CIoU steps are checked against central
finite differences of the metrics, with Darknet's documented conventions applied explicitly (w/h steps not
halved, the distance term d^2/c^2 whose enclosure derivative enters x/y with a minus sign, the CIoU aspect
term without its 1/(w^2+h^2) factor). Layers come from real cfg text through pydarknet's graph, so the option
names and defaults are the ones a training run reads.
"""

import math

import numpy as np
import pytest

from pydarknet import DarknetError
from pydarknet.core.cfg import parse_cfg_text
from pydarknet.core.graph import build_network
from pydarknet.train.yolo_loss import TruthError, YoloLossConfig, iou_delta, yolo_loss

NET = 96
GRID = 3
CLASSES = 2
ANCHORS = [(12, 12), (30, 24), (60, 70)]


def yolo_layer(mask=(0, 1, 2), classes=CLASSES, anchors=ANCHORS, **keys):
    """The [yolo] layer of a tiny cfg: 96x96 input, a 32x32 maxpool to a 3x3 grid, a 1x1 conv, [yolo]."""
    lines = [f"{k}={v}" for k, v in keys.items()]
    text = "\n".join(
        [
            "[net]",
            f"width={NET}",
            f"height={NET}",
            "channels=3",
            "[maxpool]",
            "size=32",
            "stride=32",
            "[convolutional]",
            f"filters={len(mask) * (5 + classes)}",
            "size=1",
            "stride=1",
            "activation=linear",
            "[yolo]",
            "mask=" + ",".join(str(m) for m in mask),
            "anchors=" + ",".join(f"{w},{h}" for w, h in anchors),
            f"classes={classes}",
            f"num={len(anchors)}",
            *lines,
        ]
    )
    desc = build_network(parse_cfg_text(text))
    layer = desc.layers[-1]
    assert layer.type == "yolo" and layer.out_shape == (len(mask) * (5 + classes), GRID, GRID)
    return layer


def make_out(seed=0, batch=1, anchors=3, classes=CLASSES):
    """A plausible forward output, (B, A, 5+C, H, W): class scores kept <= 0.2 so nothing is ignored by default."""
    rng = np.random.default_rng(seed)
    o = np.empty((batch, anchors, 5 + classes, GRID, GRID), np.float32)
    o[:, :, 0:2] = rng.uniform(0.05, 0.95, (batch, anchors, 2, GRID, GRID))
    o[:, :, 2:4] = rng.normal(0, 0.3, (batch, anchors, 2, GRID, GRID))
    o[:, :, 4] = rng.uniform(0.05, 0.95, (batch, anchors, GRID, GRID))
    o[:, :, 5:] = rng.uniform(0.0, 0.2, (batch, anchors, classes, GRID, GRID))
    return o


def run(o, truths, layer):
    flat = o.reshape(o.shape[0], -1, GRID, GRID)
    res = yolo_loss(flat, truths, layer, NET, NET)
    assert res.grad.shape == flat.shape and res.grad.dtype == np.float32
    return res, res.delta.reshape(o.shape).astype(np.float64)


def noobj(o, obj_normalizer=1.0):
    """Deltas when nothing is positive or ignored: -obj_normalizer*obj on every objectness, 0 elsewhere."""
    d = np.zeros(o.shape)
    d[:, :, 4] = -obj_normalizer * o[:, :, 4].astype(np.float64)
    return d


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6)


# ----- independent box arithmetic (corners) -----------------------------------------------------------------
def corners(b):
    return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2


def ref_iou(a, b):
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter > 0 else 0.0


def hull(a, b):
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    return max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)


def ref_giou(a, b):
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    cw, ch = hull(a, b)
    return ref_iou(a, b) - (cw * ch - union) / (cw * ch)


def dist2(a, b):
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2


def diag2(a, b):
    cw, ch = hull(a, b)
    return cw * cw + ch * ch


def aspect_v(pred, truth):
    return 4 / math.pi**2 * (math.atan(truth[2] / truth[3]) - math.atan(pred[2] / pred[3])) ** 2


def fd(f, box, k, h=1e-7):
    up, down = list(box), list(box)
    up[k] += h
    down[k] -= h
    return (f(up) - f(down)) / (2 * h)


def expected_step(kind, pred, truth):
    """Darknet's (dx, dy, dw, dh) for `kind`, from finite differences of the metrics (see module doc)."""
    if kind == "giou":
        return [fd(lambda p: ref_giou(p, truth), pred, k) * (1 if k < 2 else 2) for k in range(4)]
    step = [fd(lambda p: ref_iou(p, truth), pred, k) * (1 if k < 2 else 2) for k in range(4)]
    if kind == "iou":
        return step
    ratio = lambda p: dist2(p, truth) / diag2(p, truth)  # noqa: E731
    s, c2 = dist2(pred, truth), diag2(pred, truth)
    for k in range(2):
        step[k] += -fd(ratio, pred, k) - 2 * s * fd(lambda p: diag2(p, truth), pred, k) / c2**2
    for k in (2, 3):
        step[k] += -fd(ratio, pred, k)
    if kind == "ciou":
        v = aspect_v(pred, truth)
        alpha = v / (1 - ref_iou(pred, truth) + v + 1e-6)
        r2 = pred[2] ** 2 + pred[3] ** 2
        for k in (2, 3):
            step[k] += alpha * -fd(lambda p: aspect_v(p, truth), pred, k) * r2
    return step


def pred_box(o, b, a, j, i, anchor, new_coords=False):
    x, y, tw, th = (float(v) for v in o[b, a, :4, j, i])
    aw, ah = ANCHORS[anchor]
    if new_coords:
        return ((i + x) / GRID, (j + y) / GRID, 4 * tw * tw * aw / NET, 4 * th * th * ah / NET)
    return ((i + x) / GRID, (j + y) / GRID, math.exp(tw) * aw / NET, math.exp(th) * ah / NET)


def mse_box(o, b, a, j, i, anchor, truth, normalizer, new_coords=False):
    """MSE box delta: (2 - w*h) * iou_normalizer * (target - output)."""
    aw, ah = ANCHORS[anchor]
    if new_coords:
        tw, th = math.sqrt(truth[2] * NET / (4 * aw)), math.sqrt(truth[3] * NET / (4 * ah))
    else:
        tw, th = math.log(truth[2] * NET / aw), math.log(truth[3] * NET / ah)
    target = [truth[0] * GRID - i, truth[1] * GRID - j, tw, th]
    return np.array([(2 - truth[2] * truth[3]) * normalizer * (target[k] - float(o[b, a, k, j, i])) for k in range(4)])


def class_target(o, b, a, j, i, class_id, eps=0.0):
    p = o[b, a, 5:, j, i].astype(np.float64)
    y = np.where(np.arange(len(p)) == class_id, 1.0, 0.0)
    if eps:
        y = y * (1 - eps) + 0.5 * eps
    return y - p


# A truth of 28.8 x 24 px: shape IoU with the anchors 0.208, 0.96, 0.165 -> anchor 1; its cell is (i=1, j=1).
TRUTH = (0.52, 0.45, 0.3, 0.25)
CLS = 1


def truth_rows(*rows):
    return [np.array(rows, np.float32).reshape(-1, 5)]


# ----- tests ----------------------------------------------------------------------------------------------
def test_empty_truths_give_only_no_object_deltas():
    layer = yolo_layer(obj_normalizer=0.7)
    o = make_out(1, batch=2)
    res, d = run(o, [np.zeros((0, 5)), None], layer)
    close(d, noobj(o, 0.7))
    close(res.grad.reshape(o.shape), -noobj(o, 0.7))
    assert res.count == 0 and res.avg_iou == 0 and res.recall50 == 0
    assert res.avg_noobj == pytest.approx(o[:, :, 4].astype(np.float64).mean(), rel=1e-6)
    assert res.loss == pytest.approx(float(np.sum(noobj(o, 0.7) ** 2)), rel=1e-6)


def test_mse_positive_with_scale_and_iou_normalizer():
    layer = yolo_layer(iou_normalizer=0.4)
    o = make_out(2)
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    expected = noobj(o)
    expected[0, 1, :4, 1, 1] = mse_box(o, 0, 1, 1, 1, 1, TRUTH, 0.4)
    expected[0, 1, 4, 1, 1] = 1 - float(o[0, 1, 4, 1, 1])
    expected[0, 1, 5:, 1, 1] = class_target(o, 0, 1, 1, 1, CLS)
    close(d, expected)
    iou = ref_iou(pred_box(o, 0, 1, 1, 1, 1), TRUTH)
    assert res.count == 1
    assert res.avg_iou == pytest.approx(iou, rel=1e-6)
    assert res.recall50 == (iou > 0.5) and res.recall75 == (iou > 0.75)
    assert res.avg_obj == pytest.approx(float(o[0, 1, 4, 1, 1]), rel=1e-6)
    assert res.avg_class == pytest.approx(float(o[0, 1, 5 + CLS, 1, 1]), rel=1e-6)
    assert res.loss == pytest.approx(float(np.sum(expected**2)), rel=1e-5)


def test_batch_images_are_independent():
    layer = yolo_layer()
    o = make_out(3, batch=2)
    _, d = run(o, [None, np.array([(*TRUTH, CLS)])], layer)
    expected = noobj(o)
    expected[1, 1, :4, 1, 1] = mse_box(o, 1, 1, 1, 1, 1, TRUTH, 0.75)
    expected[1, 1, 4, 1, 1] = 1 - float(o[1, 1, 4, 1, 1])
    expected[1, 1, 5:, 1, 1] = class_target(o, 1, 1, 1, 1, CLS)
    close(d, expected)


def overlapping_prediction(o, a=2, j=1, i=1, anchor=2, shrink=1.0):
    """Set anchor `a` at cell (i, j) to predict a box close to TRUTH; returns its IoU with TRUTH."""
    aw, ah = ANCHORS[anchor]
    o[0, a, 0, j, i] = TRUTH[0] * GRID - i + 0.03
    o[0, a, 1, j, i] = TRUTH[1] * GRID - j - 0.02
    o[0, a, 2, j, i] = math.log(TRUTH[2] * NET / aw * shrink)
    o[0, a, 3, j, i] = math.log(TRUTH[3] * NET / ah * 1.05)
    return ref_iou(pred_box(o, 0, a, j, i, anchor), TRUTH)


@pytest.mark.parametrize(
    "class_probs, ignore_thresh, ignored",
    [
        ((0.3, 0.1), 0.5, True),  # some class > 0.25 -- any class, not the truth's (class 1)
        ((0.25, 0.2), 0.5, False),  # no class above 0.25: the IoU is not counted
        ((0.1, 0.9), 0.99, False),  # ignore_thresh above the IoU
    ],
)
def test_ignore_rule(class_probs, ignore_thresh, ignored):
    layer = yolo_layer(ignore_thresh=ignore_thresh)
    o = make_out(4)
    iou = overlapping_prediction(o)
    assert 0.7 < iou < 0.99
    o[0, 2, 5:, 1, 1] = class_probs
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    expected_obj = 0.0 if ignored else -float(o[0, 2, 4, 1, 1])
    close(d[0, 2, 4, 1, 1], expected_obj)
    close(d[0, 2, 5:, 1, 1], 0.0)
    close(d[0, 2, :4, 1, 1], 0.0)


def test_truth_thresh_trains_an_overlapping_prediction_in_its_own_cell():
    # the truth sits at the right edge of cell i=1; the prediction of anchor 2 in cell i=2 overlaps it
    layer = yolo_layer(truth_thresh=0.7, obj_normalizer=0.8)
    truth = (0.665, 0.45, 0.3, 0.25)
    o = make_out(5)
    o[0, 2, 0, 1, 2] = 0.002  # centre x = (2 + 0.002)/3 = 0.6673
    o[0, 2, 1, 1, 1 + 1] = truth[1] * GRID - 1 - 0.01
    o[0, 2, 2, 1, 2] = math.log(truth[2] * NET / 60 * 0.97)
    o[0, 2, 3, 1, 2] = math.log(truth[3] * NET / 70 * 1.02)
    iou = ref_iou(pred_box(o, 0, 2, 1, 2, 2), truth)
    assert iou > 0.9
    res, d = run(o, truth_rows((*truth, 0)), layer)
    expected = noobj(o, 0.8)
    expected[0, 2, :4, 1, 2] = mse_box(o, 0, 2, 1, 2, 2, truth, 0.75)  # tx = 0.665*3 - 2 < 0
    expected[0, 2, 4, 1, 2] = 0.8 * (1 - float(o[0, 2, 4, 1, 2]))
    expected[0, 2, 5:, 1, 2] = class_target(o, 0, 2, 1, 2, 0)
    # and the ordinary positive in the truth's own cell, anchor 1
    expected[0, 1, :4, 1, 1] = mse_box(o, 0, 1, 1, 1, 1, truth, 0.75)
    expected[0, 1, 4, 1, 1] = 0.8 * (1 - float(o[0, 1, 4, 1, 1]))
    expected[0, 1, 5:, 1, 1] = class_target(o, 0, 1, 1, 1, 0)
    close(d, expected)
    assert res.count == 1  # truth_thresh positives are not counted in Darknet's statistics


def test_best_anchor_outside_the_mask_gives_no_positive():
    layer = yolo_layer(mask=(0, 2))
    o = make_out(6, anchors=2)
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    close(d, noobj(o))
    assert res.count == 0


@pytest.mark.parametrize("iou_thresh, extra", [(0.15, (0, 2)), (0.19, (0,)), (0.25, ())])
def test_iou_thresh_extra_anchors_even_when_the_best_is_elsewhere(iou_thresh, extra):
    # shape IoUs of TRUTH: anchor 0 0.208, anchor 1 0.96 (not in this mask), anchor 2 0.165
    layer = yolo_layer(mask=(0, 2), iou_thresh=iou_thresh)
    o = make_out(7, anchors=2)
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    expected = noobj(o)
    for anchor in extra:
        a = (0, 2).index(anchor)
        expected[0, a, :4, 1, 1] = mse_box(o, 0, a, 1, 1, anchor, TRUTH, 0.75)
        expected[0, a, 4, 1, 1] = 1 - float(o[0, a, 4, 1, 1])
        expected[0, a, 5:, 1, 1] = class_target(o, 0, a, 1, 1, CLS)
    close(d, expected)
    assert res.count == len(extra)


@pytest.mark.parametrize("kind, extra", [("iou", True), ("giou", False), ("diou", True)])
def test_iou_thresh_kind(kind, extra):
    # a 40x10 anchor against the 28.8x24 truth (centres aligned): IoU 288/803.2 = 0.359; GIoU subtracts
    # (hull - union)/hull = (960 - 803.2)/960 and falls to 0.195; DIoU of aligned centres equals the IoU
    w, h = TRUTH[2] * NET, TRUTH[3] * NET
    assert ref_giou((0, 0, 40, 10), (0, 0, w, h)) < 0.3 < ref_iou((0, 0, 40, 10), (0, 0, w, h))
    layer = yolo_layer(mask=(0, 2), anchors=[(12, 12), (30, 24), (40, 10)], iou_thresh=0.3, iou_thresh_kind=kind)
    o = make_out(8, anchors=2)
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    assert res.count == int(extra)
    expected = 1 - float(o[0, 1, 4, 1, 1]) if extra else -float(o[0, 1, 4, 1, 1])
    assert d[0, 1, 4, 1, 1] == pytest.approx(expected, rel=1e-6)
    assert d[0, 0, 4, 1, 1] == pytest.approx(-float(o[0, 0, 4, 1, 1]), rel=1e-6)  # IoU 0.208 < 0.3


@pytest.mark.parametrize("iou_thresh", [1.0, 0.9])
def test_two_truths_on_one_anchor_accumulate_and_average(iou_thresh):
    # both truths are in cell (1, 1) and choose anchor 1; classes 0 then 1
    second = (0.45, 0.4, 0.28, 0.27)
    layer = yolo_layer(iou_thresh=iou_thresh)
    o = make_out(9)
    res, d = run(o, truth_rows((*TRUTH, 0), (*second, 1)), layer)
    box = mse_box(o, 0, 1, 1, 1, 1, TRUTH, 0.75) + mse_box(o, 0, 1, 1, 1, 1, second, 0.75)
    p = o[0, 1, 5:, 1, 1].astype(np.float64)
    classes = np.array([1 - p[0], 1 - p[1]])  # the second truth rewrites only its own class entry
    expected = noobj(o)
    expected[0, 1, :4, 1, 1] = box if iou_thresh == 1.0 else box / 2  # averaged over 2 positive classes
    expected[0, 1, 4, 1, 1] = 1 - float(o[0, 1, 4, 1, 1])
    expected[0, 1, 5:, 1, 1] = classes
    close(d, expected)
    assert res.count == 2 and res.total_bbox == 2 and res.rewritten_bbox == 1


def test_second_truth_of_the_same_class_rewrites_that_class():
    layer = yolo_layer(label_smooth_eps=0.2)
    o = make_out(10)
    _, d = run(o, truth_rows((*TRUTH, 0), (0.5, 0.4, 0.29, 0.24, 0)), layer)
    p = o[0, 1, 5:, 1, 1].astype(np.float64)
    close(d[0, 1, 5:, 1, 1], [0.9 - p[0], 0.1 - p[1]])


def test_label_smoothing():
    layer = yolo_layer(label_smooth_eps=0.1)
    o = make_out(11)
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    p = o[0, 1, 5:, 1, 1].astype(np.float64)
    close(d[0, 1, 5:, 1, 1], [0.05 - p[0], 0.95 - p[1]])


def test_focal_loss():
    layer = yolo_layer(focal_loss=1)
    o = make_out(12)
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    p = o[0, 1, 5:, 1, 1].astype(np.float64)
    pt = p[CLS]
    g = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
    close(d[0, 1, 5:, 1, 1], [(0 - p[0]) * 0.5 * g, (1 - p[1]) * 0.5 * g])


def test_counters_per_class_with_cls_normalizer():
    # counts 10, 40 -> multipliers 4, 1; a class-0 truth: box x4 (iou_normalizer 3), objectness x4, class x4*0.5
    layer = yolo_layer(counters_per_class="10,40", cls_normalizer=0.5)
    o = make_out(13)
    _, d = run(o, truth_rows((*TRUTH, 0)), layer)
    p = o[0, 1, 5:, 1, 1].astype(np.float64)
    close(d[0, 1, :4, 1, 1], mse_box(o, 0, 1, 1, 1, 1, TRUTH, 0.75 * 4))
    close(d[0, 1, 4, 1, 1], 4 * (1 - float(o[0, 1, 4, 1, 1])))
    close(d[0, 1, 5:, 1, 1], [(1 - p[0]) * 4 * 0.5, -p[1]])
    # a second class-0 truth on the same anchor rewrites with the multiplier only (no cls_normalizer)
    _, d = run(o, truth_rows((*TRUTH, 0), (0.5, 0.4, 0.29, 0.24, 0)), layer)
    close(d[0, 1, 5:, 1, 1], [(1 - p[0]) * 4, -p[1]])


def test_cls_normalizer_alone_has_no_effect():
    o = make_out(14)
    _, plain = run(o, truth_rows((*TRUTH, CLS)), yolo_layer())
    _, scaled = run(o, truth_rows((*TRUTH, CLS)), yolo_layer(cls_normalizer=3.0))
    close(scaled, plain)


def test_class_multipliers_are_clipped_to_max_delta():
    cfg = YoloLossConfig.from_options(yolo_layer(counters_per_class="1000,1", max_delta=10).options)
    assert cfg.class_multipliers == (1.0, 10.0)
    cfg = YoloLossConfig.from_options(yolo_layer(counters_per_class="0,5").options)
    assert cfg.class_multipliers == (5.0, 1.0)  # a count below 1 counts as 1


def test_delta_normalizer_scales_only_the_gradient():
    o = make_out(15)
    res, d = run(o, truth_rows((*TRUTH, CLS)), yolo_layer(delta_normalizer=0.25))
    plain, d_plain = run(o, truth_rows((*TRUTH, CLS)), yolo_layer())
    close(d, d_plain)
    close(res.grad.reshape(o.shape), -0.25 * d_plain)
    assert res.loss == pytest.approx(plain.loss)


def test_scale_x_y_uses_the_scaled_output():
    # with scale_x_y=2 the layer's x lies in (-0.5, 1.5); the target stays truth.x*w - i
    layer = yolo_layer(scale_x_y=2.0, ignore_thresh=0.5)
    o = make_out(16)
    o[0, 1, 0, 1, 1] = -0.3
    o[0, 1, 1, 1, 1] = 1.2
    # anchor 2 in cell i=0 reaches the truth only through x > 1: centre (0 + 1.45)/3 = 0.483
    o[0, 2, 0, 1, 0] = 1.45
    o[0, 2, 1, 1, 0] = TRUTH[1] * GRID - 1
    o[0, 2, 2, 1, 0] = math.log(TRUTH[2] * NET / 60)
    o[0, 2, 3, 1, 0] = math.log(TRUTH[3] * NET / 70)
    o[0, 2, 5, 1, 0] = 0.5
    assert ref_iou(pred_box(o, 0, 2, 1, 0, 2), TRUTH) > 0.5
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    close(d[0, 1, :4, 1, 1], mse_box(o, 0, 1, 1, 1, 1, TRUTH, 0.75))
    assert d[0, 2, 4, 1, 0] == 0.0
    assert res.avg_iou == pytest.approx(ref_iou(pred_box(o, 0, 1, 1, 1, 1), TRUTH), rel=1e-6)


def test_new_coords_mse():
    layer = yolo_layer(new_coords=1)
    o = make_out(17)
    o[:, :, 2:4] = np.abs(o[:, :, 2:4]) + 0.3  # post-logistic sizes
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    close(d[0, 1, :4, 1, 1], mse_box(o, 0, 1, 1, 1, 1, TRUTH, 0.75, new_coords=True))
    assert res.avg_iou == pytest.approx(ref_iou(pred_box(o, 0, 1, 1, 1, 1, new_coords=True), TRUTH), rel=1e-6)


def set_prediction(o, box, anchor=1, a=1, j=1, i=1, new_coords=False):
    """Write raw outputs at (a, j, i) that decode to `box`."""
    aw, ah = ANCHORS[anchor]
    o[0, a, 0, j, i] = box[0] * GRID - i
    o[0, a, 1, j, i] = box[1] * GRID - j
    if new_coords:
        o[0, a, 2, j, i] = math.sqrt(box[2] * NET / (4 * aw))
        o[0, a, 3, j, i] = math.sqrt(box[3] * NET / (4 * ah))
    else:
        o[0, a, 2, j, i] = math.log(box[2] * NET / aw)
        o[0, a, 3, j, i] = math.log(box[3] * NET / ah)


# Predictions for TRUTH (0.52, 0.45, 0.3, 0.25): overlapping with the enclosure set by the truth in x and by
# the prediction in y, overlapping inside the truth, disjoint to the upper left (both overlaps negative) and
# disjoint to the left (only the x overlap negative).
PREDICTIONS = {
    "overlap": (0.47, 0.49, 0.26, 0.31),
    "inside": (0.50, 0.44, 0.2, 0.15),
    "disjoint": (0.30, 0.28, 0.06, 0.05),
    "beside": (0.30, 0.46, 0.06, 0.05),
}


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("where", ["overlap", "inside"])
def test_iou_delta_matches_finite_differences(kind, where):
    pred = PREDICTIONS[where]
    close(np.array(iou_delta(pred, TRUTH, kind)), np.array(expected_step(kind, pred, TRUTH)))


def signed_overlap(p, t):
    """Darknet's intersection term for boxes that may be disjoint: the product of the signed overlaps."""
    px1, py1, px2, py2 = corners(p)
    tx1, ty1, tx2, ty2 = corners(t)
    return (min(px2, tx2) - max(px1, tx1)) * (min(py2, ty2) - max(py1, ty1))


@pytest.mark.parametrize("where", ["disjoint", "beside"])
def test_iou_delta_disjoint_giou_is_the_hull_term_of_the_signed_union(where):
    # without overlap Darknet keeps only d(U/C), with U = area_p + area_t - (signed overlap product)
    pred = PREDICTIONS[where]
    assert ref_iou(pred, TRUTH) == 0

    def union_over_hull(p):
        cw, ch = hull(p, TRUTH)
        return (p[2] * p[3] + TRUTH[2] * TRUTH[3] - signed_overlap(p, TRUTH)) / (cw * ch)

    expected = [fd(union_over_hull, pred, k) * (1 if k < 2 else 2) for k in range(4)]
    close(np.array(iou_delta(pred, TRUTH, "giou")), np.array(expected))


@pytest.mark.parametrize("where", ["disjoint", "beside"])
def test_iou_delta_disjoint_diou_keeps_the_distance_term(where):
    pred = PREDICTIONS[where]
    assert ref_iou(pred, TRUTH) == 0
    close(np.array(iou_delta(pred, TRUTH, "diou")), np.array(expected_step("diou", pred, TRUTH)))


@pytest.mark.parametrize("where", ["disjoint", "beside"])
def test_iou_delta_ciou_disjoint_uses_the_signed_overlap_in_alpha(where):
    # for disjoint boxes Darknet's alpha takes I/U from the unclamped product of the overlaps
    pred, truth = PREDICTIONS[where], TRUTH
    step = expected_step("diou", pred, truth)
    inter = signed_overlap(pred, truth)
    union = pred[2] * pred[3] + truth[2] * truth[3] - inter
    v = aspect_v(pred, truth)
    alpha = v / (1 - inter / union + v + 1e-6)
    r2 = pred[2] ** 2 + pred[3] ** 2
    for k in (2, 3):
        step[k] += alpha * -fd(lambda p: aspect_v(p, truth), pred, k) * r2
    close(np.array(iou_delta(pred, truth, "ciou")), np.array(step))


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
@pytest.mark.parametrize("new_coords", [0, 1])
def test_iou_losses_in_the_layer(kind, new_coords):
    layer = yolo_layer(iou_loss=kind, iou_normalizer=0.07, new_coords=new_coords)
    o = make_out(18)
    pred = PREDICTIONS["overlap"]
    set_prediction(o, pred, new_coords=bool(new_coords))
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    decoded = pred_box(o, 0, 1, 1, 1, 1, new_coords=bool(new_coords))
    step = np.array(expected_step(kind, decoded, TRUTH))
    if not new_coords:  # Darknet's chain factor for exp(): w, h only
        step[2:] *= np.exp(o[0, 1, 2:4, 1, 1].astype(np.float64))
    expected = noobj(o)
    expected[0, 1, :4, 1, 1] = 0.07 * step
    expected[0, 1, 4, 1, 1] = 1 - float(o[0, 1, 4, 1, 1])
    expected[0, 1, 5:, 1, 1] = class_target(o, 0, 1, 1, 1, CLS)
    close(d, expected)
    # reported loss: iou_normalizer * mean(1 - GIoU) for giou, mean(1 - IoU) otherwise, plus the non-box part
    metric = ref_giou(decoded, TRUTH) if kind == "giou" else ref_iou(decoded, TRUTH)
    non_box = float(np.sum(expected[:, :, 4:] ** 2))
    assert res.loss == pytest.approx(0.07 * (1 - metric) + non_box, rel=1e-5)
    assert res.class_loss == pytest.approx(non_box, rel=1e-5)
    assert res.total_loss == pytest.approx(float(np.sum(expected**2)), rel=1e-5)


def test_max_delta_clips_iou_deltas_but_not_mse():
    o = make_out(19)
    set_prediction(o, PREDICTIONS["overlap"])
    _, d = run(o, truth_rows((*TRUTH, CLS)), yolo_layer(iou_loss="giou", iou_normalizer=0.2, max_delta=0.5))
    decoded = pred_box(o, 0, 1, 1, 1, 1)
    step = np.array(expected_step("giou", decoded, TRUTH))
    step[2:] *= np.exp(o[0, 1, 2:4, 1, 1].astype(np.float64))
    unclipped = 0.2 * step
    assert np.abs(unclipped).max() > 0.5 and np.abs(unclipped).min() < 0.5
    close(d[0, 1, :4, 1, 1], np.clip(unclipped, -0.5, 0.5))
    _, d = run(o, truth_rows((*TRUTH, CLS)), yolo_layer(iou_normalizer=50.0, max_delta=0.01))
    close(d[0, 1, :4, 1, 1], mse_box(o, 0, 1, 1, 1, 1, TRUTH, 50.0))


def test_objectness_smooth():
    layer = yolo_layer(objectness_smooth=1, obj_normalizer=0.9)
    o = make_out(20)
    # anchor 2 in the truth's cell: ignored, so its delta becomes obj_normalizer*(iou - obj)
    iou2 = overlapping_prediction(o)
    o[0, 2, 5:, 1, 1] = (0.1, 0.4)
    # anchor 1 (the positive) predicts a box far from the truth: not ignored, so its -obj delta stays
    set_prediction(o, (0.4, 0.35, 0.02, 0.02))
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    close(d[0, 2, 4, 1, 1], 0.9 * (iou2 - float(o[0, 2, 4, 1, 1])))
    close(d[0, 1, 4, 1, 1], -0.9 * float(o[0, 1, 4, 1, 1]))
    close(d[0, 1, 5:, 1, 1], class_target(o, 0, 1, 1, 1, CLS))
    # a positive whose objectness delta is exactly 0 gets obj_normalizer*(1 - obj)
    o[0, 1, 4, 1, 1] = 0.0
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    close(d[0, 1, 4, 1, 1], 0.9)


def test_objectness_smooth_with_truth_thresh():
    layer = yolo_layer(objectness_smooth=1, truth_thresh=0.7, ignore_thresh=0.5)
    o = make_out(21)
    iou2 = overlapping_prediction(o)
    assert iou2 > 0.7
    _, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    p = o[0, 2, 5:, 1, 1].astype(np.float64)
    close(d[0, 2, 4, 1, 1], iou2**2 - float(o[0, 2, 4, 1, 1]))
    close(d[0, 2, 5:, 1, 1], [-p[0], iou2**2 - p[1]])
    close(d[0, 2, :4, 1, 1], mse_box(o, 0, 2, 1, 1, 2, TRUTH, 0.75))


def test_reported_loss_forms():
    o = make_out(22)
    rows = truth_rows((*TRUTH, CLS))
    res, d = run(o, rows, yolo_layer(obj_normalizer=0.5))
    total = float(np.sum(d**2))
    non_box = float(np.sum(d[:, :, 4:] ** 2))
    assert res.loss == pytest.approx(total, rel=1e-6)
    assert res.class_loss == pytest.approx(0.5 * non_box, rel=1e-6)
    assert res.iou_loss == pytest.approx(total - 0.5 * non_box, rel=1e-6)
    res, d = run(o, rows, yolo_layer(iou_loss="ciou", show_details=0))
    assert res.loss == pytest.approx(float(np.sum(d**2)), rel=1e-6)


def test_zero_size_rows_are_skipped_and_max_limits_the_truths():
    o = make_out(23)
    _, plain = run(o, truth_rows((*TRUTH, CLS)), yolo_layer())
    _, padded = run(o, truth_rows((0, 0, 0, 0, 0), (*TRUTH, CLS), (0.2, 0.2, 0.0, 0.1, 0)), yolo_layer())
    close(padded, plain)
    _, limited = run(o, truth_rows((*TRUTH, CLS), (0.2, 0.2, 0.1, 0.1, 0)), yolo_layer(max=1))
    close(limited, plain)


def test_ignore_rule_vectorised_matches_a_scalar_loop():
    # only anchor 0 in the mask and truths shaped like anchors 1/2: no positives, the objectness plane is
    # exactly the ignore rule over every prediction x truth
    rng = np.random.default_rng(24)
    layer = yolo_layer(mask=(0,), ignore_thresh=0.3)
    o = make_out(24, batch=2, anchors=1)
    o[:, :, 2:4] = rng.normal(0.8, 0.4, o[:, :, 2:4].shape)
    o[:, :, 5:] = rng.uniform(0, 0.5, o[:, :, 5:].shape)
    truths = [
        np.array([(0.4, 0.5, 0.31, 0.26, 0), (0.7, 0.3, 0.6, 0.7, 1), (0.2, 0.8, 0.33, 0.24, 1)]),
        np.array([(0.5, 0.5, 0.62, 0.74, 0)]),
    ]
    res, d = run(o, truths, layer)
    assert res.count == 0
    ignored = 0
    for b in range(2):
        for j in range(GRID):
            for i in range(GRID):
                pred = pred_box(o, b, 0, j, i, 0)
                best = max(ref_iou(pred, t[:4]) for t in truths[b])
                match = (o[b, 0, 5:, j, i] > 0.25).any()
                expect = 0.0 if match and best > 0.3 else -float(o[b, 0, 4, j, i])
                ignored += expect == 0.0
                close(d[b, 0, 4, j, i], expect)
    assert 0 < ignored < 18
    close(d[:, :, :4], 0.0)
    close(d[:, :, 5:], 0.0)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ((0.5, 0.5, 0.2, 0.2, 2), "class 2"),
        ((0.5, 0.5, 0.2, 0.2, 0.5), "class 0.5"),
        ((1.2, 0.5, 0.2, 0.2, 0), "x=1.2"),
        ((0.5, 0.5, -0.2, 0.2, 0), "w=-0.2"),
        ((0.5, np.nan, 0.2, 0.2, 0), "non-finite"),
    ],
)
def test_bad_truths_raise(row, fragment):
    o = make_out(25, batch=2)
    with pytest.raises(TruthError, match=r"truths\[1\] row 0") as info:
        run(o, [None, np.array([row])], yolo_layer())
    assert fragment in str(info.value)


def test_bad_shapes_raise():
    o = make_out(26)
    layer = yolo_layer()
    with pytest.raises(TruthError):
        yolo_loss(o.reshape(1, -1, GRID, GRID), [None, None], layer, NET, NET)
    with pytest.raises(TruthError):
        yolo_loss(o.reshape(1, -1, GRID, GRID), [np.zeros((2, 3))], layer, NET, NET)
    with pytest.raises(DarknetError, match="channels"):
        yolo_loss(o.reshape(1, -1, GRID, GRID)[:, 1:], [None], layer, NET, NET)


def test_config_from_a_graph_layer():
    layer = yolo_layer(
        mask=(1, 2),
        iou_loss="ciou",
        iou_thresh=0.213,
        iou_normalizer=0.07,
        max_delta=5,
        scale_x_y=1.05,
        new_coords=1,
        objectness_smooth=1,
        label_smooth_eps=0.1,
        focal_loss=1,
    )
    cfg = YoloLossConfig.from_options(layer.options)
    assert cfg.mask == (1, 2) and cfg.num == 3 and cfg.anchors == tuple((float(w), float(h)) for w, h in ANCHORS)
    assert (cfg.iou_loss, cfg.iou_thresh, cfg.iou_normalizer, cfg.max_delta) == ("ciou", 0.213, 0.07, 5.0)
    assert cfg.new_coords and cfg.objectness_smooth and cfg.focal_loss and cfg.label_smooth_eps == 0.1
    defaults = YoloLossConfig.from_options(yolo_layer().options)
    assert (
        defaults.iou_loss,
        defaults.iou_normalizer,
        defaults.ignore_thresh,
        defaults.truth_thresh,
        defaults.iou_thresh,
        defaults.max_boxes,
        defaults.class_multipliers,
    ) == ("mse", 0.75, 0.5, 1.0, 1.0, 200, None)


def test_nan_objectness_reads_as_zero_once_compared_with_a_truth():
    o = make_out(27, batch=2)
    o[:, 0, 4, 0, 0] = np.nan
    res, d = run(o, [truth_rows((*TRUTH, CLS))[0], None], yolo_layer())
    assert d[0, 0, 4, 0, 0] == 0.0  # image 0 has a truth: its NaN objectness became 0
    assert np.isnan(d[1, 0, 4, 0, 0])  # image 1 has none: Darknet never touches it
    assert np.isnan(res.avg_noobj)


def test_zero_predicted_size_is_read_as_one_for_the_iou_step():
    # new_coords with a raw size of 0 decodes to a zero-width box; Darknet then takes w = 1 for dx_box_iou
    layer = yolo_layer(iou_loss="giou", new_coords=1, iou_normalizer=1.0)
    o = make_out(28)
    set_prediction(o, PREDICTIONS["overlap"], new_coords=True)
    o[0, 1, 2, 1, 1] = 0.0
    res, d = run(o, truth_rows((*TRUTH, CLS)), layer)
    x, y, _, h = pred_box(o, 0, 1, 1, 1, 1, new_coords=True)
    close(d[0, 1, :4, 1, 1], expected_step("giou", (x, y, 1.0, h), TRUTH))
    assert res.avg_iou == 0.0  # the statistics use the real (empty) box
