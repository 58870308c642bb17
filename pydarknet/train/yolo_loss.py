"""Darknet's `[yolo]` training loss, in numpy.

The engine's backward pass calls :func:`yolo_loss` with each `[yolo]` layer's forward output and feeds back the
gradient it returns. Semantics are AlexeyAB/darknet's (`yolo_layer.c`: `process_batch`, `delta_yolo_box`,
`delta_yolo_class`, `averages_yolo_deltas`, `forward_yolo_layer`; `box.c`: `box_iou`, `box_giou`, `box_diou`,
`box_ciou`, `dx_box_iou`; `parser.c`: `parse_yolo`, `get_classes_multipliers`); hank-ai/darknet computes the same.

What Darknet computes, per image of the mini-batch:

1. **No-object / ignore** for every cell and anchor: objectness delta ``obj_normalizer*(0 - obj)``; the best IoU
   of the predicted box with any truth is taken into account only when the anchor predicts *some* class with
   probability > 0.25; above ``ignore_thresh`` the delta becomes 0 (``objectness_smooth``: the larger of it
   and ``obj_normalizer*(iou - obj)``). Above ``truth_thresh`` the prediction is trained as a positive of the
   truth it overlaps most.
2. **Positives**, truth by truth in the given order: cell ``(int(x*w), int(y*h))``, best anchor over *all*
   ``num`` anchors by shape IoU; a positive here only when that anchor is in this layer's ``mask``. With
   ``iou_thresh < 1`` every other anchor of the mask whose shape IoU (``iou_thresh_kind``) with the truth
   exceeds ``iou_thresh`` is a positive too, and afterwards each anchor's box delta is divided by the number
   of classes with a positive delta there (``averages_yolo_deltas``).
3. **Box delta**: MSE on the raw outputs with weight ``(2 - w*h)*iou_normalizer``, or Darknet's analytic
   IoU/GIoU/DIoU/CIoU gradient (``dx_box_iou``), clipped to ``max_delta``. Box deltas *accumulate* when two
   truths land on the same anchor.
4. **Class delta**: ``y - p`` with label smoothing, or the focal-loss form; a second truth on an anchor that
   already has a class delta only rewrites its own class entry. ``cls_normalizer`` only takes effect with
   ``counters_per_class`` (and not on that rewrite), exactly as in Darknet.

Darknet's ``delta`` is the negative gradient with respect to the yolo layer's *input* (its backward is an
identity); :attr:`YoloLossResult.grad` is ``-delta_normalizer * delta`` (``delta_normalizer`` is applied in
Darknet's GPU backward, the build that trains released models).

:func:`device_yolo_loss` computes the same on a CUDA network's device (cuda/yolo_loss_kernels.cu), from the head's
output of the last ``forward_train``, leaving the gradient in device memory for :meth:`Network.backward_device`.

Input truths that Darknet's data loader would never produce are rejected with :class:`TruthError` rather than
silently skipped (class id outside ``[0, classes)``, centre outside ``[0, 1]``, negative or non-finite sizes);
rows with a zero width or height -- Darknet's loader drops them, and zero rows pad its truth buffer -- are
skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from pydarknet.errors import DarknetError, DeviceError, TruthError

__all__ = [
    "TruthError",
    "YoloLossConfig",
    "YoloLossResult",
    "yolo_loss",
    "device_yolo_loss",
    "box_iou",
    "box_giou",
    "box_diou",
    "box_ciou",
    "iou_delta",
]

FLT_MAX = float(np.finfo(np.float32).max)
IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")
# compare_yolo_class: an anchor's IoU counts for the ignore rule only if some class probability exceeds this.
CLASS_MATCH_THRESH = 0.25
FOCAL_ALPHA = 0.5
# Added to the probability before the focal log, as Darknet does (a float32 constant).
FOCAL_EPS = np.float32(1e-15)
# alpha = v / (1 - IoU + v + eps) in CIoU.
CIOU_EPS = 1e-6


# ----- options ---------------------------------------------------------------------------------------------
def _parse_counters(text, classes):
    """`counters_per_class` as Darknet's get_classes_multipliers reads it: max_count / count (count < 1 -> 1)."""
    parts = [p.strip() for p in str(text).split("#")[0].split(",")]
    counts = []
    for part in parts:
        try:
            counts.append(int(float(part)))
        except ValueError:
            raise DarknetError(f"[yolo] counters_per_class: '{part}' is not a number") from None
    if len(counts) != classes:
        raise DarknetError(f"[yolo] counters_per_class has {len(counts)} values but classes={classes}")
    return [max(c, 1) for c in counts]


