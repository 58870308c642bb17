"""Darknet's ``detector calc_anchors``: k-means on 1 - IoU over the labelled box sizes, sorted by area.

As in AlexeyAB ``src/detector.c`` ``calc_anchors`` and ``src/matrix.c`` ``do_kmeans``:

* every label row ``class x y w h`` of every training image contributes the point ``(w * width, h * height)``;
  rows outside (0, 1] are reported as wrong labels but still used, as Darknet does;
* distance between a box and a centre is ``1 - IoU`` of two boxes sharing a corner
  (``min(w)·min(h) / (area_a + area_b - min(w)·min(h))``), computed in float32;
* initial centres: ``k`` distinct boxes drawn at random (``random_centers``: the first ``k`` of a shuffle --
  Darknet prints "k-means++" but does not use it); for ``k == 1`` one averaging step comes first;
* at most 1000 rounds of: assign each box to its nearest centre (the first one on ties), stop when no assignment
  changes (assignments start at centre 0), else move each centre to the mean of its boxes; a centre coordinate
  that comes out exactly 0 (a centre without boxes) keeps its old value;
* anchors sorted by ascending area; the reported average IoU is the mean over boxes of the IoU with the closest
  anchor (boxes whose IoU falls outside [0, 1] are left out of the sum but not of the count).

Darknet seeds from the clock; here ``seed`` makes the run repeatable. Centre means are summed in float64
(Darknet sums in float32), a difference far below the printed precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np

from pydarknet.data.dataset import data_classes, read_data_file, read_image_list, resolve_path
from pydarknet.data.labels import label_path as label_path_for
from pydarknet.data.labels import read_yolo_labels
from pydarknet.errors import AnchorsError, DataError

__all__ = [
    "AnchorsError",
    "AnchorsResult",
    "calc_anchors",
    "kmeans_anchors",
    "iou_distance",
    "format_anchors",
    "read_box_sizes",
]

MAX_ROUNDS = 1000


@dataclass
class AnchorsResult:
    anchors: np.ndarray  # (k, 2) float32 width, height in network pixels, ascending area
    mean_iou: float  # average IoU of each box with its closest anchor, 0..1
    iterations: int  # k-means rounds (Darknet prints "iterations = N")
    boxes: int
    counts_per_class: List[int]
    width: int
    height: int
    wrong_labels: List[str] = field(default_factory=list)  # "file: row" of rows outside (0, 1]
    missing_labels: List[str] = field(default_factory=list)  # label files that do not exist

    def anchors_text(self):
        """The ``anchors = ...`` value as Darknet writes it to anchors.txt."""
        return format_anchors(self.anchors, self.width)

    def counters_text(self):
        """The ``counters_per_class = ...`` line of counters_per_class.txt."""
        return "counters_per_class = " + ", ".join(str(c) for c in self.counts_per_class)

    def report(self):
        """Darknet's summary lines."""
        return "\n".join(
            [
                f"iterations = {self.iterations}",
                self.counters_text(),
                f"avg IoU = {100.0 * self.mean_iou:2.2f} %",
                f"anchors = {self.anchors_text()}",
            ]
        )


def format_anchors(anchors, width):
    """``%3.0f,%3.0f`` per anchor when the width is above 32 pixels, else ``%2.4f,%2.4f``, joined by ", "."""
    fmt = "%3.0f,%3.0f" if width > 32 else "%2.4f,%2.4f"
    return ", ".join(fmt % (float(w), float(h)) for w, h in np.asarray(anchors, dtype=np.float32))


