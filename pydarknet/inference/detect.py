"""Object detection on images, computed the way Darknet's `detector test` computes it.

The pipeline, step by step (AlexeyAB/darknet semantics):

1. **Image**: decoded to 8-bit RGB (EXIF orientation applied for files, as OpenCV's ``imread`` does in a
   Darknet build with OpenCV), converted to float ``value/255`` and laid out planar (C, H, W).
2. **Resize** to the network input: Darknet's own bilinear ``resize_image`` (scale ``(W-1)/(w-1)``,
   float32 arithmetic, including its handling of the last row and column) -- a stretch by default, or
   ``letterbox_image`` (aspect-preserving integer size ``h*netw/w``, centred, the border filled with 0.5)
   when the cfg says ``[net] letter_box=1`` or when asked.
3. **Forward** through the engine; every ``[yolo]`` layer's output is decoded (``get_yolo_box``:
   ``exp``/anchor sizes, or the quadratic ``new_coords=1`` form).
4. **Thresholds** (``get_yolo_detections``): a cell/anchor is a candidate when ``objectness > thresh``; its
   class probability ``objectness*class`` is kept when ``> thresh`` (else 0).
5. **Letterbox correction** (``correct_yolo_boxes``) maps boxes back to the original image.
6. **NMS** per class, as the last ``[yolo]`` layer's ``nms_kind`` says: ``default`` -> ``do_nms_sort``
   (suppress when IoU > nms), ``greedynms`` -> DIoU with exponent 0.6, ``diounms`` -> DIoU with exponent
   ``beta_nms`` (``diounms_sort``). NMS runs on boxes relative to the original image, as in Darknet.
7. Every class of every box whose probability survived becomes one detection (Darknet's ``-out`` JSON and
   COCO export list them the same way); boxes are in original-image pixels.

**Test-time augmentation** (``tta=True``; not a Darknet feature, Scaled-YOLOv4's ``test.py --augment``): the
image also goes through the network at smaller input sizes, once mirrored, and every pass's candidates are
mapped back to the original image and merged *before* the single NMS of step 6. The passes are Scaled-YOLOv4's
``(scale, flip)`` = ``(1, no)``, ``(0.83, left-right)``, ``(0.67, no)``: a pass prepares the image exactly as
above at ``int(net_w*scale) x int(net_h*scale)``, mirrors it if asked, and places it in the top-left corner of
an input padded to a multiple of the network's stride with 0.447 (Scaled-YOLOv4's fill). The network is the same
cfg and weights built at that input size. Boxes are mapped back with the size actually used
(``int(net_w*scale)/net_w`` rather than ``scale``, which Scaled-YOLOv4 divides by: exact instead of 0.1 % off),
un-mirrored, and letterbox-corrected for that pass; thresholds are those of a plain run.

Usage::

    net = pydarknet.load("cfg/yolov4-tiny.cfg", "yolov4-tiny.weights")
    res = net.detect("bus.jpg")                  # a Results; a list in, a list of Results out
    res.xyxy, res.conf, res.class_id, res.labels
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np

from pydarknet.data.images import (
    letterbox_image,
    letterbox_size,
    load_image,
    preprocess,
    resize_image,
    to_network_channels,
)
from pydarknet.errors import CfgError, DarknetError, ImageError, NonFiniteError
from pydarknet.inference.results import Results

__all__ = [
    "ImageError",
    "Detector",
    "Prepared",
    "detect",
    "load_image",
    "resize_image",
    "letterbox_size",
    "letterbox_image",
    "preprocess",
    "correct_boxes",
    "nms",
    "box_metric",
    "default_names",
    "TTA_PASSES",
    "network_at_size",
]


_F32 = np.float32
# Scaled-YOLOv4's test-time augmentation (models/yolo.py, forward with augment): (scale, mirror left-right).
TTA_PASSES = ((1.0, False), (0.83, True), (0.67, False))
_TTA_FILL = 0.447  # Scaled-YOLOv4 pads the scaled input with this value (ImageNet's mean)


# ----- decoding --------------------------------------------------------------------------------------------
def _yolo_candidates(out, opts, net_w, net_h, thresh):
    """Decode one image's output of one [yolo] layer: (boxes (n,4) relative xywh, objectness (n,), probs (n,C))."""
    classes = opts["classes"]
    mask = opts["mask"]
    anchors = opts["anchors"]
    a = len(mask)
    _, lh, lw = out.shape
    o = out.reshape(a, 5 + classes, lh, lw)
    th = _F32(thresh)
    obj = o[:, 4]  # (A, lh, lw)
    # Darknet walks cells row-major and, in each cell, the anchors in mask order.
    row, col, n = np.nonzero((obj > th).transpose(1, 2, 0))
    objectness = obj[n, row, col]
    x = o[n, 0, row, col]
    y = o[n, 1, row, col]
    tw = o[n, 2, row, col]
    tht = o[n, 3, row, col]
    aw = np.array([anchors[2 * mask[k]] for k in range(a)], np.float64)[n]
    ah = np.array([anchors[2 * mask[k] + 1] for k in range(a)], np.float64)[n]
    boxes = np.empty((len(n), 4), _F32)
    boxes[:, 0] = (col.astype(_F32) + x) / _F32(lw)
    boxes[:, 1] = (row.astype(_F32) + y) / _F32(lh)
    if opts.get("new_coords", 0):
        boxes[:, 2] = tw * tw * _F32(4) * aw.astype(_F32) / _F32(net_w)
        boxes[:, 3] = tht * tht * _F32(4) * ah.astype(_F32) / _F32(net_h)
    else:
        boxes[:, 2] = np.exp(tw.astype(np.float64)) * aw / net_w
        boxes[:, 3] = np.exp(tht.astype(np.float64)) * ah / net_h
    cls = o[n, 5:, row, col] if len(n) else np.zeros((0, classes), _F32)  # (n, C)
    probs = objectness[:, None] * cls
    probs = np.where(probs > th, probs, _F32(0)).astype(_F32)
    return boxes, objectness.astype(_F32), probs