@dataclass(frozen=True)
class YoloLossConfig:
    """The `[yolo]` options Darknet's training loss reads, with Darknet's defaults."""

    classes: int
    num: int
    mask: Tuple[int, ...]
    anchors: Tuple[Tuple[float, float], ...]  # all `num` anchors, pixels at network resolution
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    delta_normalizer: float = 1.0
    max_delta: float = FLT_MAX
    class_multipliers: Optional[Tuple[float, ...]] = None  # from counters_per_class
    label_smooth_eps: float = 0.0
    focal_loss: bool = False
    scale_x_y: float = 1.0
    new_coords: bool = False
    objectness_smooth: bool = False
    max_boxes: int = 200
    show_details: bool = True

    @classmethod
    def from_options(cls, options):
        """Build from a layer's parsed options (`net.desc.layers[i].options`, `net.layers[i].options`)."""
        o = options
        classes = int(o.get("classes", 20))
        num = int(o.get("num", 1))
        mask = tuple(int(m) for m in o.get("mask", range(num)))
        flat = [float(a) for a in o.get("anchors", [0.5] * (2 * num))]
        if len(flat) < 2 * num:
            raise DarknetError(f"[yolo] num={num} needs {2 * num} anchor values, found {len(flat)}")
        for m in mask:
            if not 0 <= m < num:
                raise DarknetError(f"[yolo] mask entry {m} is not an anchor index (num={num})")
        anchors = tuple((flat[2 * k], flat[2 * k + 1]) for k in range(num))
        iou_loss = str(o.get("iou_loss", "mse"))
        if iou_loss not in IOU_LOSSES:
            iou_loss = "iou"  # Darknet's parser: anything unknown is plain IoU
        kind = str(o.get("iou_thresh_kind", "iou"))
        if kind not in IOU_LOSSES[1:]:
            kind = "iou"
        max_delta = float(o.get("max_delta", FLT_MAX))
        cpc = o.get("counters_per_class", "") or ""
        multipliers = None
        if str(cpc).strip():
            counts = _parse_counters(cpc, classes)
            top = float(max(counts))
            # float32 as Darknet stores them, clipped to max_delta
            multipliers = tuple(float(min(np.float32(top / c), np.float32(max_delta))) for c in counts)
        if str(o.get("map", "") or "").strip():
            raise DarknetError("[yolo] map= (a class-id remapping file) is not supported in training")
        return cls(
            classes=classes,
            num=num,
            mask=mask,
            anchors=anchors,
            ignore_thresh=float(o.get("ignore_thresh", 0.5)),
            truth_thresh=float(o.get("truth_thresh", 1.0)),
            iou_thresh=float(o.get("iou_thresh", 1.0)),
            iou_thresh_kind=kind,
            iou_loss=iou_loss,
            iou_normalizer=float(o.get("iou_normalizer", 0.75)),
            obj_normalizer=float(o.get("obj_normalizer", 1.0)),
            cls_normalizer=float(o.get("cls_normalizer", 1.0)),
            delta_normalizer=float(o.get("delta_normalizer", 1.0)),
            max_delta=max_delta,
            class_multipliers=multipliers,
            label_smooth_eps=float(o.get("label_smooth_eps", 0.0)),
            focal_loss=bool(int(o.get("focal_loss", 0))),
            scale_x_y=float(o.get("scale_x_y", 1.0)),
            new_coords=bool(int(o.get("new_coords", 0))),
            # Darknet reads objectness_smooth as an int: 0.5 is off
            objectness_smooth=bool(int(float(o.get("objectness_smooth", 0)))),
            max_boxes=int(o.get("max", 200)),
            show_details=bool(int(o.get("show_details", 1))),
        )


def _config(layer):
    if isinstance(layer, YoloLossConfig):
        return layer
    options = getattr(layer, "options", layer)
    if getattr(layer, "type", "yolo") != "yolo":
        raise DarknetError(f"yolo_loss needs a [yolo] layer, got [{layer.type}]")
    return YoloLossConfig.from_options(options)


# ----- result ----------------------------------------------------------------------------------------------
@dataclass
class YoloLossResult:
    """What one `[yolo]` layer's training pass produces.

    ``delta`` is Darknet's ``l.delta`` (negative gradient); ``grad`` the gradient the engine back-propagates.
    ``loss`` is Darknet's ``*l.cost`` (summed over the mini-batch; the iteration loss Darknet prints is the sum
    of the layers' costs over all subdivisions divided by the cfg's ``batch``). ``class_loss``, ``iou_loss`` and
    ``total_loss`` are the per-image values of Darknet's ``v3 (...)`` line; the ``avg_*``/``recall*`` fields
    are the statistics Darknet's (older, pre-thread) line printed: Avg IOU, Class, Obj, No Obj, .5R, .75R,
    count. ``total_bbox``/``rewritten_bbox`` count box deltas written and written onto an anchor that already
    had one (Darknet prints their ratio per iteration).
    """

    grad: Optional[np.ndarray]  # None from device_yolo_loss: the gradient stays on the device
    delta: Optional[np.ndarray]
    loss: float
    avg_iou: float
    avg_class: float
    avg_obj: float
    avg_noobj: float
    recall50: float
    recall75: float
    count: int
    class_loss: float
    iou_loss: float
    total_loss: float
    total_bbox: int
    rewritten_bbox: int
    iou_loss_kind: str = "mse"
    # ``loss`` as ``box / max(count, 1) + rest`` (Darknet's cost is not a sum over images: with CIoU/GIoU and
    # show_details the box term is averaged over the mini-batch's positives). Data-parallel training sums these
    # three over the ranks and rebuilds the cost of the whole mini-batch with :func:`cost_from_terms`.
    cost_terms: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def summary(self, index=None):
        """Darknet-style one-line summary of this layer (its older, detailed format)."""
        where = f"Region {index} " if index is not None else ""
        return (
            f"v3 ({self.iou_loss_kind} loss) {where}Avg (IOU: {self.avg_iou:f}), Class: {self.avg_class:f}, "
            f"Obj: {self.avg_obj:f}, No Obj: {self.avg_noobj:f}, .5R: {self.recall50:f}, "
            f".75R: {self.recall75:f}, count: {self.count}, class_loss = {self.class_loss:f}, "
            f"iou_loss = {self.iou_loss:f}, total_loss = {self.total_loss:f}"
        )


