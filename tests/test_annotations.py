"""Ground truth from a hand-written COCO annotation file: reading, checks, pairing categories with classes, and
metrics against pycocotools run directly on the file."""

import contextlib
import io
import json

import numpy as np
import pytest

from pydarknet.data.coco import AnnotationError, load_coco_annotations
from pydarknet.evaluation.metrics import COCO_KEYS, Evaluator
from pydarknet.inference.results import COCO80_TO_91

pytest.importorskip("pycocotools")

NAMES = ["person", "dog", "potted_plant"]


def _dataset():
    """Three images (one without objects), category ids that are neither contiguous nor in the names' order, a
    crowd region, and a category no class maps to."""
    return {
        "images": [
            {"id": 17, "file_name": "val/a.jpg", "width": 200, "height": 100},
            {"id": 4, "file_name": "b.jpg", "width": 300, "height": 300},
            {"id": 99, "file_name": "sub/dir/c.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 17, "category_id": 9, "bbox": [10, 20, 30, 40], "area": 900.0, "iscrowd": 0},
            {"id": 2, "image_id": 17, "category_id": 3, "bbox": [100, 10, 50, 60], "area": 2500.0, "iscrowd": 0},
            {"id": 3, "image_id": 4, "category_id": 9, "bbox": [0, 0, 100, 200], "area": 15000.0, "iscrowd": 0},
            {"id": 4, "image_id": 4, "category_id": 9, "bbox": [150, 150, 120, 100], "area": 9000.0, "iscrowd": 1},
            {"id": 5, "image_id": 4, "category_id": 12, "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 0},
            {"id": 6, "image_id": 4, "category_id": 7, "bbox": [200, 10, 60, 60], "area": 3000.0, "iscrowd": 0},
        ],
        "categories": [
            {"id": 3, "name": "Dog"},
            {"id": 7, "name": "potted plant"},
            {"id": 9, "name": "person"},
            {"id": 12, "name": "kite"},
        ],
    }


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_read_and_convert(tmp_path):
    ann = load_coco_annotations(_write(tmp_path, _dataset()), NAMES)
    assert ann.pairing == "names" and ann.category_ids == [9, 3, 7]
    a = ann.image_for("/data/images/a.jpg")  # matched by file name, folders ignored
    assert a["id"] == 17 and ann.image_for("x/c.png")["id"] == 99 and ann.image_for("zzz.jpg") is None
    boxes, classes, crowd, crowd_classes = ann.ground_truth(a, 200, 100)
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 60], [100, 10, 150, 70]])
    assert classes.tolist() == [0, 1] and crowd.shape == (0, 4)
    boxes, classes, crowd, crowd_classes = ann.ground_truth(ann.image_for("b.jpg"))
    np.testing.assert_array_equal(boxes, [[0, 0, 100, 200], [200, 10, 260, 70]])  # the kite has no class
    assert classes.tolist() == [0, 2]
    np.testing.assert_array_equal(crowd, [[150, 150, 270, 250]])
    assert crowd_classes.tolist() == [0]
    assert ann.ground_truth(ann.image_for("c.png"))[0].shape == (0, 4)


def test_pairing_rules(tmp_path):
    # Darknet's coco.names against the 80 COCO categories: names differ (motorbike/motorcycle...) -> coco_ids map
    from pydarknet.hub import models

    coco_names = models.read_names(models.find_data_file("coco.names"))
    coco_cats = [{"id": cid, "name": f"category {cid}"} for cid in reversed(COCO80_TO_91)]
    data = {"images": [], "annotations": [], "categories": coco_cats}
    ann = load_coco_annotations(_write(tmp_path, data), coco_names)
    assert ann.pairing == "coco80" and ann.category_ids == COCO80_TO_91
    # other names, as many categories as classes -> id order
    ann = load_coco_annotations(_write(tmp_path, _dataset()), ["w", "x", "y", "z"])
    assert ann.pairing == "id order" and ann.category_ids == [3, 7, 9, 12]
    with pytest.raises(AnnotationError, match=r"4 categories cannot be paired with 2 classes: the names 'cat'"):
        load_coco_annotations(_write(tmp_path, _dataset()), ["person", "cat"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), "no 'annotations' list"),
        (lambda d: d["annotations"][0].update(image_id=5), r"annotation 1: image_id 5 is not in 'images'"),
        (lambda d: d["annotations"][1].update(category_id=4), r"annotation 2: category_id 4 is not in 'categories'"),
        (
            lambda d: d["annotations"][2].update(bbox=[0, 0, -1, 5]),
            r"annotation 3: bbox must be \[x, y, width, height\]",
        ),
        (lambda d: d["annotations"][2].update(bbox=[0, 0, 5]), r"annotation 3: bbox must be"),
        (
            lambda d: d["images"].append({"id": 4, "file_name": "d.jpg", "width": 1, "height": 1}),
            "image id 4 is used twice",
        ),
        (lambda d: d["images"][0].pop("width"), r"image 'val/a.jpg' \(id 17\) needs positive integer 'width'"),
        (lambda d: d["categories"].append({"id": 3, "name": "cat"}), "category id 3 is defined twice"),
    ],
)
def test_bad_annotation_files(tmp_path, mutate, message):
    data = _dataset()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(AnnotationError, match=message) as e:
        load_coco_annotations(path, NAMES)
    assert str(path) in str(e.value)