def correct_boxes(boxes, img_w, img_h, net_w, net_h, letterbox):
    """Darknet's ``correct_yolo_boxes``: undo the letterbox (identity for a stretch); boxes stay relative."""
    boxes = np.array(boxes, dtype=_F32, copy=True).reshape(-1, 4)
    if not letterbox:
        return boxes
    new_w, new_h = letterbox_size(img_w, img_h, net_w, net_h)
    deltaw, deltah = float(_F32(net_w - new_w)), float(_F32(net_h - new_h))
    ratiow, ratioh = _F32(new_w) / _F32(net_w), _F32(new_h) / _F32(net_h)
    b = boxes.astype(np.float64)
    boxes[:, 0] = (b[:, 0] - deltaw / 2.0 / net_w) / float(ratiow)
    boxes[:, 1] = (b[:, 1] - deltah / 2.0 / net_h) / float(ratioh)
    boxes[:, 2] = boxes[:, 2] * (_F32(1) / ratiow)
    boxes[:, 3] = boxes[:, 3] * (_F32(1) / ratioh)
    return boxes


def uncorrect_boxes(boxes, img_w, img_h, net_w, net_h):
    """Inverse of :func:`correct_boxes` with letterbox: image-relative boxes -> network-input-relative boxes."""
    boxes = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    new_w, new_h = letterbox_size(img_w, img_h, net_w, net_h)
    rw, rh = new_w / net_w, new_h / net_h
    boxes[:, 0] = boxes[:, 0] * rw + (net_w - new_w) / 2.0 / net_w
    boxes[:, 1] = boxes[:, 1] * rh + (net_h - new_h) / 2.0 / net_h
    boxes[:, 2] *= rw
    boxes[:, 3] *= rh
    return boxes