# ----- box arithmetic (scalars; boxes are (x, y, w, h) with centre x, y) ------------------------------------
def _div(a, b):
    """a / b with IEEE results for b == 0 (Darknet's float division never traps; NaN/Inf are fixed later)."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _overlap(c1, s1, c2, s2):
    left = max(c1 - s1 / 2, c2 - s2 / 2)
    right = min(c1 + s1 / 2, c2 + s2 / 2)
    return right - left


def _intersection(a, b):
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    if w < 0 or h < 0:
        return 0.0
    return w * h


def box_iou(a, b):
    """IoU as Darknet's box_iou computes it (0 when the intersection or union is 0)."""
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    if inter == 0 or union == 0:
        return 0.0
    return _div(inter, union)


def _enclosure(a, b):
    top = min(a[1] - a[3] / 2, b[1] - b[3] / 2)
    bot = max(a[1] + a[3] / 2, b[1] + b[3] / 2)
    left = min(a[0] - a[2] / 2, b[0] - b[2] / 2)
    right = max(a[0] + a[2] / 2, b[0] + b[2] / 2)
    return right - left, bot - top


def box_giou(a, b):
    cw, ch = _enclosure(a, b)
    c = cw * ch
    iou = box_iou(a, b)
    if c == 0:
        return iou
    union = a[2] * a[3] + b[2] * b[3] - _intersection(a, b)
    return iou - _div(c - union, c)


def box_diou(a, b):
    """IoU - (d^2/c^2)^0.6: Darknet's box_diou has the 0.6 power (its gradient does not)."""
    cw, ch = _enclosure(a, b)
    c = cw * cw + ch * ch
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    ratio = _div(d, c)
    return iou - (ratio**0.6 if ratio >= 0 else math.nan)


def _aspect_term(truth, pred):
    """v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2 and the atan difference."""
    diff = math.atan(_div(truth[2], truth[3])) - math.atan(_div(pred[2], pred[3]))
    return 4.0 / (math.pi * math.pi) * diff * diff, diff


