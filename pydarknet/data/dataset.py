"""Training and validation datasets: Darknet ``.data`` files, ultralytics ``data.yaml`` files, image lists,
label paths and strict YOLO label parsing.

What Darknet does and what we do (AlexeyAB/darknet ``read_data_cfg``, ``get_paths``, ``replace_image_to_label``
in ``utils.c``, ``read_boxes``/``fill_truth_detection`` in ``data.c``):

* ``.data``: ``key = value`` lines, ``#``/``;`` comments; keys ``classes``, ``train``, ``valid`` (default: the
  train list), ``names`` (alias ``labels``), ``backup``. Paths are used as written, i.e. relative to the working
  folder, as Darknet does; when that does not exist but the path relative to the ``.data`` file's folder (or
  one of its parents, nearest first) does, that one is taken, so a dataset can be used from any folder.
* A list file names one image per line; relative entries are resolved the same way (working folder, then the
  list's folder and its parents). Blank lines and ``#`` comments are skipped.
* Label path: AlexeyAB's substitutions (``/images/train2017/`` -> ``/labels/train2017/``, the same for val2017,
  train2014, val2014, and ``/JPEGImages/`` -> ``/labels/``, with ``/`` or ``\\``), then the layout with a
  ``labels`` folder beside an ``images`` folder (pjreddie and ultralytics datasets), then the label beside the
  image (hank-ai). The first that exists is used. The image extension, whatever it is, becomes ``.txt``
  (AlexeyAB only knows jpg/jpeg/png/bmp/ppm/tiff).
* Labels: ``class x_center y_center width height``, relative to the image. Parsed strictly, unlike Darknet's
  ``fscanf`` (which stops silently at the first malformed line): exactly five numbers per line, an integer
  class in ``[0, classes)``, finite coordinates inside ``[0, 1]`` up to :data:`LABEL_EPS`, a non-empty box.
  Overshoots within the epsilon are clipped (the box edges to ``[0, 1]``), as Darknet's ``correct_boxes``
  clips. A label file with any bad line takes its image out of training (Darknet only drops the bad box, which
  leaves an unlabelled object that then teaches "background"); every problem is written, with its reason, to
  ``bad_label.list`` in the backup folder. A missing label file makes the image a background image (no
  objects), as in Darknet, and is noted in ``bad.list``; so are images that cannot be read, which are skipped.
* ``data.yaml`` (ultralytics): ``path`` (dataset root; default the yaml's folder), ``train``/``val`` (a folder
  of images, searched recursively; a list file; an image; or a list of those, relative to ``path``),
  ``names`` (a list, or a dict ``{index: name}``), optional ``nc``. Labels live in ``labels/`` beside
  ``images/``, which the label-path rules above find.
"""

from __future__ import annotations

import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from pydarknet.errors import DarknetError

__all__ = ["DataError", "Dataset", "ProblemLog", "LABEL_EPS", "read_data_file", "resolve_path", "read_image_list",
           "read_names", "load_dataset", "read_data_yaml", "label_candidates", "label_path", "parse_labels",
           "read_labels"]

# How far outside [0, 1] a label coordinate may stray and still be taken (then clipped). Annotation tools
# round, and boxes touching the border often end at 1.0004; anything further out is a wrong label.
LABEL_EPS = 0.01

MAX_PROBLEMS_LISTED = 20     # bad lines reported per label file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif", ".jpe")

# AlexeyAB's replace_image_to_label substitutions, in its order (first occurrence of each).
_ALEXEYAB_SUBSTITUTIONS = (
    ("/images/train2017/", "/labels/train2017/"), ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"), ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"), ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"), ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)


class DataError(DarknetError, ValueError):
    """A bad dataset description: a ``.data`` or ``data.yaml`` file, a list, a names file or a label file."""


# ----- .data files and paths ---------------------------------------------------------------------------------
def read_data_file(path) -> Dict[str, str]:
    """Darknet's ``read_data_cfg``: ``key = value`` lines (``#``/``;`` comments); returns a dict of strings.

    ``labels`` is accepted for ``names``, as Darknet does. A line without ``=`` is an error naming the line.
    """
    out = {}
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    for k, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise DataError(f"{path}:{k}: expected 'key = value', got {line!r}")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    if "labels" in out and "names" not in out:
        out["names"] = out["labels"]
    return out


def resolve_path(value, relative_to) -> pathlib.Path:
    """A path read from the file ``relative_to``: as written (relative to the working folder) when that exists
    or is absolute; else relative to ``relative_to``'s folder or the nearest of its parents where it exists
    (Darknet's ``data/obj.data`` names ``data/train.txt``, relative to the folder above); else as written."""
    p = pathlib.Path(str(value)).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for folder in pathlib.Path(relative_to).absolute().parents:
        if (folder / p).exists():
            return folder / p
    return p


