"""Detection metrics: Darknet's mAP (``detector map``) and COCO's (pycocotools), on the same detections.

**Darknet's mAP** (AlexeyAB ``validate_detector_map``):

* Matching happens per image *before* ranking: each detection is bound to the single ground-truth box of the same
  class with the highest IoU, if that IoU is ``> iou_thresh``. All detections of a class are then sorted by score
  (over all images); a detection is a TP when its bound ground truth has not been taken by a higher-scoring
  detection, else an FP (VOC-devkit style). pycocotools instead lets a detection whose best ground truth is taken
  fall back to the next unmatched one above the threshold, so the two can disagree in crowded scenes.
* AP per class from the cumulative precision/recall: ``points=0`` (default) is the area under the monotone
  precision envelope over all recall points; ``points=N`` (11: VOC2007, 101: COCO-like) is the mean over
  ``r = i/(N-1)`` of the maximum precision at recall ``>= r``.
* mAP is the mean over **all** classes; a class without ground truth counts as AP 0.
* At the confidence threshold ``thresh`` (0.25): precision, recall, F1, TP/FP/FN and Darknet's "average IoU"
  (the summed IoU of the TPs divided by TP+FP).
* "Difficult" ground truth (the ``.data`` key ``difficult``, VOC2007): kept apart from the ordinary boxes, so it
  is never a TP nor a FN. A detection bound to no ordinary box but overlapping a difficult box of its class with
  IoU ``> iou_thresh`` is dropped from the ranking (it is not an FP for the AP). Darknet still counts such a
  detection as an FP in the numbers at ``thresh`` (its threshold bookkeeping runs after the drop); so do we.
* The precision/recall curves behind the APs are in the result: per class (``recall_curve``,
  ``precision_curve``, ``score_curve``, in rank order) and ``overall``, all classes ranked together (the
  threshold numbers above are the point of that curve at ``thresh``). :func:`plot_pr_curves` draws them.

**COCO metrics**: pycocotools' ``COCOeval`` (bbox) on the same detections, with the ground truth converted to a
COCO dataset (category id = class index + 1, or ``category_ids[class]``; area = w*h; difficult boxes become
``iscrowd=1`` regions, pycocotools' way of ignoring an object). Values of -1 are pycocotools' "no ground truth
in this range". When the ground truth came from a COCO annotation file, pass that file's dataset as
``coco_ground_truth``: pycocotools then evaluates against it unchanged (its own areas, crowd regions and image
ids), restricted to the images added and the categories the classes map to.

Boxes everywhere are ``x1, y1, x2, y2`` in pixels. Typical use::

    ev = Evaluator(num_classes=80, names=names)
    for each image: ev.add(gt_boxes, gt_classes, det_boxes, det_scores, det_classes, width=w, height=h)
    metrics = ev.compute()            # {"map": ..., "coco": {...}, "per_class": [...], ...}
"""

from __future__ import annotations

import contextlib
import io
from typing import List, Optional, Sequence

import numpy as np

from pydarknet.data.labels import label_path

__all__ = [
    "Evaluator",
    "evaluate",
    "average_precision",
    "box_iou",
    "yolo_to_xyxy",
    "label_path_for",
    "coco_eval",
    "COCO_KEYS",
    "format_report",
    "plot_pr_curves",
]

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ----- boxes and labels ------------------------------------------------------------------------------------
def box_iou(a, b):
    """IoU matrix between boxes ``a`` (n,4) and ``b`` (m,4), ``x1 y1 x2 y2`` (continuous, no +1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def yolo_to_xyxy(rows, width, height):
    """YOLO label rows ``class cx cy w h`` (relative) -> ``(boxes xyxy pixels (n,4), classes (n,))``."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    cls = rows[:, 0].astype(np.int64)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), cls


# Darknet's label-path rules live in one place, shared with training and calc-anchors.
label_path_for = label_path