def box_ciou(a, b):
    """CIoU of prediction a against truth b."""
    cw, ch = _enclosure(a, b)
    c = cw * cw + ch * ch
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = _div((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2, c)
    v, _ = _aspect_term(b, a)
    alpha = _div(v, 1 - iou + v + CIOU_EPS)
    return iou - (d + alpha * v)


def _box_metric(kind, a, b):
    if kind == "giou":
        return box_giou(a, b)
    if kind == "diou":
        return box_diou(a, b)
    if kind == "ciou":
        return box_ciou(a, b)
    return box_iou(a, b)


def iou_delta(pred, truth, kind):
    """Darknet's `dx_box_iou`: the ascent direction of IoU/GIoU/DIoU/CIoU for (x, y, w, h) of `pred`.

    Reproduced with its conventions: the w/h components are d/d(right-left) (not halved), the DIoU/CIoU
    distance term is d^2/c^2 (no 0.6 power) with the enclosure derivative entering x/y with a minus sign, the
    CIoU aspect term drops the 1/(w^2+h^2) factor, and for boxes that do not overlap GIoU/DIoU/CIoU keep only
    their enclosure/distance term. Returns (dx, dy, dw, dh); NaN/Inf are left to the caller.
    """
    px, py, pw, ph = pred
    tx, ty, tw, th = truth
    raw_top, raw_bot = py - ph / 2, py + ph / 2
    raw_left, raw_right = px - pw / 2, px + pw / 2
    p_t, p_b = min(raw_top, raw_bot), max(raw_top, raw_bot)
    p_l, p_r = min(raw_left, raw_right), max(raw_left, raw_right)
    g_t, g_b = ty - th / 2, ty + th / 2
    g_l, g_r = tx - tw / 2, tx + tw / 2

    area_p = (p_b - p_t) * (p_r - p_l)
    area_g = (g_b - g_t) * (g_r - g_l)
    inter_h = min(p_b, g_b) - max(p_t, g_t)
    inter_w = min(p_r, g_r) - max(p_l, g_l)
    inter = inter_w * inter_h  # not clamped: Darknet uses the signed product here
    union = area_p + area_g - inter
    dist2 = (px - tx) ** 2 + (py - ty) ** 2
    hull_w = max(p_r, g_r) - min(p_l, g_l)
    hull_h = max(p_b, g_b) - min(p_t, g_t)
    hull = hull_w * hull_h

    # d/d(edge) of the prediction's area, of the intersection, of the union and of the GIoU hull
    d_area = {"t": -(p_r - p_l), "b": p_r - p_l, "l": -(p_b - p_t), "r": p_b - p_t}
    d_inter = {
        "t": -inter_w if p_t > g_t else 0.0,
        "b": inter_w if p_b < g_b else 0.0,
        "l": -inter_h if p_l > g_l else 0.0,
        "r": inter_h if p_r < g_r else 0.0,
    }
    d_union = {e: d_area[e] - d_inter[e] for e in "tblr"}
    d_hull = {
        "t": -hull_w if p_t < g_t else 0.0,
        "b": hull_w if p_b > g_b else 0.0,
        "l": -hull_h if p_l < g_l else 0.0,
        "r": hull_h if p_r > g_r else 0.0,
    }

    grad = dict.fromkeys("tblr", 0.0)
    if union > 0:
        for e in "tblr":
            grad[e] = _div(union * d_inter[e] - inter * d_union[e], union * union)
    # an inverted box (negative size) takes the gradient of the edge that really is its top/left
    if not raw_top < raw_bot:
        grad["t"] = grad["b"]
    if not raw_left < raw_right:
        grad["l"] = grad["r"]

    if kind == "giou":
        hull_term = {e: _div(hull * d_union[e] - union * d_hull[e], hull * hull) for e in "tblr"}
        if hull > 0:
            for e in "tblr":
                grad[e] += hull_term[e]
        if inter_w <= 0 or inter_h <= 0:
            grad = hull_term

    dx = grad["l"] + grad["r"]
    dy = grad["t"] + grad["b"]
    dw = grad["r"] - grad["l"]
    dh = grad["b"] - grad["t"]

    if kind in ("diou", "ciou"):
        # squared diagonal of the enclosing box, from the prediction's unsorted edges
        c_top = min(py - ph / 2, g_t)
        c_bot = max(py + ph / 2, g_b)
        c_left = min(px - pw / 2, g_l)
        c_right = max(px + pw / 2, g_r)
        cw, ch = c_right - c_left, c_bot - c_top
        c2 = cw * cw + ch * ch
        dcw_dx = (1.0 if p_r > g_r else 0.0) - (1.0 if p_l < g_l else 0.0)
        dcw_dw = (0.5 if p_r > g_r else 0.0) + (0.5 if p_l < g_l else 0.0)
        dch_dy = (1.0 if p_b > g_b else 0.0) - (1.0 if p_t < g_t else 0.0)
        dch_dh = (0.5 if p_b > g_b else 0.0) + (0.5 if p_t < g_t else 0.0)
        c4 = c2 * c2
        term_x = _div(2 * (tx - px) * c2 - 2 * cw * dcw_dx * dist2, c4)
        term_y = _div(2 * (ty - py) * c2 - 2 * ch * dch_dy * dist2, c4)
        term_w = _div(2 * cw * dcw_dw * dist2, c4)
        term_h = _div(2 * ch * dch_dh * dist2, c4)
        if kind == "ciou":
            v, diff = _aspect_term(truth, pred)
            alpha = _div(v, 1 - _div(inter, union) + v + CIOU_EPS)
            k = 8.0 / (math.pi * math.pi) * diff
            term_w += alpha * k * ph
            term_h += alpha * -k * pw
        if c2 > 0:
            dx, dy, dw, dh = dx + term_x, dy + term_y, dw + term_w, dh + term_h
        if inter_w <= 0 or inter_h <= 0:
            dx, dy, dw, dh = term_x, term_y, term_w, term_h
    return dx, dy, dw, dh


# ----- the loss --------------------------------------------------------------------------------------------
def _finite_or_zero(v):
    return v if math.isfinite(v) else 0.0


def _clip(v, limit):
    return limit if v > limit else (-limit if v < -limit else v)


class _Pass:
    """State of one call: the output planes, the delta being written and Darknet's running statistics."""

    def __init__(self, cfg, out, net_w, net_h):
        self.cfg = cfg
        self.out = out  # (B, A, 5+C, H, W) float32 view
        self.delta = np.zeros(out.shape, np.float32)
        self.h, self.w = out.shape[3], out.shape[4]
        self.net_w, self.net_h = net_w, net_h
        self.tot_iou = self.tot_iou_loss = self.tot_giou_loss = 0.0
        self.avg_cat = self.avg_obj = 0.0
        self.recall50 = self.recall75 = 0
        self.count = 0
        self.total_bbox = self.rewritten_bbox = 0

    def pred_box(self, b, a, j, i, anchor):
        """get_yolo_box: the box predicted at (a, j, i) with `anchor`, and its raw x, y, w, h outputs."""
        o = self.out[b, a, :4, j, i].astype(np.float64)
        aw, ah = self.cfg.anchors[anchor]
        if self.cfg.new_coords:
            w = o[2] * o[2] * 4 * aw / self.net_w
            h = o[3] * o[3] * 4 * ah / self.net_h
        else:
            with np.errstate(over="ignore"):
                w = float(np.exp(o[2])) * aw / self.net_w
                h = float(np.exp(o[3])) * ah / self.net_h
        return ((i + o[0]) / self.w, (j + o[1]) / self.h, float(w), float(h)), o

    def box_delta(self, truth, b, a, j, i, anchor, multiplier):
        """delta_yolo_box (accumulating); returns (iou, giou)."""
        cfg = self.cfg
        d = self.delta[b, a, :4, j, i]
        if d.any():
            self.rewritten_bbox += 1
        self.total_bbox += 1
        pred, raw = self.pred_box(b, a, j, i, anchor)
        iou, giou = box_iou(pred, truth), box_giou(pred, truth)
        px, py, pw, ph = pred
        pw = 1.0 if pw == 0 else pw  # keeps dx_box_iou finite, as Darknet does
        ph = 1.0 if ph == 0 else ph
        norm = cfg.iou_normalizer * multiplier
        aw, ah = cfg.anchors[anchor]
        if cfg.iou_loss == "mse":
            scale = 2 - truth[2] * truth[3]
            target = [truth[0] * self.w - i, truth[1] * self.h - j]
            if cfg.new_coords:
                target += [math.sqrt(truth[2] * self.net_w / (4 * aw)), math.sqrt(truth[3] * self.net_h / (4 * ah))]
            else:
                target += [math.log(truth[2] * self.net_w / aw), math.log(truth[3] * self.net_h / ah)]
            for k in range(4):
                d[k] += scale * (target[k] - raw[k]) * norm
        else:
            step = list(iou_delta((px, py, pw, ph), truth, cfg.iou_loss))
            if not cfg.new_coords:
                with np.errstate(over="ignore"):
                    step[2] *= float(np.exp(raw[2]))
                    step[3] *= float(np.exp(raw[3]))
            step = [_finite_or_zero(s * norm) for s in step]
            if cfg.max_delta != FLT_MAX:
                step = [_clip(s, cfg.max_delta) for s in step]
            for k in range(4):
                d[k] += step[k]
        return iou, giou

    def class_delta(self, b, a, j, i, class_id, count_stats):
        """delta_yolo_class at one anchor."""
        cfg = self.cfg
        d = self.delta[b, a, 5:, j, i]
        p = self.out[b, a, 5:, j, i]
        eps = cfg.label_smooth_eps
        mult = cfg.class_multipliers
        p_own = float(p[class_id])
        if count_stats:
            self.avg_cat += p_own
        if d[class_id] != 0:
            # a second truth on this anchor: only its own class entry is rewritten
            y = 1.0 * (1 - eps) + 0.5 * eps if eps else 1.0
            r = y - p_own
            if math.isfinite(r):
                d[class_id] = r
            if mult is not None:
                d[class_id] *= mult[class_id]  # Darknet leaves cls_normalizer out of this rewrite
            return
        onehot = np.zeros(cfg.classes)
        onehot[class_id] = 1.0
        if cfg.focal_loss:
            pt = float(np.float32(p[class_id]) + FOCAL_EPS)
            with np.errstate(divide="ignore", invalid="ignore"):
                grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1) if pt > 0 else math.nan
            d[:] = (onehot - p.astype(np.float64)) * (FOCAL_ALPHA * grad)
            return
        target = onehot * (1 - eps) + 0.5 * eps if eps else onehot
        with np.errstate(invalid="ignore"):
            r = target - p.astype(np.float64)
        ok = np.isfinite(r)
        d[ok] = r[ok]
        if mult is not None:
            d[class_id] *= mult[class_id] * cfg.cls_normalizer

    def positive(self, truth, class_id, b, a, j, i, anchor):
        """Box, objectness and class deltas of one truth at one anchor, with Darknet's statistics."""
        cfg = self.cfg
        multiplier = cfg.class_multipliers[class_id] if cfg.class_multipliers is not None else 1.0
        iou, giou = self.box_delta(truth, b, a, j, i, anchor, multiplier)
        self.tot_iou += iou
        self.tot_iou_loss += 1 - iou
        self.tot_giou_loss += 1 - giou
        obj = float(self.out[b, a, 4, j, i])
        self.avg_obj += obj
        target = multiplier * cfg.obj_normalizer * (1 - obj)
        if not cfg.objectness_smooth or self.delta[b, a, 4, j, i] == 0:
            self.delta[b, a, 4, j, i] = target
        self.class_delta(b, a, j, i, class_id, True)
        self.count += 1
        if iou > 0.5:
            self.recall50 += 1
        if iou > 0.75:
            self.recall75 += 1


