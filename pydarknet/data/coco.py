"""Ground truth from a COCO annotation file (``instances_val2017.json`` and the like) for ``pydarknet map``.

A ``.data`` file names it with ``annotations = path/to/instances.json``. Images of the ``valid`` list are found in
the file by their file name (the last part of the path; the annotation's ``file_name`` may carry folders), so
the image ids are the annotation's own. pycocotools evaluates against the file unchanged; the Darknet-style mAP
uses the same boxes converted to pixels ``x1 y1 x2 y2`` (``iscrowd=1`` regions become Darknet's "difficult"
boxes: neither found nor missed).

Classes and categories are paired, in this order of preference:

1. by name, when every class name of the names file is a category name (compared ignoring case, spaces,
   ``_`` and ``-``);
2. Darknet's ``coco_ids`` map (class ``i`` -> ``COCO80_TO_91[i]``) for 80 classes against the 80 COCO categories
   (Darknet's ``coco.names`` says ``motorbike``/``aeroplane``/``sofa``/... where COCO says ``motorcycle``...);
3. the categories in id order, when there are as many as classes.

Anything else is an :class:`AnnotationError` naming the file and what does not fit.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from pydarknet.errors import AnnotationError

__all__ = ["AnnotationError", "COCO80_TO_91", "CocoAnnotations", "load_coco_annotations"]


def _key(name):
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


# Darknet's coco_ids (detector.c): 80 contiguous class indices -> the 91 COCO category ids.
COCO80_TO_91 = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


@dataclass
class CocoAnnotations:
    """A loaded annotation file: the dataset as read, and the pairing of classes with categories."""

    path: str
    dataset: dict
    category_ids: List[int]  # COCO category id of each class
    pairing: str  # "names", "coco80" or "id order"
    _by_file: Dict[str, List[dict]] = field(default_factory=dict, repr=False)
    _anns: Dict[int, List[dict]] = field(default_factory=dict, repr=False)

    def image_for(self, image_path) -> Optional[dict]:
        """The annotation's image entry for an image file (matched by file name), or None."""
        found = self._by_file.get(os.path.basename(str(image_path)))
        if not found:
            return None
        if len(found) > 1:
            raise AnnotationError(
                f"{self.path}: {len(found)} images are named {os.path.basename(str(image_path))!r} "
                f"(ids {', '.join(str(e['id']) for e in found)}); cannot tell which one "
                f"{image_path} is"
            )
        return found[0]

    def ground_truth(self, entry, width=None, height=None):
        """``(boxes, classes, crowd_boxes, crowd_classes)`` in pixels ``x1 y1 x2 y2`` for an image entry.

        ``width``/``height``: the image as decoded; it must be the size the annotation says."""
        if width is not None and (int(entry["width"]), int(entry["height"])) != (int(width), int(height)):
            raise AnnotationError(
                f"{self.path}: image {entry['file_name']!r} (id {entry['id']}) is "
                f"{entry['width']}x{entry['height']} in the annotations but {width}x{height} on "
                "disk; the boxes would not fit it"
            )
        to_class = {cat: k for k, cat in enumerate(self.category_ids)}
        boxes, classes, crowd_boxes, crowd_classes = [], [], [], []
        for a in self._anns.get(entry["id"], ()):
            k = to_class.get(a["category_id"])
            if k is None:
                continue  # a category no class maps to: the network cannot find it
            x, y, w, h = a["bbox"]
            target = (crowd_boxes, crowd_classes) if a.get("iscrowd", 0) else (boxes, classes)
            target[0].append((x, y, x + w, y + h))
            target[1].append(k)
        as_boxes = lambda b: np.asarray(b, dtype=np.float64).reshape(-1, 4)  # noqa: E731
        return (
            as_boxes(boxes),
            np.asarray(classes, np.int64),
            as_boxes(crowd_boxes),
            np.asarray(crowd_classes, np.int64),
        )


def _fail(path, problem):
    raise AnnotationError(f"{path}: {problem}")


def _number_list(value, n):
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    )


def load_coco_annotations(path, names: Sequence[str]) -> CocoAnnotations:
    """Read and check a COCO annotation file and pair its categories with ``names`` (see the module doc)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the annotation file ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        _fail(path, "not a COCO annotation file (expected an object with images, annotations and categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(path, f"no '{key}' list: not a COCO annotation file")

    cats = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            _fail(path, f"categories[{k}] needs an integer 'id' and a 'name'")
        if c["id"] in cats:
            _fail(path, f"category id {c['id']} is defined twice")
        cats[c["id"]] = str(c["name"])

    images, by_file = {}, {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            _fail(path, f"images[{k}] needs an integer 'id' and a 'file_name'")
        if not all(isinstance(im.get(d), int) and im[d] > 0 for d in ("width", "height")):
            _fail(path, f"image {im['file_name']!r} (id {im['id']}) needs positive integer 'width' and 'height'")
        if im["id"] in images:
            _fail(path, f"image id {im['id']} is used twice")
        images[im["id"]] = im
        by_file.setdefault(os.path.basename(im["file_name"].replace("\\", "/")), []).append(im)

    anns: Dict[int, List[dict]] = {}
    for k, a in enumerate(data["annotations"]):
        where = f"annotation {a.get('id', k) if isinstance(a, dict) else k}"
        if not isinstance(a, dict):
            _fail(path, f"{where}: not an object")
        if a.get("image_id") not in images:
            _fail(path, f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cats:
            _fail(path, f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        if not _number_list(a.get("bbox"), 4) or a["bbox"][2] < 0 or a["bbox"][3] < 0:
            _fail(path, f"{where}: bbox must be [x, y, width, height] with width, height >= 0; got {a.get('bbox')!r}")
        anns.setdefault(a["image_id"], []).append(a)

    category_ids, pairing = _pair(path, cats, list(names))
    return CocoAnnotations(path, data, category_ids, pairing, by_file, anns)


def _pair(path, cats, names):
    by_name = {}
    for cid, cname in cats.items():
        by_name.setdefault(_key(cname), []).append(cid)
    if all(len(by_name.get(_key(n), ())) == 1 for n in names) and len({_key(n) for n in names}) == len(names):
        return [by_name[_key(n)][0] for n in names], "names"
    if len(names) == 80 and set(cats) == set(COCO80_TO_91):
        return list(COCO80_TO_91), "coco80"
    if len(cats) == len(names):
        return sorted(cats), "id order"
    unmatched = [n for n in names if len(by_name.get(_key(n), ())) != 1]
    _fail(
        path,
        f"{len(cats)} categories cannot be paired with {len(names)} classes: the names "
        f"{', '.join(repr(n) for n in unmatched[:5])}{' ...' if len(unmatched) > 5 else ''} are not "
        "category names, and the counts differ",
    )