def test_unreadable_annotation_files(tmp_path):
    with pytest.raises(AnnotationError, match=r"bad.json:3:\d+: not valid JSON"):
        load_coco_annotations(_write(tmp_path, '{"images": [],\n "annotations": [],\n oops}', "bad.json"), NAMES)
    with pytest.raises(AnnotationError, match="cannot read"):
        load_coco_annotations(tmp_path / "missing.json", NAMES)
    with pytest.raises(AnnotationError, match="not a COCO annotation"):
        load_coco_annotations(_write(tmp_path, "[1, 2]"), NAMES)
    ann = load_coco_annotations(_write(tmp_path, _dataset()), NAMES)
    with pytest.raises(AnnotationError, match=r"'val/a.jpg' \(id 17\) is 200x100 in the annotations but 100x200"):
        ann.ground_truth(ann.image_for("a.jpg"), 100, 200)
    data = _dataset()
    data["images"].append({"id": 5, "file_name": "other/a.jpg", "width": 1, "height": 1})
    ann = load_coco_annotations(_write(tmp_path, data), NAMES)
    with pytest.raises(AnnotationError, match=r"2 images are named 'a.jpg' \(ids 17, 5\)"):
        ann.image_for("a.jpg")


def _pycocotools_on_files(ann_path, dets, tmp_path, img_ids, cat_ids):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dt = gt.loadRes(str(tmp_path / "dt.json"))
        e = COCOeval(gt, dt, "bbox")
        e.params.imgIds = img_ids
        e.params.catIds = cat_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return dict(zip(COCO_KEYS, e.stats.tolist()))


def test_metrics_from_an_annotation_file(tmp_path):
    path = _write(tmp_path, _dataset())
    ann = load_coco_annotations(path, NAMES)
    ev = Evaluator(3, NAMES, category_ids=ann.category_ids, coco_ground_truth=ann.dataset)
    # image a: both objects found; image b: the person found, a false dog, a detection on the crowd region,
    # the plant missed; image c: nothing there, nothing found
    dets = {
        "a.jpg": ([[11, 20, 41, 61], [100, 12, 150, 70]], [0.9, 0.8], [0, 1]),
        "b.jpg": ([[0, 5, 100, 200], [150, 150, 270, 250], [20, 250, 60, 290]], [0.85, 0.95, 0.6], [0, 0, 1]),
        "c.png": (np.zeros((0, 4)), [], []),
    }
    for name, (db, ds, dc) in dets.items():
        entry = ann.image_for(name)
        gb, gc, hb, hc = ann.ground_truth(entry)
        ev.add(
            gb,
            gc,
            db,
            ds,
            dc,
            width=entry["width"],
            height=entry["height"],
            image_id=entry["id"],
            difficult_boxes=hb,
            difficult_classes=hc,
        )
    m = ev.compute()
    person, dog, plant = m["per_class"]
    # Darknet-style: the detection on the crowd region is dropped; person 2/2, dog 1 TP then 1 FP, plant 0/1
    assert (person["gt"], person["tp"], person["fp"], person["ap"]) == (2, 2, 0, pytest.approx(1.0))
    assert (dog["gt"], dog["tp"], dog["fp"], dog["ap"]) == (1, 1, 1, pytest.approx(1.0))
    assert (plant["gt"], plant["ap"]) == (1, 0.0)
    assert m["map"] == pytest.approx(2 / 3)
    # COCO: exactly what pycocotools computes on the file itself, with the detections in COCO form
    coco_dets = [
        dict(
            image_id=ann.image_for(n)["id"],
            category_id=ann.category_ids[c],
            bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]],
            score=s,
        )
        for n, (db, ds, dc) in dets.items()
        for b, s, c in zip(db, ds, dc)
    ]
    direct = _pycocotools_on_files(path, coco_dets, tmp_path, [17, 4, 99], [3, 7, 9])
    for k in COCO_KEYS:
        assert m["coco"][k] == pytest.approx(direct[k], abs=1e-12), k
    assert m["coco"]["AP50"] == pytest.approx(2 / 3, abs=0.01)  # person 1, dog 1, plant 0
    # only the images added count: evaluating image a alone gives a perfect score
    ev_a = Evaluator(3, NAMES, category_ids=ann.category_ids, coco_ground_truth=ann.dataset)
    gb, gc, _, _ = ann.ground_truth(ann.image_for("a.jpg"))
    ev_a.add(gb, gc, *dets["a.jpg"], width=200, height=100, image_id=17)
    assert ev_a.compute()["coco"]["AP50"] == pytest.approx(1.0)