def _check_truths(truths, batch, classes, max_boxes):
    """Validated truths per image: float64 (k, 4) boxes and int class ids, zero-size rows dropped."""
    if truths is None or isinstance(truths, (str, bytes)) or not hasattr(truths, "__len__"):
        raise TruthError(f"expected a list of {batch} truth arrays (one per image)")
    if len(truths) != batch:
        raise TruthError(f"expected {batch} truth arrays (one per image), got {len(truths)}")
    checked = []
    for b, t in enumerate(truths):
        t = np.zeros((0, 5)) if t is None else np.asarray(t, dtype=np.float64)
        if t.size == 0:
            checked.append((np.zeros((0, 4)), np.zeros(0, np.int64)))
            continue
        if t.ndim != 2 or t.shape[1] < 5:
            raise TruthError(f"expected a (k, 5) array [x, y, w, h, class], got shape {t.shape}", b)
        rows = []
        for r, (x, y, w, h, c) in enumerate(t[:, :5]):
            if not all(math.isfinite(v) for v in (x, y, w, h, c)):
                raise TruthError("non-finite value", b, r)
            if w == 0 or h == 0:
                continue
            if c != int(c) or not 0 <= c < classes:
                raise TruthError(f"class {c:g} is not in [0, {classes})", b, r)
            if not (0 <= x <= 1 and 0 <= y <= 1) or w < 0 or h < 0:
                raise TruthError(
                    f"box x={x:g} y={y:g} w={w:g} h={h:g} is not a box inside the image "
                    f"(centre in [0, 1], positive size)",
                    b,
                    r,
                )
            rows.append(r)
        rows = rows[:max_boxes]  # Darknet's truth buffer holds `max` boxes per image
        kept = t[rows]
        checked.append((kept[:, :4].copy(), kept[:, 4].astype(np.int64)))
    return checked