# ----- AP ----------------------------------------------------------------------------------------------------
def average_precision(recall, precision, points=0):
    """Darknet's AP from cumulative recall/precision in rank order (see the module doc)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    if points == 0:
        mrec = np.concatenate([[0.0], recall])
        mpre = np.concatenate([[0.0], precision])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope
        return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
    if points < 2:
        raise ValueError(f"points={points}: use 0 (all points) or N >= 2 (e.g. 11 or 101)")
    total = 0.0
    for i in range(points):
        r = i / (points - 1)
        ok = recall >= r
        total += float(precision[ok].max()) if ok.any() else 0.0
    return total / points


# ----- evaluator ---------------------------------------------------------------------------------------------
def _as_dets(det):
    """``Results`` or ``(boxes, scores, classes)`` -> three arrays."""
    if hasattr(det, "xyxy") and hasattr(det, "conf"):
        return (
            np.asarray(det.xyxy, dtype=np.float64).reshape(-1, 4),
            np.asarray(det.conf, dtype=np.float64),
            np.asarray(det.class_id, dtype=np.int64),
        )
    boxes, scores, classes = det
    return (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores, dtype=np.float64).reshape(-1),
        np.asarray(classes, dtype=np.int64).reshape(-1),
    )


class Evaluator:
    """Accumulates ground truth and detections image by image; :meth:`compute` gives the metrics dict.

    ``category_ids``: COCO category id of each class (default ``class + 1``). ``coco_ground_truth``: a COCO
    annotation dataset (dict) to hand to pycocotools as it is, instead of converting the added boxes; the
    ``image_id`` given to :meth:`add` must then be that dataset's ids.
    """

    def __init__(
        self,
        num_classes,
        names: Optional[Sequence[str]] = None,
        *,
        category_ids: Optional[Sequence[int]] = None,
        coco_ground_truth: Optional[dict] = None,
    ):
        self.num_classes = int(num_classes)
        self.names = list(names) if names is not None else [str(i) for i in range(self.num_classes)]
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} names for {self.num_classes} classes")
        self.category_ids = (
            [c + 1 for c in range(self.num_classes)] if category_ids is None else [int(c) for c in category_ids]
        )
        if len(self.category_ids) != self.num_classes:
            raise ValueError(f"{len(self.category_ids)} category ids for {self.num_classes} classes")
        self.coco_ground_truth = coco_ground_truth
        self.images: List[dict] = []

    def _check_classes(self, classes, what):
        bad = classes[(classes < 0) | (classes >= self.num_classes)]
        if bad.size:
            raise ValueError(f"{what} class {int(bad[0])} out of range 0..{self.num_classes - 1}")

    def add(
        self,
        gt_boxes,
        gt_classes,
        det_boxes=None,
        det_scores=None,
        det_classes=None,
        *,
        width=None,
        height=None,
        image_id=None,
        detections=None,
        difficult_boxes=None,
        difficult_classes=None,
    ):
        """Add one image: GT boxes (n,4 xyxy pixels) and classes; detections as arrays or ``detections=Results``;
        optionally difficult GT boxes and classes (see the module doc)."""
        gb = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gc = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
        hb = np.asarray(difficult_boxes if difficult_boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(
            -1, 4
        )
        hc = np.asarray(difficult_classes if difficult_classes is not None else [], dtype=np.int64).reshape(-1)
        if detections is not None:
            db, ds, dc = _as_dets(detections)
            if width is None and getattr(detections, "image_size", None) is not None:
                width, height = detections.image_size
        else:
            db, ds, dc = _as_dets(
                (
                    det_boxes if det_boxes is not None else np.zeros((0, 4)),
                    det_scores if det_scores is not None else [],
                    det_classes if det_classes is not None else [],
                )
            )
        if len(gb) != len(gc) or len(hb) != len(hc) or not (len(db) == len(ds) == len(dc)):
            raise ValueError("boxes, scores and classes must have the same length")
        self._check_classes(gc, "ground-truth")
        self._check_classes(hc, "difficult ground-truth")
        if width is None:
            allb = np.concatenate([gb, hb, db]) if len(gb) + len(hb) + len(db) else np.zeros((1, 4))
            width, height = float(max(1.0, allb[:, 2].max())), float(max(1.0, allb[:, 3].max()))
        self.images.append(
            dict(
                gt_boxes=gb,
                gt_classes=gc,
                difficult_boxes=hb,
                difficult_classes=hc,
                det_boxes=db,
                det_scores=ds,
                det_classes=dc,
                width=float(width),
                height=float(height),
                image_id=image_id if image_id is not None else len(self.images) + 1,
            )
        )

    # Darknet-style -------------------------------------------------------------------------------------------
    _DIFFICULT = -2  # bound-GT marker of a detection that only a difficult box explains

    def _match(self, iou_thresh):
        """Per detection: (image index, class, score, bound GT index, -1 or _DIFFICULT, its IoU)."""
        rows = []
        for k, im in enumerate(self.images):
            gb, gc = im["gt_boxes"], im["gt_classes"]
            hb, hc = im["difficult_boxes"], im["difficult_classes"]
            n = len(im["det_boxes"])
            ious = box_iou(im["det_boxes"], gb) if len(gb) else np.zeros((n, 0))
            hard = box_iou(im["det_boxes"], hb) if len(hb) else np.zeros((n, 0))
            for i in range(n):
                c = int(im["det_classes"][i])
                best, best_iou = -1, 0.0
                for j in range(len(gb)):
                    if gc[j] == c and ious[i, j] > iou_thresh and ious[i, j] > best_iou:
                        best, best_iou = j, float(ious[i, j])
                if best < 0 and np.any((hc == c) & (hard[i] > iou_thresh)):
                    best = self._DIFFICULT
                rows.append((k, c, float(im["det_scores"][i]), best, best_iou))
        return rows

    def darknet_metrics(self, iou_thresh=0.5, points=0, thresh=0.25):
        """``(mAP, per-class list, numbers at thresh, overall curve)`` as Darknet's ``detector map`` computes them."""
        rows = self._match(iou_thresh)
        n_gt = np.zeros(self.num_classes, dtype=np.int64)
        for im in self.images:
            np.add.at(n_gt, im["gt_classes"], 1)
        order = sorted(range(len(rows)), key=lambda r: -rows[r][2])  # stable: ties keep input order
        taken = set()
        per_class_flags = [[] for _ in range(self.num_classes)]
        per_class_scores = [[] for _ in range(self.num_classes)]
        all_flags, all_scores = [], []
        for r in order:
            k, c, s, j, _ = rows[r]
            if c < 0 or c >= self.num_classes or j == self._DIFFICULT:
                continue
            hit = 1 if j >= 0 and (k, j) not in taken else 0
            if hit:
                taken.add((k, j))
            per_class_flags[c].append(hit)
            per_class_scores[c].append(s)
            all_flags.append(hit)
            all_scores.append(s)
        per_class = []
        for c in range(self.num_classes):
            rec, prec = _pr_curve(per_class_flags[c], n_gt[c])
            ap = average_precision(rec, prec, points) if n_gt[c] > 0 else 0.0
            flags = per_class_flags[c]
            per_class.append(
                dict(
                    class_id=c,
                    name=self.names[c],
                    ap=ap,
                    tp=int(sum(flags)),
                    fp=int(len(flags) - sum(flags)),
                    gt=int(n_gt[c]),
                    recall_curve=rec.tolist(),
                    precision_curve=prec.tolist(),
                    score_curve=list(per_class_scores[c]),
                )
            )
        total_gt = int(n_gt.sum())
        rec, prec = _pr_curve(all_flags, total_gt)
        overall = dict(recall_curve=rec.tolist(), precision_curve=prec.tolist(), score_curve=all_scores, gt=total_gt)
        # at the confidence threshold (Darknet's tp_for_thresh / fp_for_thresh / avg_iou)
        tp_t = fp_t = 0
        iou_sum = 0.0
        taken_t = set()
        for r in order:
            k, c, s, j, iou = rows[r]
            if s <= thresh:
                continue
            if j >= 0 and (k, j) not in taken_t:
                taken_t.add((k, j))
                tp_t += 1
                iou_sum += iou
            else:
                fp_t += 1
        fn_t = total_gt - tp_t
        precision = tp_t / (tp_t + fp_t) if tp_t + fp_t else 0.0
        recall = tp_t / total_gt if total_gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        mean_ap = float(np.mean([p["ap"] for p in per_class])) if per_class else 0.0
        at_thresh = dict(
            thresh=thresh,
            precision=precision,
            recall=recall,
            f1=f1,
            tp=tp_t,
            fp=fp_t,
            fn=fn_t,
            avg_iou=iou_sum / (tp_t + fp_t) if tp_t + fp_t else 0.0,
        )
        return mean_ap, per_class, at_thresh, overall

    # COCO ----------------------------------------------------------------------------------------------------
    def _coco_detections(self):
        """The detections as COCO results, clipped to the image as Darknet's COCO export (``detector valid``) and
        :meth:`Results.to_coco` clip them, so that pycocotools scores here what it scores on ``valid``'s json
        (Darknet's own mAP keeps the unclipped boxes, as ``detector map`` does)."""
        dets = []
        for im in self.images:
            w, h = im["width"], im["height"]
            for b, s, c in zip(im["det_boxes"], im["det_scores"], im["det_classes"]):
                x1, y1 = min(max(float(b[0]), 0.0), w), min(max(float(b[1]), 0.0), h)
                x2, y2 = min(max(float(b[2]), 0.0), w), min(max(float(b[3]), 0.0), h)
                dets.append(
                    dict(
                        image_id=im["image_id"],
                        category_id=self.category_ids[int(c)],
                        bbox=[x1, y1, x2 - x1, y2 - y1],
                        score=float(s),
                    )
                )
        return dets

    def coco_datasets(self):
        """``(ground-truth dataset dict, detection list)`` in COCO format (see the module doc)."""
        images, anns = [], []
        for im in self.images:
            images.append(dict(id=im["image_id"], width=im["width"], height=im["height"]))
            for boxes, classes, crowd in (
                (im["gt_boxes"], im["gt_classes"], 0),
                (im["difficult_boxes"], im["difficult_classes"], 1),
            ):
                for b, c in zip(boxes, classes):
                    w, h = float(b[2] - b[0]), float(b[3] - b[1])
                    anns.append(
                        dict(
                            id=len(anns) + 1,
                            image_id=im["image_id"],
                            category_id=self.category_ids[int(c)],
                            bbox=[float(b[0]), float(b[1]), w, h],
                            area=w * h,
                            iscrowd=crowd,
                        )
                    )
        cats = [dict(id=self.category_ids[c], name=self.names[c]) for c in range(self.num_classes)]
        return dict(info={}, licenses=[], images=images, annotations=anns, categories=cats), self._coco_detections()

    def coco_metrics(self):
        """pycocotools' twelve numbers on the added images (see the module doc for the ground truth used)."""
        if self.coco_ground_truth is None:
            gt, dets = self.coco_datasets()
            return coco_eval(gt, dets)
        return coco_eval(
            self.coco_ground_truth,
            self._coco_detections(),
            image_ids=[im["image_id"] for im in self.images],
            category_ids=self.category_ids,
        )

    def compute(self, iou_thresh=0.5, points=0, thresh=0.25, coco=True):
        """The metrics dict: ``map``, ``coco``, ``per_class``, ``overall``, ``at_thresh`` and the settings."""
        mean_ap, per_class, at_thresh, overall = self.darknet_metrics(iou_thresh, points, thresh)
        out = dict(
            map=mean_ap,
            iou_thresh=iou_thresh,
            points=points,
            images=len(self.images),
            at_thresh=at_thresh,
            per_class=per_class,
            overall=overall,
            coco=None,
        )
        if coco:
            out["coco"] = self.coco_metrics()
        return out


