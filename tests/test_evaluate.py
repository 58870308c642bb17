"""Darknet-style mAP and COCO metrics on hand-built cases whose answers are known; the precision/recall curves
against a loop-by-loop reference and their PNG; Darknet's difficult ground truth."""

import contextlib
import io
import json

import numpy as np
import pytest

from pydarknet.evaluation.metrics import (
    COCO_KEYS,
    Evaluator,
    average_precision,
    box_iou,
    evaluate,
    format_report,
    label_path_for,
    plot_pr_curves,
    yolo_to_xyxy,
)

pytest.importorskip("pycocotools")


def _one(gt_boxes, gt_cls, det_boxes, det_scores, det_cls, num_classes=1, **kw):
    return evaluate([(gt_boxes, gt_cls)], [(det_boxes, det_scores, det_cls)], num_classes, sizes=[(200, 200)], **kw)


def _coco_direct(ev, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = ev.coco_datasets()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "gt.json"))
        cd = cg.loadRes(str(tmp_path / "dt.json"))
        e = COCOeval(cg, cd, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return dict(zip(COCO_KEYS, e.stats.tolist()))


def test_iou_and_yolo_conversion():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    boxes, cls = yolo_to_xyxy([[2, 0.5, 0.25, 0.5, 0.5]], 200, 100)
    np.testing.assert_allclose(boxes, [[50, 0, 150, 50]])
    assert cls.tolist() == [2]


def test_perfect_detections_give_one_in_both_styles():
    gts, dets = [], []
    for k in range(3):
        b = np.array([[10 + k, 20, 60 + k, 90], [100, 100, 180, 150 + k]], dtype=float)
        c = np.array([0, 1])
        gts.append((b, c))
        dets.append((b, [0.9, 0.8], c))
    for points in (0, 11, 101):
        m = evaluate(gts, dets, 2, sizes=[(200, 200)] * 3, points=points)
        assert m["map"] == pytest.approx(1.0)
        assert all(p["ap"] == pytest.approx(1.0) and p["fp"] == 0 and p["tp"] == 3 for p in m["per_class"])
    assert m["coco"]["AP"] == pytest.approx(1.0)
    assert m["coco"]["AP50"] == pytest.approx(1.0)
    assert m["coco"]["AR100"] == pytest.approx(1.0)
    t = m["at_thresh"]
    assert (t["tp"], t["fp"], t["fn"]) == (6, 0, 0)
    assert t["precision"] == t["recall"] == t["f1"] == pytest.approx(1.0)
    assert t["avg_iou"] == pytest.approx(1.0)
    assert set(m) >= {"map", "coco", "per_class"}


def test_shifted_boxes():
    gt = [[0, 0, 100, 100]]
    small = _one(gt, [0], [[20, 0, 120, 100]], [0.9], [0])  # IoU 80/120 = 0.667
    assert small["map"] == pytest.approx(1.0)
    assert small["at_thresh"]["avg_iou"] == pytest.approx(80 / 120)
    assert _one(gt, [0], [[20, 0, 120, 100]], [0.9], [0], iou_thresh=0.7)["map"] == 0.0
    big = _one(gt, [0], [[40, 0, 140, 100]], [0.9], [0])  # IoU 60/140 = 0.43
    assert big["map"] == 0.0
    assert (big["at_thresh"]["tp"], big["at_thresh"]["fp"], big["at_thresh"]["fn"]) == (0, 1, 1)
    assert big["coco"]["AP50"] == pytest.approx(0.0)
    # a box below the confidence threshold counts in the AP but not in the TP/FP at --thresh
    low = _one(gt, [0], [[0, 0, 100, 100]], [0.1], [0])
    assert low["map"] == pytest.approx(1.0)
    assert (low["at_thresh"]["tp"], low["at_thresh"]["fn"]) == (0, 1)


def test_duplicates_and_point_styles():
    g = [[10, 10, 60, 60]]
    gts = [(g, [0]), (g, [0])]
    dets = [([g[0], g[0]], [0.9, 0.8], [0, 0]), (g, [0.7], [0])]
    # ranked: TP, FP (duplicate), TP -> recall .5 .5 1, precision 1 .5 .667
    m0 = evaluate(gts, dets, 1, sizes=[(100, 100)] * 2, points=0)
    assert m0["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert (m0["per_class"][0]["tp"], m0["per_class"][0]["fp"], m0["per_class"][0]["gt"]) == (2, 1, 2)
    m11 = evaluate(gts, dets, 1, sizes=[(100, 100)] * 2, points=11)
    assert m11["map"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    m101 = evaluate(gts, dets, 1, sizes=[(100, 100)] * 2, points=101)
    assert m101["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # pycocotools' AP50 is the same 101-point interpolation here
    assert m0["coco"]["AP50"] == pytest.approx(m101["map"])


def test_average_precision_by_hand():
    assert average_precision([], [], 0) == 0.0
    assert average_precision([0.5, 1.0], [1.0, 0.5], 0) == pytest.approx(0.75)
    assert average_precision([0.5, 1.0], [1.0, 0.5], 11) == pytest.approx((6 + 5 * 0.5) / 11)
    with pytest.raises(ValueError):
        average_precision([1.0], [1.0], 1)


def test_missing_classes_count_zero_in_darknet_not_in_coco():
    b = [[10, 10, 50, 50], [60, 60, 120, 120]]
    m = _one(b, [0, 1], b, [0.9, 0.9], [0, 1], num_classes=3)
    assert [p["ap"] for p in m["per_class"]] == pytest.approx([1.0, 1.0, 0.0])
    assert m["per_class"][2]["gt"] == 0
    assert m["map"] == pytest.approx(2 / 3)
    assert m["coco"]["AP"] == pytest.approx(1.0)  # pycocotools skips categories without ground truth
    # a class with GT but no detection: AP 0 in both
    m = _one(b, [0, 1], b[:1], [0.9], [0], num_classes=2)
    assert m["map"] == pytest.approx(0.5)
    assert m["coco"]["AP50"] == pytest.approx(0.5)


def test_darknet_one_best_gt_rule_disagrees_with_pycocotools():
    # two overlapping GTs; the second detection's best GT is already taken by the first detection.
    g1, g2 = [0, 0, 10, 10], [2, 0, 12, 10]
    d1, d2 = [0, 0, 10, 10], [0.5, 0, 10.5, 10]  # d2: IoU .905 with g1, .739 with g2
    assert box_iou([d2], [g1, g2])[0].tolist() == pytest.approx([95 / 105, 85 / 115])
    m = _one([g1, g2], [0, 0], [d1, d2], [0.9, 0.8], [0, 0])
    # Darknet: d2 stays bound to g1 -> FP; g2 never found -> recall .5, AP .5
    assert (m["per_class"][0]["tp"], m["per_class"][0]["fp"]) == (1, 1)
    assert m["map"] == pytest.approx(0.5)
    # pycocotools: d2 falls back to the unmatched g2 (IoU .739 >= .5) -> all found at IoU .5
    assert m["coco"]["AP50"] == pytest.approx(1.0)
    assert m["coco"]["AR100"] < 1.0  # d2 fails at IoU >= .75


def test_crowded_image_matches_pycocotools_directly(tmp_path):
    rng = np.random.default_rng(0)
    ev = Evaluator(3, ["a", "b", "c"])
    for img in range(4):
        n = 30
        xy = rng.uniform(0, 500, size=(n, 2))
        wh = rng.uniform(8, 150, size=(n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        gc = rng.integers(0, 3, n)
        keep = rng.random(n) < 0.8
        det = gt[keep] + rng.normal(0, 6, size=(keep.sum(), 4))
        dc = gc[keep].copy()
        flip = rng.random(len(dc)) < 0.1
        dc[flip] = (dc[flip] + 1) % 3
        fp = np.concatenate([rng.uniform(0, 500, (5, 2)), rng.uniform(0, 500, (5, 2)) + 20], 1)
        fp[:, 2:] = np.maximum(fp[:, 2:], fp[:, :2] + 10)
        boxes = np.concatenate([det, fp])
        scores = rng.uniform(0.01, 1, len(boxes))
        classes = np.concatenate([dc, rng.integers(0, 3, 5)])
        ev.add(gt, gc, boxes, scores, classes, width=700, height=700, image_id=img + 1)
    m = ev.compute()
    direct = _coco_direct(ev, tmp_path)
    for k in COCO_KEYS:
        assert m["coco"][k] == pytest.approx(direct[k], abs=1e-12), k
    assert 0.3 < m["map"] < 1.0
    assert 0.0 < m["coco"]["AP"] < m["coco"]["AP50"]
    # Darknet's AP50 can never exceed a perfect score and is close to COCO's here
    assert abs(m["map"] - m["coco"]["AP50"]) < 0.1
    rep = format_report(m)
    assert "Darknet mAP@0.50" in rep and "COCO (pycocotools) AP@[.50:.95]" in rep


def test_perfect_crowded_image(tmp_path):
    xs = np.arange(10) * 20.0
    gt = np.array([[x, y, x + 18, y + 18] for x in xs for y in xs])
    gc = np.zeros(len(gt), int)
    m = _one(gt, gc, gt, np.linspace(0.9, 0.5, len(gt)), gc)
    assert m["map"] == pytest.approx(1.0)
    assert m["coco"]["AP"] == pytest.approx(1.0)


def test_no_detections_and_no_gt():
    m = _one([[0, 0, 10, 10]], [0], np.zeros((0, 4)), [], [])
    assert m["map"] == 0.0 and m["coco"]["AP"] == 0.0
    m = _one(np.zeros((0, 4)), [], [[0, 0, 10, 10]], [0.9], [0])
    assert m["map"] == 0.0 and m["coco"]["AP"] == -1.0


def test_label_path_rules(tmp_path):
    assert label_path_for("/d/images/a/x.jpg") == "/d/labels/a/x.txt"
    assert label_path_for("/voc/JPEGImages/x.png") == "/voc/labels/x.txt"
    (tmp_path / "y.jpg").write_bytes(b"")
    (tmp_path / "y.txt").write_text("0 .5 .5 .1 .1\n")
    assert label_path_for(str(tmp_path / "y.jpg")) == str(tmp_path / "y.txt")


# ----- precision/recall curves and their plot ----------------------------------------------------------------
def _naive_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _naive_darknet_curves(images, num_classes, iou_thresh=0.5):
    """Darknet's rule written out loop by loop: bind each detection to its best same-class GT above the
    threshold, rank everything by score, a bound GT counts once. Returns per-class and pooled (recall, precision)."""
    ranked = []
    for k, (gb, gc, db, ds, dc) in enumerate(images):
        for i in range(len(db)):
            best, best_iou = None, 0.0
            for j in range(len(gb)):
                v = _naive_iou(db[i], gb[j])
                if gc[j] == dc[i] and v > iou_thresh and v > best_iou:
                    best, best_iou = (k, j), v
            ranked.append((ds[i], dc[i], best))
    ranked.sort(key=lambda r: -r[0])
    n_gt = [sum(int(c == cls) for im in images for c in im[1]) for cls in range(num_classes)]
    taken, curves, pooled = set(), {c: ([], []) for c in range(num_classes)}, ([], [])
    tp = [0] * num_classes
    fp = [0] * num_classes
    for score, c, best in ranked:
        if best is not None and best not in taken:
            taken.add(best)
            tp[c] += 1
        else:
            fp[c] += 1
        curves[c][0].append(tp[c] / n_gt[c] if n_gt[c] else 0.0)
        curves[c][1].append(tp[c] / (tp[c] + fp[c]))
        pooled[0].append(sum(tp) / sum(n_gt))
        pooled[1].append(sum(tp) / (sum(tp) + sum(fp)))
    return curves, pooled


def _crowded_images(seed, n_images=3, n_classes=3):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n = 12
        xy = rng.uniform(0, 300, size=(n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 90, size=(n, 2))], 1)
        gc = rng.integers(0, n_classes, n)
        keep = rng.random(n) < 0.8
        det = np.concatenate(
            [gt[keep] + rng.normal(0, 5, size=(keep.sum(), 4)), gt[:4] + 25.0]
        )  # plus some poor duplicates
        dc = np.concatenate([gc[keep], gc[:4]])
        ds = rng.uniform(0.01, 1, len(det))
        images.append((gt, gc, det, ds, dc))
    return images


def test_curves_match_a_naive_reference():
    images = _crowded_images(1)
    ev = Evaluator(3, ["a", "b", "c"])
    for gt, gc, det, ds, dc in images:
        ev.add(gt, gc, det, ds, dc, width=400, height=400)
    m = ev.compute(coco=False)
    curves, pooled = _naive_darknet_curves(images, 3)
    for p in m["per_class"]:
        rec, prec = curves[p["class_id"]]
        np.testing.assert_allclose(p["recall_curve"], rec, rtol=0, atol=1e-12)
        np.testing.assert_allclose(p["precision_curve"], prec, rtol=0, atol=1e-12)
        assert p["score_curve"] == sorted(p["score_curve"], reverse=True)
        # the AP is the area under the monotone envelope of exactly this curve
        env = [max(prec[i:]) for i in range(len(prec))]
        area = sum((r - r0) * e for r0, r, e in zip([0.0] + rec[:-1], rec, env))
        assert p["ap"] == pytest.approx(area, abs=1e-12)
    np.testing.assert_allclose(m["overall"]["recall_curve"], pooled[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["overall"]["precision_curve"], pooled[1], rtol=0, atol=1e-12)
    # the numbers printed at the confidence threshold are the overall curve's point at that threshold
    t = m["at_thresh"]
    last = sum(s > t["thresh"] for s in m["overall"]["score_curve"]) - 1
    assert t["recall"] == pytest.approx(m["overall"]["recall_curve"][last])
    assert t["precision"] == pytest.approx(m["overall"]["precision_curve"][last])


def test_pr_curve_png(tmp_path):
    from PIL import Image

    images = _crowded_images(2)
    ev = Evaluator(4, ["a", "b", "c", "never seen"])
    for gt, gc, det, ds, dc in images:
        ev.add(gt, gc, det, ds, dc, width=400, height=400)
    m = ev.compute(coco=False)
    out = tmp_path / "pr.png"
    fig = plot_pr_curves(m, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 650)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].lines}
    # one line per class with ground truth (not for "never seen"), the overall curve and the threshold point
    assert set(lines) == {"class:0", "class:1", "class:2", "overall", "at_thresh"}
    for p in m["per_class"][:3]:
        ln = lines[f"class:{p['class_id']}"]
        np.testing.assert_array_equal(ln.get_xdata(), p["recall_curve"])
        np.testing.assert_array_equal(ln.get_ydata(), p["precision_curve"])
        assert ln.get_label().startswith(p["name"]) and f"{p['ap']:.3f}" in ln.get_label()
    np.testing.assert_array_equal(lines["overall"].get_xdata(), m["overall"]["recall_curve"])
    np.testing.assert_array_equal(lines["overall"].get_ydata(), m["overall"]["precision_curve"])
    assert list(lines["at_thresh"].get_xdata()) == [m["at_thresh"]["recall"]]


# ----- Darknet's difficult ground truth ----------------------------------------------------------------------
def test_difficult_boxes_are_neither_found_nor_missed():
    normal, hard, empty = [10, 10, 60, 60], [100, 100, 150, 150], [200, 10, 250, 60]
    dets = [hard, normal, empty]
    scores = [0.95, 0.9, 0.7]
    ev = Evaluator(1)
    ev.add([normal], [0], dets, scores, [0, 0, 0], width=300, height=300, difficult_boxes=[hard], difficult_classes=[0])
    m = ev.compute()
    p = m["per_class"][0]
    # the detection on the difficult box leaves the ranking: TP (0.9), FP (0.7)
    assert (p["gt"], p["tp"], p["fp"]) == (1, 1, 1)
    assert p["precision_curve"] == [1.0, 0.5] and p["recall_curve"] == [1.0, 1.0]
    assert m["map"] == pytest.approx(1.0)
    # at the threshold Darknet still counts it as an FP (its threshold bookkeeping runs after the drop)
    t = m["at_thresh"]
    assert (t["tp"], t["fp"], t["fn"]) == (1, 2, 0)
    # pycocotools: the difficult box is a crowd region, a detection on it is ignored
    assert m["coco"]["AP50"] == pytest.approx(1.0)

    # the same without the difficult box: the top detection is an FP ranked first
    plain = _one([normal], [0], dets, scores, [0, 0, 0])
    assert plain["map"] == pytest.approx(0.5)
    assert plain["coco"]["AP50"] == pytest.approx(0.5, abs=0.01)
    # ... and counted as ordinary ground truth it would be a TP, with a second object to find
    both = _one([normal, hard], [0, 0], dets, scores, [0, 0, 0])
    assert both["per_class"][0]["gt"] == 2 and both["at_thresh"]["fp"] == 1


def test_difficult_box_rules():
    a, b = [0, 0, 50, 50], [300, 0, 350, 50]
    ev = Evaluator(2)
    # a missed difficult box costs nothing; a detection of another class on a difficult box is an FP;
    # a detection overlapping both an ordinary and a difficult box is bound to the ordinary one
    ev.add(
        [a],
        [0],
        [a, b, [1, 1, 51, 51]],
        [0.9, 0.8, 0.7],
        [0, 1, 0],
        width=400,
        height=100,
        difficult_boxes=[b, [150, 0, 200, 50], [2, 0, 52, 50]],
        difficult_classes=[0, 0, 0],
    )
    m = ev.compute(coco=False)
    c0, c1 = m["per_class"]
    assert (c0["gt"], c0["tp"], c0["fp"]) == (1, 1, 1)  # second class-0 detection: duplicate of the bound GT
    assert (c1["gt"], c1["tp"], c1["fp"]) == (0, 0, 1)
    assert m["at_thresh"]["fn"] == 0
    with pytest.raises(ValueError, match="difficult ground-truth class 5"):
        ev.add([a], [0], difficult_boxes=[b], difficult_classes=[5])


def test_coco_metrics_score_boxes_clipped_like_the_valid_json(tmp_path):
    # A detection reaching past the image's top-left corner: Darknet's COCO export (detector valid, Results.to_coco)
    # clips it to the image, so map's pycocotools numbers must score the clipped box too, the same as pycocotools
    # run directly on valid's json. Unclipped the IoU with the ground truth is 0.44 (no match at 0.5), clipped it is 1.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pydarknet.inference.results import Results

    res = Results([[0.125, 0.125, 0.75, 0.75]], [0.9], [0], names=["thing"], image_size=(100, 100))
    assert res.xyxy.tolist() == [[-25.0, -25.0, 50.0, 50.0]]
    ev = Evaluator(1, ["thing"])
    ev.add([[0, 0, 50, 50]], [0], detections=res, image_id=1)
    metrics = ev.compute()
    gt, _ = ev.coco_datasets()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "valid.json").write_text(json.dumps(res.to_coco(image_id=1, category_ids=[1])))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "gt.json"))
        e = COCOeval(cg, cg.loadRes(str(tmp_path / "valid.json")), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert metrics["coco"]["AP"] == pytest.approx(float(e.stats[0])) == pytest.approx(1.0)
    assert metrics["map"] == 0.0  # Darknet's mAP keeps the unclipped box, as detector map does: IoU 0.44 < 0.5


def test_report_says_which_threshold_each_count_uses():
    gt = ([[0, 0, 50, 50], [100, 100, 150, 150]], [0, 0])
    dets = ([[0, 0, 50, 50], [100, 100, 150, 150], [60, 60, 90, 90]], [0.9, 0.1, 0.05], [0, 0, 0])
    metrics = evaluate([gt], [dets], 1, ["thing"], sizes=[(200, 200)], coco=False, thresh=0.25)
    report = format_report(metrics).splitlines()
    # per class: every detection given (3: TP 2, FP 1); the precision/recall line: only the one above 0.25
    assert report[0] == "per class: AP, TP and FP over every detection given, matched at IoU 0.50"
    assert report[2].split()[3:] == ["2", "1", "2"]
    assert (
        report[3].startswith("for conf_thresh = 0.25 (--thresh; IoU 0.50): ") and "TP = 1, FP = 0, FN = 1" in report[3]
    )
    metrics["settings"] = dict(conf_thresh=0.005, nms=0.45)
    assert format_report(metrics).splitlines()[0] == (
        "per class: AP, TP and FP over every detection with confidence >= 0.005 (--conf), after NMS 0.45, "
        "matched at IoU 0.50"
    )