def _pred_boxes(cfg, out, net_w, net_h):
    """Every anchor's predicted box, (B, A, H, W) planes of x, y, w, h in float32 as Darknet's get_yolo_box."""
    _, _, _, h, w = out.shape
    anchors = np.asarray([cfg.anchors[m] for m in cfg.mask], np.float32)
    aw = anchors[:, 0][None, :, None, None]
    ah = anchors[:, 1][None, :, None, None]
    cols = np.arange(w, dtype=np.float32)[None, None, None, :]
    rows = np.arange(h, dtype=np.float32)[None, None, :, None]
    x = (cols + out[:, :, 0]) / np.float32(w)
    y = (rows + out[:, :, 1]) / np.float32(h)
    with np.errstate(over="ignore", invalid="ignore"):
        if cfg.new_coords:
            bw = out[:, :, 2] * out[:, :, 2] * np.float32(4) * aw / np.float32(net_w)
            bh = out[:, :, 3] * out[:, :, 3] * np.float32(4) * ah / np.float32(net_h)
        else:
            bw = np.exp(out[:, :, 2]) * aw / np.float32(net_w)
            bh = np.exp(out[:, :, 3]) * ah / np.float32(net_h)
    return x, y, bw, bh


def _iou_matrix(px, py, pw, ph, truth):
    """box_iou of P predictions (flat float32 arrays) against k truths: (P, k), NaN read as 0."""
    tx, ty, tw, th = (truth[:, k].astype(np.float32)[None, :] for k in range(4))
    px, py, pw, ph = px[:, None], py[:, None], pw[:, None], ph[:, None]
    half = np.float32(0.5)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ow = np.minimum(px + pw * half, tx + tw * half) - np.maximum(px - pw * half, tx - tw * half)
        oh = np.minimum(py + ph * half, ty + th * half) - np.maximum(py - ph * half, ty - th * half)
        inter = np.where((ow < 0) | (oh < 0), np.float32(0), ow * oh)
        union = pw * ph + tw * th - inter
        iou = inter / union
        # Darknet returns 0 when either is 0; a NaN never wins a `>` comparison, which 0 reproduces
        return np.where((inter != 0) & (union != 0) & (iou > 0), iou, np.float32(0))