def _pr_curve(flags, n_gt):
    """Cumulative (recall, precision) in rank order from TP(1)/FP(0) flags; recall 0 where there is no GT."""
    flags = np.asarray(flags, dtype=np.float64)
    tp = np.cumsum(flags)
    fp = np.cumsum(1 - flags)
    prec = tp / np.maximum(tp + fp, 1e-12) if flags.size else flags
    rec = tp / n_gt if n_gt > 0 else np.zeros_like(tp)
    return rec, prec


def coco_eval(gt_dataset, detections, image_ids=None, category_ids=None):
    """pycocotools' bbox evaluation; returns ``{AP, AP50, ..., ARl}`` (pycocotools' stats, -1 = undefined).

    ``image_ids`` / ``category_ids`` restrict the evaluation (pycocotools' ``params.imgIds`` / ``catIds``)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO metrics need pycocotools: pip install pycocotools") from None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        img_ids = sorted(gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
        cat_ids = sorted(gt.getCatIds()) if category_ids is None else sorted(set(category_ids))
        has_gt = any(not a.get("iscrowd", 0) for a in gt.loadAnns(gt.getAnnIds(imgIds=img_ids, catIds=cat_ids)))
        if not detections or not has_gt:
            # pycocotools cannot load an empty result list: nothing detected -> 0, nothing to find -> -1
            return dict(zip(COCO_KEYS, [0.0 if has_gt else -1.0] * 12))
        dt = gt.loadRes(list(detections))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = img_ids
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(COCO_KEYS, (float(v) for v in ev.stats)))


def evaluate(
    ground_truth, detections, num_classes, names=None, *, iou_thresh=0.5, points=0, thresh=0.25, coco=True, sizes=None
):
    """One-call form: ``ground_truth`` a list of ``(boxes, classes)`` per image, ``detections`` a list of
    ``Results`` or ``(boxes, scores, classes)``; ``sizes`` optional ``(width, height)`` per image."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection sets")
    ev = Evaluator(num_classes, names)
    for k, ((gb, gc), det) in enumerate(zip(ground_truth, detections)):
        w, h = sizes[k] if sizes is not None else (None, None)
        if hasattr(det, "xyxy"):
            ev.add(gb, gc, detections=det, width=w, height=h)
        else:
            db, ds, dc = det
            ev.add(gb, gc, db, ds, dc, width=w, height=h)
    return ev.compute(iou_thresh=iou_thresh, points=points, thresh=thresh, coco=coco)


