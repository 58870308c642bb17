"""YOLO label files: where an image's label file is (Darknet's rules), reading it strictly for training or as
written for evaluation, and the bad-image/bad-label lists training keeps.

Label path: AlexeyAB's substitutions (``/images/train2017/`` -> ``/labels/train2017/``, the same for val2017,
train2014, val2014, and ``/JPEGImages/`` -> ``/labels/``, with ``/`` or ``\\``), then the layout with a ``labels``
folder beside an ``images`` folder (pjreddie and ultralytics datasets), then the label beside the image (hank-ai).
The first that exists is used. The image extension, whatever it is, becomes ``.txt``.

Two readers, one module: :func:`parse_labels` (training) is strict, see :mod:`pydarknet.data.dataset`; Darknet's
``validate_detector_map`` reads the boxes as written, and so does :func:`read_yolo_labels` (evaluation and
calc-anchors), which only requires five numbers per line.
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
from typing import List, Tuple

import numpy as np

from pydarknet.errors import DataError
from pydarknet.utils import files
from pydarknet.utils.files import short

__all__ = [
    "LABEL_EPS",
    "ProblemLog",
    "label_candidates",
    "label_path",
    "parse_labels",
    "read_labels",
    "read_yolo_labels",
]

# How far outside [0, 1] a label coordinate may stray and still be taken (then clipped). Annotation tools
# round, and boxes touching the border often end at 1.0004; anything further out is a wrong label.
LABEL_EPS = 0.01

MAX_PROBLEMS_LISTED = 20  # bad lines reported per label file


# AlexeyAB's replace_image_to_label substitutions, in its order (first occurrence of each).
_ALEXEYAB_SUBSTITUTIONS = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)


# ----- label paths -------------------------------------------------------------------------------------------
def _with_txt(path: str) -> str:
    """Swap the image extension for ``.txt`` (the part after the last dot of the file name)."""
    head, tail = os.path.split(path)
    stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
    return os.path.join(head, stem + ".txt") if head else stem + ".txt"


def _images_to_labels(path: str) -> str:
    """Replace the last folder named ``images`` (or ``JPEGImages``) in the path by ``labels``."""
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            sep = "\\" if "\\" in path and "/" not in path else "/"
            return sep.join(parts)
    return path


def label_candidates(image_path) -> List[str]:
    """Where a label file may be, in the order looked at: AlexeyAB's rule, ``labels/`` beside ``images/``,
    beside the image (duplicates removed)."""
    p = os.fspath(image_path)
    alexey = p
    for a, b in _ALEXEYAB_SUBSTITUTIONS:
        alexey = alexey.replace(a, b, 1)
    out = []
    for cand in (_with_txt(alexey.strip()), _with_txt(_images_to_labels(p)), _with_txt(p)):
        if cand not in out:
            out.append(cand)
    return out


def label_path(image_path) -> str:
    """The label file of an image: the first of :func:`label_candidates` that exists. When none does, the
    first one that is not simply beside the image (where a Darknet-style layout would put it), else the one
    beside it."""
    cands = label_candidates(image_path)
    for c in cands:
        if os.path.isfile(c):
            return c
    beside = _with_txt(os.fspath(image_path))
    return next((c for c in cands if c != beside), beside)


# ----- labels ------------------------------------------------------------------------------------------------
def parse_labels(path, classes: int, eps: float = LABEL_EPS) -> Tuple[np.ndarray, List[str]]:
    """Parse a YOLO label file strictly.

    Returns ``(boxes, problems)``: ``boxes`` float32 ``(k, 5)`` rows ``[x, y, w, h, class]`` relative to the
    image (clipped into ``[0, 1]`` where a coordinate overshoots by at most ``eps``), ``problems`` a list of
    ``"line N: reason"`` strings (the file is bad when it is not empty). An unreadable file is one problem.
    """
    try:
        raw = files.read_bounded(path, files.MAX_LABEL_BYTES, DataError)
    except DataError as e:
        return np.zeros((0, 5), np.float32), [str(e)]
    if b"\0" in raw:
        return np.zeros((0, 5), np.float32), ["not a text file (contains NUL bytes)"]
    text = raw.decode("utf-8-sig", errors="replace")
    rows, problems = [], []
    lo, hi = -eps, 1.0 + eps
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"line {k}"
        if len(parts) != 5:
            problems.append(
                f"{where}: expected 'class x y w h' (5 numbers), got {len(parts)} fields: {line.strip()[:80]!r}"
            )
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problems.append(f"{where}: not numbers: {line.strip()[:80]!r}")
            continue
        cls, x, y, w, h = values
        if not all(np.isfinite(values)):
            problems.append(f"{where}: non-finite value: {line.strip()[:80]!r}")
            continue
        if cls != int(cls) or not 0 <= cls < classes:
            problems.append(f"{where}: class {parts[0]} is not an integer in [0, {classes - 1}]")
            continue
        if not (lo <= x <= hi and lo <= y <= hi and 0 < w <= hi and 0 < h <= hi):
            problems.append(
                f"{where}: box x={x:g} y={y:g} w={w:g} h={h:g} is not inside [0, 1] (relative coordinates; w, h > 0)"
            )
            continue
        left, right, top, bottom = x - w / 2, x + w / 2, y - h / 2, y + h / 2
        if left < lo or top < lo or right > hi or bottom > hi:
            problems.append(
                f"{where}: box x={x:g} y={y:g} w={w:g} h={h:g} reaches outside the image "
                f"(edges {left:.4g}..{right:.4g}, {top:.4g}..{bottom:.4g})"
            )
            continue
        left, right = max(left, 0.0), min(right, 1.0)
        top, bottom = max(top, 0.0), min(bottom, 1.0)
        if right <= left or bottom <= top:
            problems.append(f"{where}: the box is empty after clipping to the image")
            continue
        rows.append(((left + right) / 2, (top + bottom) / 2, right - left, bottom - top, cls))
    if len(problems) > MAX_PROBLEMS_LISTED:
        problems = problems[:MAX_PROBLEMS_LISTED] + [f"... and {len(problems) - MAX_PROBLEMS_LISTED} more bad lines"]
    return np.asarray(rows, np.float32).reshape(-1, 5), problems


def read_labels(path, classes: int, eps: float = LABEL_EPS) -> np.ndarray:
    """:func:`parse_labels`, raising :class:`DataError` (naming the file and the line) on the first problem."""
    boxes, problems = parse_labels(path, classes, eps)
    if problems:
        raise DataError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return boxes


# ----- problem lists -----------------------------------------------------------------------------------------
class ProblemLog:
    """``bad.list`` (images that cannot be used, missing label files) and ``bad_label.list`` (bad label lines),
    written in ``folder`` (the backup folder) as ``path "reason"`` lines, like Darknet's. Each problem is
    written once. With ``folder=None`` problems are only kept in memory (:attr:`entries`)."""

    def __init__(self, folder=None):
        self.folder = pathlib.Path(folder) if folder is not None else None
        self.entries: List[Tuple[str, str, str]] = []  # (list name, path, reason)
        self._seen = set()
        self._lock = threading.Lock()

    def _add(self, which, path, reason):
        key = (which, str(path), reason)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self.entries.append(key)
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                with open(self.folder / which, "a", encoding="utf-8") as f:
                    f.write(f'{path} "{reason}"\n')

    def image(self, path, reason):
        """An image problem (``bad.list``)."""
        self._add("bad.list", path, reason)

    def label(self, path, reason):
        """A label problem (``bad_label.list``)."""
        self._add("bad_label.list", path, reason)

    def count(self, which=None):
        return sum(1 for e in self.entries if which is None or e[0] == which)


def read_yolo_labels(path):
    """Rows ``(class, cx, cy, w, h)`` from a YOLO label file (blank lines skipped); raises DataError (a ValueError)
    naming the file and line on bad lines, and on a file that is not a regular one or is too large."""
    raw = files.read_bounded(path, files.MAX_LABEL_BYTES, lambda problem: DataError(f"{path}: {problem}"))
    rows = []
    for k, line in enumerate(raw.decode("utf-8-sig", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise DataError(f"{path}:{k}: expected 'class cx cy w h', got {short(line.strip())!r}")
        try:
            values = [float(v) for v in parts[:5]]
        except ValueError:
            raise DataError(f"{path}:{k}: not numbers: {short(line.strip())!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}:{k}: non-finite value: {short(line.strip())!r}")
        rows.append((int(values[0]), *values[1:]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)