def yolo_loss(output, truths, layer, net_w, net_h) -> YoloLossResult:
    """Darknet's training deltas, loss and statistics for one `[yolo]` layer over a mini-batch.

    output: the layer's forward output, (batch, len(mask)*(5+classes), h, w) -- what the engine's yolo forward
        returns (x, y after the logistic and scale_x_y, w/h raw, objectness and classes as probabilities;
        new_coords heads: no activation in the layer).
    truths: one array per image, (k, 5) rows [x_center, y_center, w, h, class] relative to the network input
        (Darknet's truth layout; extra columns such as a track id are ignored); None or an empty array for an
        image without objects.
    layer: the yolo layer -- `net.desc.layers[i]`, `net.layers[i]`, its `.options` dict or a YoloLossConfig.
    net_w, net_h: the network input size in pixels (anchors are in these pixels).
    """
    cfg = _config(layer)
    output = np.asarray(output)
    if output.ndim != 4:
        raise DarknetError(f"yolo_loss: expected a 4-D (batch, channels, h, w) output, got shape {output.shape}")
    n_anchors = len(cfg.mask)
    batch, channels, h, w = output.shape
    if channels != n_anchors * (5 + cfg.classes):
        raise DarknetError(
            f"yolo_loss: output has {channels} channels, the layer needs "
            f"{n_anchors}*(5+{cfg.classes}) = {n_anchors * (5 + cfg.classes)}"
        )
    if not (net_w > 0 and net_h > 0):
        raise DarknetError(f"yolo_loss: network size {net_w}x{net_h} is not positive")
    net_w, net_h = int(net_w), int(net_h)
    out = np.ascontiguousarray(output, dtype=np.float32).reshape(batch, n_anchors, 5 + cfg.classes, h, w)
    boxes = _check_truths(truths, batch, cfg.classes, cfg.max_boxes)

    # A NaN/Inf objectness is read as 0 once it is compared with a truth (only images that have truths).
    obj = out[:, :, 4]
    with_truths = np.array([len(bx) > 0 for bx, _ in boxes])
    bad = ~np.isfinite(obj) & with_truths[:, None, None, None]
    if bad.any():
        out = out.copy()
        out[:, :, 4][bad] = 0
        obj = out[:, :, 4]
    state = _Pass(cfg, out, net_w, net_h)
    delta = state.delta
    avg_anyobj = float(obj.sum(dtype=np.float64))

    # 1. no-object deltas and the ignore rule, all predictions x all truths at once
    delta[:, :, 4] = np.float32(cfg.obj_normalizer) * (np.float32(0) - obj)
    px, py, pw, ph = _pred_boxes(cfg, out, net_w, net_h)
    class_match = (out[:, :, 5:] > np.float32(CLASS_MATCH_THRESH)).any(axis=2)  # (B, A, H, W)
    for b, (tboxes, tclasses) in enumerate(boxes):
        if len(tboxes) == 0:
            continue
        iou = _iou_matrix(px[b].ravel(), py[b].ravel(), pw[b].ravel(), ph[b].ravel(), tboxes)
        best_t = iou.argmax(axis=1)
        best_iou = iou[np.arange(iou.shape[0]), best_t].reshape(n_anchors, h, w)
        best_t = best_t.reshape(n_anchors, h, w)
        best_match = np.where(class_match[b], best_iou, np.float32(0))
        ignore = best_match > np.float32(cfg.ignore_thresh)
        d_obj = delta[b, :, 4]
        if cfg.objectness_smooth:
            smooth = np.float32(cfg.obj_normalizer) * (best_match - obj[b])
            d_obj[ignore] = np.maximum(d_obj[ignore], smooth[ignore])
        else:
            d_obj[ignore] = 0
        # predictions that overlap a truth above truth_thresh are trained as positives of it
        for a, j, i in zip(*np.nonzero(best_iou > np.float32(cfg.truth_thresh))):
            t = int(best_t[a, j, i])
            class_id = int(tclasses[t])
            iou_sq = float(best_iou[a, j, i]) ** 2
            o = float(out[b, a, 4, j, i])
            delta[b, a, 4, j, i] = cfg.obj_normalizer * ((iou_sq if cfg.objectness_smooth else 1.0) - o)
            state.class_delta(b, a, j, i, class_id, False)
            multiplier = cfg.class_multipliers[class_id] if cfg.class_multipliers is not None else 1.0
            if cfg.objectness_smooth:
                delta[b, a, 5 + class_id, j, i] = multiplier * (iou_sq - float(out[b, a, 5 + class_id, j, i]))
            state.box_delta(tuple(tboxes[t]), b, a, j, i, cfg.mask[a], multiplier)

    # 2. positives, truth by truth in order
    anchor_wh = [(aw / net_w, ah / net_h) for aw, ah in cfg.anchors]
    for b, (tboxes, tclasses) in enumerate(boxes):
        for t in range(len(tboxes)):
            truth = tuple(float(v) for v in tboxes[t])
            class_id = int(tclasses[t])
            # cell: float32 product truncated, as Darknet's int conversion; x == 1 stays in the last cell
            i = min(int(np.float32(truth[0]) * np.float32(w)), w - 1)
            j = min(int(np.float32(truth[1]) * np.float32(h)), h - 1)
            shape = (0.0, 0.0, truth[2], truth[3])
            best_n, best = 0, 0.0
            for n, (aw, ah) in enumerate(anchor_wh):
                v = box_iou((0.0, 0.0, aw, ah), shape)
                if v > best:
                    best_n, best = n, v
            if best_n in cfg.mask:
                state.positive(truth, class_id, b, cfg.mask.index(best_n), j, i, best_n)
            if cfg.iou_thresh < 1.0:
                for n, (aw, ah) in enumerate(anchor_wh):
                    if n == best_n or n not in cfg.mask:
                        continue
                    a = cfg.mask.index(n)
                    if _box_metric(cfg.iou_thresh_kind, (0.0, 0.0, aw, ah), shape) > cfg.iou_thresh:
                        state.positive(truth, class_id, b, a, j, i, n)

    # 3. averages_yolo_deltas: box deltas shared by the classes trained at an anchor
    if cfg.iou_thresh < 1.0:
        classes_here = (delta[:, :, 5:] > 0).sum(axis=2)  # (B, A, H, W)
        share = (delta[:, :, 4] != 0) & (classes_here > 0)
        if share.any():
            box = delta[:, :, :4]  # view
            divisor = np.where(share, classes_here, 1).astype(np.float32)
            box /= divisor[:, :, None]

    # 4. Darknet's reported loss and statistics
    count = state.count if state.count else 1
    flat = delta.reshape(-1).astype(np.float64)
    sum_sq = float(np.dot(flat, flat))
    box_part = delta[:, :, :4].astype(np.float64)
    non_box_sq = sum_sq - float(np.sum(box_part * box_part))
    class_loss = cfg.obj_normalizer * non_box_sq
    if not cfg.show_details or cfg.iou_loss == "mse":
        cost = sum_sq
        terms = (0.0, float(state.count), sum_sq)
    else:
        per_box = state.tot_giou_loss if cfg.iou_loss == "giou" else state.tot_iou_loss
        cost = cfg.iou_normalizer * per_box / count + class_loss
        terms = (float(cfg.iou_normalizer * per_box), float(state.count), float(class_loss))
    grad = delta * np.float32(-cfg.delta_normalizer)
    return YoloLossResult(
        grad=grad.reshape(output.shape),
        delta=delta.reshape(output.shape),
        loss=cost,
        avg_iou=state.tot_iou / count,
        avg_class=state.avg_cat / count,
        avg_obj=state.avg_obj / count,
        avg_noobj=avg_anyobj / (w * h * n_anchors * batch),
        recall50=state.recall50 / count,
        recall75=state.recall75 / count,
        count=state.count,
        class_loss=class_loss / batch,
        iou_loss=(sum_sq - class_loss) / batch,
        total_loss=sum_sq / batch,
        total_bbox=state.total_bbox,
        rewritten_bbox=state.rewritten_bbox,
        iou_loss_kind=cfg.iou_loss,
        cost_terms=terms,
    )