def read_image_list(path) -> List[str]:
    """Image paths from a Darknet list file, one per line (blank lines and ``#`` comments skipped, the ends of a
    line stripped); relative entries resolved by :func:`resolve_path` against the list. Paths that do not exist are kept: the
    loader reports them in ``bad.list``."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read the image list ({e.strerror or e})") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(str(resolve_path(line, path)))
    return out


def read_names(path) -> List[str]:
    """Class names, one per line (Darknet's ``get_labels``: ends stripped, blank lines skipped)."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read the names file ({e.strerror or e})") from None
    names = [n for n in (line.strip() for line in text.splitlines()) if n]
    if not names:
        raise DataError(f"{path}: the names file is empty")
    return names


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
        raw = pathlib.Path(path).read_bytes()
    except OSError as e:
        return np.zeros((0, 5), np.float32), [f"cannot read ({e.strerror or e})"]
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
            problems.append(f"{where}: expected 'class x y w h' (5 numbers), got {len(parts)} fields: "
                            f"{line.strip()[:80]!r}")
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
            problems.append(f"{where}: box x={x:g} y={y:g} w={w:g} h={h:g} is not inside [0, 1] "
                            f"(relative coordinates; w, h > 0)")
            continue
        left, right, top, bottom = x - w / 2, x + w / 2, y - h / 2, y + h / 2
        if left < lo or top < lo or right > hi or bottom > hi:
            problems.append(f"{where}: box x={x:g} y={y:g} w={w:g} h={h:g} reaches outside the image "
                            f"(edges {left:.4g}..{right:.4g}, {top:.4g}..{bottom:.4g})")
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
        self.entries: List[Tuple[str, str, str]] = []   # (list name, path, reason)
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


# ----- datasets ----------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A detection dataset: image lists, class names and where training outputs go."""
    source: str                 # the .data / data.yaml file
    classes: int
    names: List[str]
    train: List[str]            # image paths
    valid: List[str]
    backup: pathlib.Path        # folder for weights and bad.list / bad_label.list
    options: Dict[str, object] = field(default_factory=dict)   # every key of the file, as read

    def label_path(self, image_path) -> str:
        return label_path(image_path)


def _images_in_folder(folder: pathlib.Path) -> List[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _expand_split(value, root: pathlib.Path, source, key) -> List[str]:
    """A data.yaml ``train``/``val`` entry: a folder, a list file, an image, or a list of those."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise DataError(f"{source}: '{key}' entries must be paths, got {item!r}")
        p = pathlib.Path(item).expanduser()
        if not p.is_absolute():
            p = root / p
        if p.is_dir():
            found = _images_in_folder(p)
            if not found:
                raise DataError(f"{source}: '{key}' folder {p} has no images")
            out.extend(found)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(str(p))
        elif p.is_file():
            out.extend(read_image_list(p))
        else:
            raise DataError(f"{source}: '{key}': {p}: no such file or folder")
    return out


def read_data_yaml(path, backup=None) -> Dataset:
    """An ultralytics ``data.yaml`` as a :class:`Dataset` (needs PyYAML)."""
    try:
        import yaml
    except ImportError:
        raise DataError(f"{path}: reading a data.yaml needs PyYAML (pip install pyyaml)") from None
    try:
        doc = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with path/train/val/names")
    nc = doc.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DataError(f"{path}: nc={nc!r} is not a positive number of classes")
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys must be 0..{len(keys) - 1} without gaps")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    elif names is None and nc is not None:
        names = [str(i) for i in range(nc)]
    else:
        raise DataError(f"{path}: 'names' must be a list or a {{index: name}} mapping")
    if not names:
        raise DataError(f"{path}: no class names")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc={nc} but {len(names)} names")
    root_value = doc.get("path")
    root = resolve_path(root_value, path) if root_value else pathlib.Path(path).parent
    if "train" not in doc:
        raise DataError(f"{path}: no 'train' entry")
    train = _expand_split(doc["train"], root, path, "train")
    val_value = doc.get("val", doc.get("valid"))
    valid = _expand_split(val_value, root, path, "val") if val_value else list(train)
    backup = pathlib.Path(backup) if backup is not None else root / "backup"
    return Dataset(str(path), len(names), names, train, valid, backup, dict(doc))


def _read_data(path, backup=None) -> Dataset:
    opts = read_data_file(path)
    if "classes" not in opts:
        raise DataError(f"{path}: no 'classes' key")
    try:
        classes = int(opts["classes"])
    except ValueError:
        raise DataError(f"{path}: classes={opts['classes']!r} is not a number") from None
    if classes < 1:
        raise DataError(f"{path}: classes={classes} must be at least 1")
    if not opts.get("train"):
        raise DataError(f"{path}: no 'train' list")
    lists = {}
    for key in ("train", "valid"):
        value = opts.get(key) or opts["train"]
        p = resolve_path(value, path)
        if not p.is_file():
            raise DataError(f"{path}: {key} list {p}: no such file")
        lists[key] = read_image_list(p)
    if opts.get("names"):
        names_path = resolve_path(opts["names"], path)
        names = read_names(names_path)
        if len(names) != classes:
            raise DataError(f"{names_path} has {len(names)} names but {path} says classes={classes}")
    else:
        names = [str(i) for i in range(classes)]
    if backup is None:
        backup = resolve_path(opts.get("backup") or "backup", path)
    return Dataset(str(path), classes, names, lists["train"], lists["valid"], pathlib.Path(backup), dict(opts))


def load_dataset(path, backup=None) -> Dataset:
    """A dataset from a Darknet ``.data`` file or an ultralytics ``data.yaml`` (by extension ``.yaml``/
    ``.yml``). ``backup`` overrides the file's backup folder."""
    if str(path).lower().endswith((".yaml", ".yml")):
        return read_data_yaml(path, backup)
    return _read_data(path, backup)