def format_report(metrics) -> str:
    """The printed report: per-class table, the threshold line and the two headline numbers.

    Each part says which threshold it uses: the per-class AP, TP and FP count every detection the model kept (down
    to the detection threshold, ``settings["conf_thresh"]`` when the metrics carry it, e.g. map's ``--conf``
    0.005), the precision/recall line only those above ``at_thresh["thresh"]`` (map's ``--thresh`` 0.25)."""
    iou = metrics["iou_thresh"]
    settings = metrics.get("settings") or {}
    if settings.get("conf_thresh") is not None:
        kept = f"every detection with confidence >= {settings['conf_thresh']:g} (--conf)"
        if settings.get("nms") is not None:
            kept += f", after NMS {settings['nms']:g}"
    else:
        kept = "every detection given"
    lines = [
        f"per class: AP, TP and FP over {kept}, matched at IoU {iou:.2f}",
        f"{'id':>3s} {'class':20s} {'AP':>7s} {'TP':>6s} {'FP':>6s} {'GT':>6s}",
    ]
    for p in metrics["per_class"]:
        if p["gt"] == 0 and p["tp"] + p["fp"] == 0 and len(metrics["per_class"]) > 20:
            continue
        lines.append(
            f"{p['class_id']:3d} {p['name'][:20]:20s} {100 * p['ap']:6.2f}% {p['tp']:6d} {p['fp']:6d} {p['gt']:6d}"
        )
    t = metrics["at_thresh"]
    lines.append(
        f"for conf_thresh = {t['thresh']:.2f} (--thresh; IoU {iou:.2f}): precision = {t['precision']:.2f}, "
        f"recall = {t['recall']:.2f}, "
        f"F1-score = {t['f1']:.2f}; TP = {t['tp']}, FP = {t['fp']}, FN = {t['fn']}, "
        f"average IoU = {100 * t['avg_iou']:.2f} %"
    )
    pts = metrics["points"]
    style = "area under the envelope" if pts == 0 else f"{pts}-point"
    lines.append(
        f"Darknet mAP@{metrics['iou_thresh']:.2f} ({style}, {len(metrics['per_class'])} classes): "
        f"{metrics['map']:.4f} ({100 * metrics['map']:.2f} %)"
    )
    c = metrics.get("coco")
    if c:
        lines.append(
            f"COCO (pycocotools) AP@[.50:.95] = {c['AP']:.4f}   AP50 = {c['AP50']:.4f}   AP75 = {c['AP75']:.4f}"
            f"   APs/APm/APl = {c['APs']:.3f}/{c['APm']:.3f}/{c['APl']:.3f}   "
            f"AR1/AR10/AR100 = {c['AR1']:.3f}/{c['AR10']:.3f}/{c['AR100']:.3f}"
        )
    return "\n".join(lines)