def cost_from_terms(box: float, count: float, rest: float) -> float:
    """Darknet's cost of a mini-batch from its (possibly summed over several shards) ``cost_terms``."""
    return box / (count if count else 1) + rest


# ----- the same loss on a CUDA network's device -------------------------------------------------------------
def device_yolo_loss(net, index: int, truths, net_w: int, net_h: int) -> YoloLossResult:
    """:func:`yolo_loss` of head `index` of the last ``net.forward_train`` on a CUDA network, on the device.

    Equal to ``yolo_loss(net.train_output(index), truths, net.layers[index], net_w, net_h)`` (to float32
    rounding, see cuda/NOTES.md) without copying the head's output to the host: the gradient is written into the
    layer's device gradient buffer, where the next ``net.backward_device()`` (or ``net.backward``) starts from
    it, and the result's ``grad`` and ``delta`` are None. Truths are validated on the host as yolo_loss
    validates them (TruthError) and uploaded (small).
    """
    engine = getattr(net, "_cuda", None)
    if engine is None:
        raise DeviceError("device_yolo_loss needs a network on a CUDA device (use yolo_loss on the CPU)")
    index = int(index)
    if not 0 <= index < len(net.layers):
        raise DarknetError(f"device_yolo_loss: layer {index} does not exist (the network has {len(net.layers)})")
    cfg = _config(net.layers[index])
    batch = int(engine.train_batch)
    if batch <= 0:
        raise DarknetError("device_yolo_loss needs a forward_train first")
    if not (net_w > 0 and net_h > 0):
        raise DarknetError(f"yolo_loss: network size {net_w}x{net_h} is not positive")
    net_w, net_h = int(net_w), int(net_h)
    boxes = _check_truths(truths, batch, cfg.classes, cfg.max_boxes)
    slots = max([len(bx) for bx, _ in boxes] + [0])
    packed = np.zeros((batch, slots, 4), np.float64)
    classes = np.zeros((batch, slots), np.int32)
    counts = np.zeros(batch, np.int32)
    for b, (bx, cl) in enumerate(boxes):
        packed[b, : len(bx)] = bx
        classes[b, : len(bx)] = cl
        counts[b] = len(bx)
    options = {
        "classes": cfg.classes,
        "net_w": net_w,
        "net_h": net_h,
        "mask": list(cfg.mask),
        "anchors": [v for pair in cfg.anchors for v in pair],
        "class_multipliers": list(cfg.class_multipliers or ()),
        "ignore_thresh": cfg.ignore_thresh,
        "truth_thresh": cfg.truth_thresh,
        "iou_thresh": cfg.iou_thresh,
        "iou_normalizer": cfg.iou_normalizer,
        "obj_normalizer": cfg.obj_normalizer,
        "cls_normalizer": cfg.cls_normalizer,
        "delta_normalizer": cfg.delta_normalizer,
        "max_delta": cfg.max_delta,
        "clip_max_delta": cfg.max_delta != FLT_MAX,
        "label_smooth_eps": cfg.label_smooth_eps,
        "focal_loss": cfg.focal_loss,
        "new_coords": cfg.new_coords,
        "objectness_smooth": cfg.objectness_smooth,
        "iou_loss": IOU_LOSSES.index(cfg.iou_loss),
        "iou_thresh_kind": IOU_LOSSES.index(cfg.iou_thresh_kind),
    }
    s = engine.yolo_loss(index, options, packed, classes, counts)
    _, h, w = net.layers[index].out_shape
    return _device_result(cfg, s, batch, len(cfg.mask) * h * w)


def _device_result(cfg, s, batch, anchors_per_image):
    """YoloLossResult from the device's sums, with yolo_loss's formulas (step 4 there)."""
    n = int(s["count"])
    count = n if n else 1
    sum_sq = float(s["sum_sq"])
    class_loss = cfg.obj_normalizer * (sum_sq - float(s["box_sq"]))
    if not cfg.show_details or cfg.iou_loss == "mse":
        cost = sum_sq
        terms = (0.0, float(n), sum_sq)
    else:
        per_box = s["tot_giou_loss"] if cfg.iou_loss == "giou" else s["tot_iou_loss"]
        cost = cfg.iou_normalizer * per_box / count + class_loss
        terms = (float(cfg.iou_normalizer * per_box), float(n), float(class_loss))
    return YoloLossResult(
        grad=None,
        delta=None,
        loss=cost,
        avg_iou=s["tot_iou"] / count,
        avg_class=s["avg_cat"] / count,
        avg_obj=s["avg_obj"] / count,
        avg_noobj=s["obj_sum"] / (anchors_per_image * batch),
        recall50=s["recall50"] / count,
        recall75=s["recall75"] / count,
        count=n,
        class_loss=class_loss / batch,
        iou_loss=(sum_sq - class_loss) / batch,
        total_loss=sum_sq / batch,
        total_bbox=int(s["total_bbox"]),
        rewritten_bbox=int(s["rewritten_bbox"]),
        iou_loss_kind=cfg.iou_loss,
        cost_terms=terms,
    )