# ----- NMS -------------------------------------------------------------------------------------------------
def box_metric(a, b, kind="default", beta=0.6):
    """Darknet's overlap measure of box ``a`` (4,) against boxes ``b`` (m, 4), all centre xywh.

    ``default``/``cornersnms``: ``box_iou``; ``greedynms``: ``box_diou`` = IoU - (d^2/c^2)^0.6;
    ``diounms``: ``box_diounms`` = IoU - (d^2/c^2)^beta (d: centre distance, c: enclosing box diagonal).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    al, ar = a[0] - a[2] / 2, a[0] + a[2] / 2
    at, ab = a[1] - a[3] / 2, a[1] + a[3] / 2
    bl, br = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
    bt, bb = b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
    ow = np.minimum(ar, br) - np.maximum(al, bl)
    oh = np.minimum(ab, bb) - np.maximum(at, bt)
    inter = np.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((inter == 0) | (union == 0), 0.0, inter / np.where(union == 0, 1.0, union))
    if kind in ("default", "cornersnms"):
        return iou
    exponent = 0.6 if kind == "greedynms" else float(beta)
    cw = np.maximum(ar, br) - np.minimum(al, bl)
    ch = np.maximum(ab, bb) - np.minimum(at, bt)
    c = cw * cw + ch * ch
    d = (a[0] - b[:, 0]) ** 2 + (a[1] - b[:, 1]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.power(np.where(c == 0, 0.0, d / np.where(c == 0, 1.0, c)), exponent)
    return np.where(c == 0, iou, iou - term)


def nms(boxes, probs, thresh, kind="default", beta=0.6):
    """Darknet's per-class NMS (``do_nms_sort``/``diounms_sort``); returns a copy of ``probs`` with the
    suppressed entries set to 0.

    For each class, candidates are sorted by that class's probability (descending; ties keep their order); a
    box that still has a non-zero probability suppresses every later box whose overlap (see
    :func:`box_metric`) is ``> thresh``. ``thresh`` of 0 or None disables NMS (Darknet's ``if (nms)``).
    """
    probs = np.array(probs, dtype=_F32, copy=True)
    if not thresh or len(probs) == 0:
        return probs
    if kind not in ("default", "greedynms", "diounms", "cornersnms"):
        raise ValueError(f"unknown nms_kind {kind!r} (default, greedynms, diounms)")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for k in range(probs.shape[1]):
        idx = np.flatnonzero(probs[:, k] != 0)
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(-probs[idx, k], kind="stable")]
        alive = np.ones(len(idx), bool)
        for i in range(len(idx) - 1):
            if not alive[i]:
                continue
            rest = np.arange(i + 1, len(idx))
            rest = rest[alive[rest]]
            if len(rest) == 0:
                break
            m = box_metric(boxes[idx[i]], boxes[idx[rest]], kind, beta)
            alive[rest[m > thresh]] = False
        probs[idx[~alive], k] = 0
    return probs


def default_names(classes):
    """Class names for a network without a names file: COCO for 80 classes, VOC for 20, else ``"0", "1"...``."""
    from pydarknet.hub import models

    try:
        if classes == 80:
            return models.read_names(models.find_data_file("coco.names"))
        if classes == 20:
            return models.read_names(models.find_data_file("voc.names"))
    except (OSError, DarknetError):
        pass
    return [str(i) for i in range(classes)]


# ----- test-time augmentation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pass:
    """One test-time-augmentation pass: the image fills ``content_w x content_h`` of an ``input_w x input_h``
    network input (top-left, the rest padded), mirrored left-right when ``flip``."""

    scale: float
    flip: bool
    content_w: int
    content_h: int
    input_w: int
    input_h: int


def _network_stride(net):
    """The largest down-sampling factor from the input to a [yolo] layer (32 for most YOLOs, 64 for P6)."""
    _, h, w = net.input_shape
    strides = [max(w // net.desc.layers[i].out_shape[2], h // net.desc.layers[i].out_shape[1]) for i in net.yolo_layers]
    return max(strides + [1])


def _tta_passes(tta, net_w, net_h, stride):
    passes = TTA_PASSES if tta is True else tta
    try:
        passes = [(float(s), bool(f)) for s, f in passes]
    except (TypeError, ValueError):
        raise ValueError(f"tta must be True or a list of (scale, flip) pairs; got {tta!r}") from None
    out = []
    for scale, flip in passes:
        if not 0 < scale <= 4:
            raise ValueError(f"tta: scale {scale} must be in (0, 4]")
        if scale == 1.0:
            cw, ch, iw, ih = net_w, net_h, net_w, net_h
        else:
            cw, ch = max(1, int(net_w * scale)), max(1, int(net_h * scale))
            iw, ih = (math.ceil(v / stride) * stride for v in (cw, ch))
        out.append(_Pass(scale, flip, cw, ch, iw, ih))
    return out


def network_at_size(net, width, height):
    """``net`` at another input size for a test-time-augmentation pass (:meth:`Network.resized`: the same cfg,
    sharing ``net``'s parameters; ``net`` itself at its own size)."""
    try:
        return net.resized(width, height)
    except DarknetError as e:
        raise DarknetError(f"test-time augmentation needs the network at {width}x{height}: {e}") from None


# ----- non-finite outputs ------------------------------------------------------------------------------------
def _checked_forward(net, x, chunk):
    """``net.forward(x)``, refusing outputs with NaN or infinity: a :class:`NonFiniteError` naming the image and the
    first layer whose output is not finite (found by running that image again through every layer)."""
    outs = net.forward(x)
    if all(np.isfinite(o).all() for o in outs):
        return outs
    for b, prepared in enumerate(chunk):
        if all(np.isfinite(o[b]).all() for o in outs):
            continue
        where = prepared.path or f"image {b} of the batch"
        for i, out in enumerate(net.forward_all(x[b : b + 1])):
            if not np.isfinite(out).all():
                layer = net.desc.layers[i]
                raise NonFiniteError(
                    f"{where}: layer {i} [{layer.type}] ({net.desc.path} line {layer.line}) produced NaN or "
                    f"infinity; check that layer's cfg values and the weights"
                )
        raise NonFiniteError(f"{where}: the network's output holds NaN or infinity")
    return outs


# ----- the detector ----------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One loaded, pre-processed image waiting for the network."""

    image: np.ndarray  # HxWx3 uint8 RGB (kept for plotting)
    tensor: np.ndarray  # (3, net_h, net_w) float32
    path: Optional[str]
    preprocess_ms: float
    tta_tensors: Optional[List[np.ndarray]] = None  # one input per test-time-augmentation pass


class Detector:
    """Runs a network on images and turns its [yolo] outputs into :class:`~pydarknet.results.Results`.

    ``thresh``: Darknet's ``-thresh`` (objectness and class probability must both be above it).
    ``nms``: NMS threshold (Darknet's 0.45; 0 or None disables NMS). ``nms_kind``: overrides the cfg's
    (``default``, ``greedynms``, ``diounms``). ``letterbox``: None follows ``[net] letter_box``; True/False
    force letterbox or stretch. ``names``: class names (default: the network's ``names`` attribute, else COCO
    for 80 classes). ``batch``: images per forward pass (None: up to 8, fewer for networks whose activations
    would take more than about 2 GB). ``tta``: test-time augmentation (see the module doc): True for
    Scaled-YOLOv4's three passes, or a list of ``(scale, flip)`` pairs.

    A Detector (like its network) may be shared by several threads: its settings do not change after
    construction, the networks of the augmentation passes are built here once, and each network's passes take
    turns (see :meth:`Network.forward`), so every call gets what it would get alone.
    """

    def __init__(
        self,
        net,
        *,
        thresh: float = 0.25,
        nms: float = 0.45,
        letterbox: Optional[bool] = None,
        names: Optional[Sequence[str]] = None,
        nms_kind: Optional[str] = None,
        batch: Optional[int] = None,
        tta=False,
    ):
        heads = list(net.yolo_layers)
        if not heads:
            raise DarknetError(f"{net.desc.path}: the network has no [yolo] layer, so it cannot detect objects")
        self.net = net
        self.heads = [net.desc.layers[i].options for i in heads]
        last = self.heads[-1]
        self.classes = last["classes"]
        self.thresh = float(thresh)
        if not 0 <= self.thresh <= 1 or math.isnan(self.thresh):
            raise ValueError(f"thresh must be in [0, 1]; got {thresh}")
        self.nms = float(nms) if nms else 0.0
        self.nms_kind = nms_kind or last.get("nms_kind", "default")
        if self.nms_kind not in ("default", "greedynms", "diounms", "cornersnms"):
            raise ValueError(f"unknown nms_kind {self.nms_kind!r} (default, greedynms, diounms)")
        self.beta_nms = float(last.get("beta_nms", 0.6))
        self.letterbox = bool(net.desc.net.get("letter_box", 0)) if letterbox is None else bool(letterbox)
        if names is None:
            names = getattr(net, "names", None)
        if names is None:
            names = default_names(self.classes)
        names = [str(n) for n in names]
        if len(names) < self.classes:
            raise ValueError(f"{len(names)} class names for a network with {self.classes} classes")
        self.names = names
        if batch is None:
            per_image = 4 * sum(int(np.prod(l.out_shape)) for l in net.desc.layers)
            batch = min(8, (2 << 30) // max(per_image, 1))
        self.batch = max(1, int(batch))
        self.channels, self.net_h, self.net_w = net.input_shape
        if self.channels not in (1, 3, 4):
            raise CfgError(
                f"the network takes channels={self.channels}, which no image has: Darknet's image loader gives "
                f"1 (grey), 3 (RGB) or 4 (RGBA) channels",
                net.desc.path,
            )
        self.passes = _tta_passes(tta, self.net_w, self.net_h, _network_stride(net)) if tta else None
        self._pass_nets = {}
        self._pass_nets_lock = threading.Lock()  # a pass network is built once even when threads ask at once
        if self.passes:
            for p in self.passes:  # built now, so that a cfg that cannot run a pass fails before any image
                self._pass_network(p)

    @property
    def tta(self):
        """The test-time-augmentation passes as ``(scale, flip)`` pairs, or None."""
        return [(p.scale, p.flip) for p in self.passes] if self.passes else None

    def _pass_network(self, p):
        size = (p.input_w, p.input_h)
        with self._pass_nets_lock:
            if size not in self._pass_nets:
                self._pass_nets[size] = network_at_size(self.net, *size)
            return self._pass_nets[size]

    def _pass_input(self, rgb, p, plain):
        if p.scale == 1.0 and not p.flip:
            return plain
        content = plain if p.scale == 1.0 else preprocess(rgb, p.content_w, p.content_h, self.letterbox)
        if p.flip:
            content = content[:, :, ::-1]
        if (p.input_w, p.input_h) == (p.content_w, p.content_h):
            return np.ascontiguousarray(content)
        x = np.full((content.shape[0], p.input_h, p.input_w), _TTA_FILL, _F32)
        x[:, : p.content_h, : p.content_w] = content
        return x

    # -- stages --
    def prepare(self, source):
        """Load and pre-process one image (raises FileNotFoundError / ImageError / ValueError / TypeError).

        The decoded image is converted to the network's channels as Darknet's loader does (see
        :func:`~pydarknet.data.images.to_network_channels`): grey for ``channels=1``, RGBA for ``channels=4``."""
        t0 = time.perf_counter()
        image, path = load_image(source, alpha=self.channels == 4)
        pixels = to_network_channels(image, self.channels)
        rgb = np.ascontiguousarray(image[:, :, :3]) if image.shape[2] != 3 else image
        tensor = preprocess(pixels, self.net_w, self.net_h, self.letterbox)
        passes = [self._pass_input(pixels, p, tensor) for p in self.passes] if self.passes else None
        return Prepared(rgb, tensor, path, (time.perf_counter() - t0) * 1e3, passes)

    def infer(self, prepared: Sequence[Prepared]):
        """Run prepared images through the network (in chunks of ``batch``); one Results per image."""
        results = []
        for start in range(0, len(prepared), self.batch):
            chunk = list(prepared[start : start + self.batch])
            t0 = time.perf_counter()
            if self.passes:
                if any(p.tta_tensors is None for p in chunk):
                    raise ValueError(
                        "these images were prepared without test-time augmentation; prepare them with this detector"
                    )
                pass_outs = []
                for k, ps in enumerate(self.passes):
                    net, x = self._pass_network(ps), np.stack([p.tta_tensors[k] for p in chunk])
                    pass_outs.append(_checked_forward(net, x, chunk))
            else:
                outs = _checked_forward(self.net, np.stack([p.tensor for p in chunk]), chunk)
            infer_ms = (time.perf_counter() - t0) * 1e3 / len(chunk)
            for b, p in enumerate(chunk):
                t1 = time.perf_counter()
                if self.passes:
                    res = self.postprocess_tta([[o[b] for o in outs] for outs in pass_outs], p.image, p.path)
                else:
                    res = self.postprocess([o[b] for o in outs], p.image, p.path)
                res.speed = {
                    "preprocess": p.preprocess_ms,
                    "inference": infer_ms,
                    "postprocess": (time.perf_counter() - t1) * 1e3,
                }
                results.append(res)
        return results

    def _candidates(self, outputs, net_w, net_h, path=None):
        """All [yolo] heads of one image decoded: boxes relative to an ``net_w x net_h`` input, objectness, probs.

        A box that does not decode to finite numbers (``exp`` of a huge width or height output overflows) raises
        :class:`NonFiniteError` naming the [yolo] layer, rather than reaching NMS and the results as inf/NaN."""
        boxes, objs, probs = [], [], []
        for out, opts, index in zip(outputs, self.heads, self.net.yolo_layers):
            with np.errstate(over="ignore", invalid="ignore"):
                b, o, p = _yolo_candidates(np.asarray(out, _F32), opts, net_w, net_h, self.thresh)
            if not (np.isfinite(b).all() and np.isfinite(p).all()):
                layer = self.net.desc.layers[index]
                raise NonFiniteError(
                    f"{path or 'image'}: layer {index} [yolo] ({self.net.desc.path} line {layer.line}) decodes to "
                    f"boxes that are not finite numbers (the exp() of its width/height outputs overflows): the "
                    f"weights or the cfg produce absurd values"
                )
            boxes.append(b)
            objs.append(o)
            probs.append(p)
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), _F32)
        objs = np.concatenate(objs) if objs else np.zeros(0, _F32)
        probs = np.concatenate(probs) if probs else np.zeros((0, self.classes), _F32)
        return boxes, objs, probs

    def pass_candidates(self, outputs, p, img_w, img_h, path=None):
        """One augmentation pass's candidates with boxes relative to the original image (before NMS)."""
        boxes, objs, probs = self._candidates(outputs, p.input_w, p.input_h, path)
        b = boxes.astype(np.float64)
        # relative to the padded input -> relative to the part the image fills
        b[:, 0] *= p.input_w / p.content_w
        b[:, 2] *= p.input_w / p.content_w
        b[:, 1] *= p.input_h / p.content_h
        b[:, 3] *= p.input_h / p.content_h
        if p.flip:
            b[:, 0] = 1.0 - b[:, 0]
        boxes = correct_boxes(b.astype(_F32), img_w, img_h, p.content_w, p.content_h, self.letterbox)
        return boxes, objs, probs

    def postprocess_tta(self, pass_outputs, image, path=None, image_size=None):
        """Merge the augmentation passes' outputs of one image (one list of head outputs per pass) into a
        Results: candidates mapped back to the image, then one NMS over all of them."""
        from pydarknet.inference.results import Results

        img_w, img_h = (image.shape[1], image.shape[0]) if image is not None else image_size
        parts = [self.pass_candidates(outs, p, img_w, img_h, path) for outs, p in zip(pass_outputs, self.passes)]
        boxes = np.concatenate([q[0] for q in parts])
        objs = np.concatenate([q[1] for q in parts])
        probs = np.concatenate([q[2] for q in parts])
        probs = nms(boxes, probs, self.nms, self.nms_kind, self.beta_nms)
        return Results.from_darknet(
            boxes, objs, probs, names=self.names, image=image, path=path, image_size=(img_w, img_h)
        )

    def postprocess(self, outputs, image, path=None, image_size=None):
        """Decode one image's [yolo] outputs (one (A*(5+C), h, w) array per head) into a Results."""
        from pydarknet.inference.results import Results

        if image is not None:
            img_h, img_w = image.shape[:2]
        else:
            img_w, img_h = image_size
        boxes, objs, probs = self._candidates(outputs, self.net_w, self.net_h, path)
        boxes = correct_boxes(boxes, img_w, img_h, self.net_w, self.net_h, self.letterbox)
        probs = nms(boxes, probs, self.nms, self.nms_kind, self.beta_nms)
        return Results.from_darknet(
            boxes, objs, probs, names=self.names, image=image, path=path, image_size=(img_w, img_h)
        )

    def __call__(self, images) -> Union[Results, List[Results]]:
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = self.infer([self.prepare(s) for s in items])
        return results[0] if single else results


def detect(
    net,
    images,
    *,
    thresh: float = 0.25,
    nms: float = 0.45,
    letterbox: Optional[bool] = None,
    names: Optional[Sequence[str]] = None,
    nms_kind: Optional[str] = None,
    batch: Optional[int] = None,
    tta=False,
) -> Union[Results, List[Results]]:
    """Detect objects in one image or a list of images (paths, PIL images or HxWx3 uint8 RGB arrays).

    Returns a :class:`~pydarknet.results.Results` for a single image, a list of them for a list. All images
    are resized to the network input, so a list runs through the network in batches of ``batch`` (see
    :class:`Detector`).
    See :class:`Detector` for the options (``tta=True``: test-time augmentation).
    """
    det = Detector(
        net, thresh=thresh, nms=nms, letterbox=letterbox, names=names, nms_kind=nms_kind, batch=batch, tta=tta
    )
    return det(images)