def _iou(boxes, centers):
    """IoU of every box with every centre, both anchored at the same corner, in float32 like Darknet."""
    b = np.asarray(boxes, dtype=np.float32)
    c = np.asarray(centers, dtype=np.float32)
    inter = np.minimum(b[:, None, 0], c[None, :, 0]) * np.minimum(b[:, None, 1], c[None, :, 1])
    union = (b[:, None, 0] * b[:, None, 1] + c[None, :, 0] * c[None, :, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def iou_distance(boxes, centers):
    """``1 - IoU`` between every box and every centre (Darknet's ``dist``)."""
    return np.float32(1.0) - _iou(boxes, centers)


def _nearest(distance):
    """Index of the nearest centre per box, the first on ties; a NaN distance never wins (C's ``<``)."""
    return np.argmin(np.where(np.isnan(distance), np.inf, distance), axis=1)


def _assign(boxes, centers):
    return _nearest(iou_distance(boxes, centers))


def _move(boxes, assignments, centers):
    k = centers.shape[0]
    counts = np.bincount(assignments, minlength=k)
    sums = np.stack(
        [np.bincount(assignments, weights=boxes[:, j].astype(np.float64), minlength=k) for j in range(2)], axis=1
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0).astype(np.float32)
    return np.where(means == 0, centers, means)


def kmeans_anchors(boxes, k, seed=None, init=None):
    """Darknet's ``do_kmeans`` on ``(n, 2)`` box sizes; returns ``(centres (k, 2) float32, rounds)`` unsorted.

    ``init`` gives the starting centres instead of ``k`` random distinct boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 2)
    k = int(k)
    if k < 1:
        raise AnchorsError(f"the number of clusters must be at least 1, got {k}")
    if init is None:
        if boxes.shape[0] < k:
            raise AnchorsError(f"{boxes.shape[0]} boxes cannot make {k} clusters")
        rng = np.random.default_rng(seed)
        centers = boxes[rng.permutation(boxes.shape[0])[:k]].copy()
    else:
        centers = np.asarray(init, dtype=np.float32).reshape(k, 2).copy()
    assignments = np.zeros(boxes.shape[0], dtype=np.int64)
    if k == 1:
        centers = _move(boxes, assignments, centers)
    rounds = 0
    while rounds < MAX_ROUNDS:
        new = _assign(boxes, centers)
        if np.array_equal(new, assignments):
            break
        assignments = new
        centers = _move(boxes, assignments, centers)
        rounds += 1
    return centers, rounds


def _mean_best_iou(boxes, anchors):
    iou = _iou(boxes, anchors)
    best = iou[np.arange(boxes.shape[0]), _nearest(np.float32(1.0) - iou)].astype(np.float64)
    valid = (best >= 0) & (best <= 1)
    return float(best[valid].sum() / boxes.shape[0])


def _found(image):
    return image.exists() or Path(label_path_for(image)).exists()


def _read_list(path):
    # Only the labels are read here, so an entry counts as found when its image or its label exists.
    try:
        return [Path(p) for p in read_image_list(path, exists=_found)]
    except DataError as e:
        raise AnchorsError(str(e)) from None


def _data_train_list(data_path):
    try:
        data = read_data_file(data_path)
        classes = data_classes(data, data_path, default=1)
    except DataError as e:
        raise AnchorsError(str(e)) from None
    train = data.get("train")
    if not train:
        raise AnchorsError(f"{data_path}: no 'train' list")
    return _read_list(resolve_path(train, data_path)), classes


def read_box_sizes(sources, classes=1):
    """Label rows of ``sources`` (a ``.data`` file, an image list file, or a sequence of image / ``.txt`` label
    paths) as ``(rows (n, 5) float64, counts_per_class, wrong, missing)``."""
    if isinstance(sources, (str, os.PathLike)):
        src = Path(sources)
        if src.suffix == ".data":
            images, classes = _data_train_list(src)
        else:
            images = _read_list(src)
        label_files = [Path(label_path_for(p)) for p in images]
    else:
        label_files = [Path(p) if str(p).endswith(".txt") else Path(label_path_for(p)) for p in sources]
    rows, wrong, missing = [], [], []
    counts = [0] * max(int(classes), 1)
    for label in label_files:
        if not label.is_file():
            missing.append(str(label))
            continue
        try:
            table = read_yolo_labels(label)
        except (OSError, ValueError) as e:
            raise AnchorsError(str(e)) from None
        for k, row in enumerate(table, 1):
            cls = int(row[0])
            if cls < 0:
                raise AnchorsError(f"{label}: row {k} has a negative class id {cls}")
            if not all(0 < v <= 1 for v in row[1:5]):
                wrong.append(f"{label}: row {k} ({' '.join(f'{v:g}' for v in row[1:5])})")
            if cls >= len(counts):
                counts.extend([0] * (cls + 1 - len(counts)))
            counts[cls] += 1
        rows.append(table)
    table = np.concatenate(rows) if rows else np.zeros((0, 5))
    return table, counts, wrong, missing


def calc_anchors(sources, n, width, height, seed=None):
    """Darknet's ``detector calc_anchors -num_of_clusters n -width W -height H`` on the labels of ``sources``
    (see ``read_box_sizes``); returns an AnchorsResult (anchors ascending by area, average IoU)."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise AnchorsError(f"width and height must be positive, got {width}x{height}")
    table, counts, wrong, missing = read_box_sizes(sources)
    if table.shape[0] == 0:
        raise AnchorsError(
            "no labelled boxes found" + (f" ({len(missing)} label files missing, e.g. {missing[0]})" if missing else "")
        )
    boxes = np.stack(
        [np.float32(table[:, 3]) * np.float32(width), np.float32(table[:, 4]) * np.float32(height)], axis=1
    ).astype(np.float32)
    centers, rounds = kmeans_anchors(boxes, n, seed=seed)
    area = centers[:, 0] * centers[:, 1]
    anchors = centers[np.argsort(area, kind="stable")]
    return AnchorsResult(
        anchors, _mean_best_iou(boxes, anchors), rounds, int(boxes.shape[0]), counts, width, height, wrong, missing
    )