def plot_pr_curves(metrics, path=None, *, max_legend=20):
    """Draw the precision/recall curves of a :meth:`Evaluator.compute` result and save them as a PNG at ``path``.

    One line per class that has ground truth (the ``recall_curve``/``precision_curve`` its AP was computed
    from; legend: name and AP, best first, at most ``max_legend`` entries), the overall curve (all classes
    ranked together) dashed in black, and a dot at the numbers printed for ``thresh``. Each line's ``gid`` names
    what it shows (``class:<id>``, ``overall``, ``at_thresh``). Drawn with matplotlib's Agg canvas (no window, no
    global pyplot state); returns the Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    present = sorted((p for p in metrics["per_class"] if p["gt"] > 0), key=lambda p: (-p["ap"], p["class_id"]))
    for rank, p in enumerate(present):
        label = f"{p['name'][:24]} {p['ap']:.3f}" if rank < max_legend else None
        (line,) = ax.plot(p["recall_curve"], p["precision_curve"], linewidth=1.2, alpha=0.85, label=label)
        line.set_gid(f"class:{p['class_id']}")
    overall = metrics.get("overall")
    if overall is not None:
        # dashed, so that class curves lying on it stay visible
        (line,) = ax.plot(
            overall["recall_curve"],
            overall["precision_curve"],
            color="black",
            linewidth=2.2,
            linestyle="--",
            label="all classes ranked together",
        )
        line.set_gid("overall")
    t = metrics.get("at_thresh")
    if t is not None:
        (line,) = ax.plot(
            [t["recall"]],
            [t["precision"]],
            "o",
            color="black",
            markersize=7,
            label=f"conf > {t['thresh']:g}: P {t['precision']:.2f} R {t['recall']:.2f}",
        )
        line.set_gid("at_thresh")
    pts = metrics.get("points", 0)
    style = "area under the envelope" if pts == 0 else f"{pts}-point"
    ax.set_title(
        f"Precision-recall, IoU > {metrics['iou_thresh']:.2f}: Darknet mAP {metrics['map']:.4f} "
        f"({style}, {len(metrics['per_class'])} classes)",
        fontsize=10,
    )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png")
    return fig
