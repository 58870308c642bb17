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
import re
from dataclasses import dataclass, field
from typing import Dict, List

from pydarknet.data.images import IMAGE_EXTENSIONS
from pydarknet.data.labels import label_path
from pydarknet.errors import DataError
from pydarknet.utils import files
from pydarknet.utils.files import short

__all__ = [
    "DataError",
    "Dataset",
    "read_data_file",
    "resolve_path",
    "read_image_list",
    "read_names",
    "load_dataset",
    "read_data_yaml",
    "data_classes",
]


def _read_text(path, limit, what) -> str:
    """A text file of at most ``limit`` bytes (a regular file: never a FIFO or a device), a UTF-8 byte-order
    mark dropped; DataError naming the file otherwise. ``what`` (e.g. "the names file ") goes in the message."""
    data = files.read_bounded(path, limit, lambda problem: DataError(f"{path}: {what}{problem}"))
    if b"\0" in data:
        raise DataError(f"{path}: {what}is not a text file (it contains NUL bytes)")
    return data.decode("utf-8-sig", errors="replace")


# As many classes as a [yolo] layer may have (pydarknet.core.graph): more cannot be trained or evaluated, and a
# typo like classes=99999999999999999999 would otherwise make a list of that many default names.
MAX_CLASSES = 100_000


# ----- .data files and paths ---------------------------------------------------------------------------------
def read_data_file(path) -> Dict[str, str]:
    """Darknet's ``read_data_cfg``: ``key = value`` lines (``#``/``;`` comments); returns a dict of strings.

    ``labels`` is accepted for ``names``, as Darknet does. A line without ``=`` is an error naming the line.
    """
    out = {}
    text = _read_text(path, files.MAX_TEXT_BYTES, "")
    for k, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise DataError(f"{path}:{k}: expected 'key = value', got {short(line)!r}")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    if "labels" in out and "names" not in out:
        out["names"] = out["labels"]
    return out


def _expand_user(value) -> pathlib.Path:
    """``~`` expanded; a ``~name`` of no known user (pathlib raises RuntimeError there) stays as written."""
    p = pathlib.Path(str(value))
    try:
        return p.expanduser()
    except RuntimeError:
        return p


def resolve_path(value, relative_to, exists=None) -> pathlib.Path:
    """A path read from the file ``relative_to``: as written (relative to the working folder) when that exists
    or is absolute; else relative to ``relative_to``'s folder or the nearest of its parents where it exists
    (Darknet's ``data/obj.data`` names ``data/train.txt``, relative to the folder above); else as written."""
    # os.path's checks answer False for names the OS refuses (too long, NUL bytes) where pathlib's raise
    found = exists or os.path.exists
    p = _expand_user(value)
    if p.is_absolute() or found(p):
        return p
    for folder in pathlib.Path(relative_to).absolute().parents:
        if found(folder / p):
            return folder / p
    return p


def read_image_list(path, exists=None) -> List[str]:
    """Image paths from a Darknet list file, one per line (blank lines and ``#`` comments skipped, the ends of a
    line stripped); relative entries resolved by :func:`resolve_path` against the list (``exists`` decides
    which candidate counts as present: calc-anchors, which reads only labels, also accepts an entry whose label
    file exists). Paths that do not exist are kept: the loader reports them in ``bad.list``."""
    text = _read_text(path, files.MAX_LIST_BYTES, "the image list ")
    found = os.path.exists if exists is None else (lambda candidate: exists(pathlib.Path(candidate)))
    parents = [str(folder) for folder in pathlib.Path(path).absolute().parents]
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # resolve_path, with the list's parents computed once: lists run to a million lines, many may be missing
        entry = str(_expand_user(line))  # normalised as a Path, as resolve_path returns it
        if not os.path.isabs(entry) and not found(entry):
            entry = next((c for c in (os.path.join(f, entry) for f in parents) if found(c)), entry)
        out.append(entry)
    return out


def read_names(path) -> List[str]:
    """Class names, one per line (Darknet's ``get_labels``: ends stripped, blank lines skipped)."""
    text = _read_text(path, files.MAX_TEXT_BYTES, "the names file ")
    names = [n for n in (line.strip() for line in text.splitlines()) if n]
    if not names:
        raise DataError(f"{path}: the names file is empty")
    return names


# ----- datasets ----------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A detection dataset: image lists, class names and where training outputs go."""

    source: str  # the .data / data.yaml file
    classes: int
    names: List[str]
    train: List[str]  # image paths
    valid: List[str]
    backup: pathlib.Path  # folder for weights and bad.list / bad_label.list
    options: Dict[str, object] = field(default_factory=dict)  # every key of the file, as read

    def label_path(self, image_path) -> str:
        return label_path(image_path)


def _images_in_folder(folder: pathlib.Path) -> List[str]:
    return sorted(str(p) for p in folder.rglob("*") if os.path.isfile(p) and p.suffix.lower() in IMAGE_EXTENSIONS)


def _expand_split(value, root: pathlib.Path, source, key) -> List[str]:
    """A data.yaml ``train``/``val`` entry: a folder, a list file, an image, or a list of those."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise DataError(f"{source}: '{key}' entries must be paths, got {item!r}")
        p = _expand_user(item)
        if not p.is_absolute():
            p = root / p
        if os.path.isdir(p):
            found = _images_in_folder(p)
            if not found:
                raise DataError(f"{source}: '{key}' folder {p} has no images")
            out.extend(found)
        elif os.path.isfile(p) and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(str(p))
        elif os.path.isfile(p):
            out.extend(read_image_list(p))
        else:
            raise DataError(f"{source}: '{key}': {p}: no such file or folder")
    return out


def _dataset_loader(yaml, path):
    """PyYAML's SafeLoader without anchors and aliases: a few hundred bytes of nested aliases expand into
    gigabytes (the "billion laughs"), and a dataset description has no use for them."""

    class DatasetLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
                raise DataError(
                    f"{path}:{event.start_mark.line + 1}: YAML {kind}{short(anchor, 40)} is not allowed in a "
                    f"dataset file (write the value out)"
                )
            return super().compose_node(parent, index)

    return DatasetLoader


def read_data_yaml(path, backup=None) -> Dataset:
    """An ultralytics ``data.yaml`` as a :class:`Dataset` (needs PyYAML)."""
    try:
        import yaml
    except ImportError:
        raise DataError(f"{path}: reading a data.yaml needs PyYAML (pip install pyyaml)") from None
    text = _read_text(path, files.MAX_TEXT_BYTES, "")
    try:
        doc = yaml.load(text, Loader=_dataset_loader(yaml, path))
    except DataError:
        raise
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({short(e, 300)})") from None
    except ValueError as e:  # a value PyYAML cannot convert (an integer of more than 4,300 digits, ...)
        raise DataError(f"{path}: a value cannot be read ({short(e, 200)})") from None
    except RecursionError:
        raise DataError(f"{path}: the YAML is nested too deeply") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with path/train/val/names")
    nc = doc.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= MAX_CLASSES):
        raise DataError(f"{path}: nc={short(repr(nc))} is not a positive number of classes (at most {MAX_CLASSES})")
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


def data_classes(opts, path, default=None) -> int:
    """The ``classes`` of a ``.data`` file read by :func:`read_data_file`: a number of at least 1 (``default``
    when the key is absent and a default is given)."""
    if "classes" not in opts:
        if default is not None:
            return default
        raise DataError(f"{path}: no 'classes' key")
    value = opts["classes"]
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", value.strip()):
        raise DataError(f"{path}: classes={short(value)!r} is not a number of classes")
    classes = int(value)
    if not 1 <= classes <= MAX_CLASSES:
        raise DataError(f"{path}: classes={classes} is out of range (1..{MAX_CLASSES})")
    return classes


def data_names(opts, path, classes) -> List[str]:
    """The class names a ``.data`` file names (``names``/``labels``), checked against ``classes``; None when the
    file names none."""
    if not opts.get("names"):
        return None
    names_path = resolve_path(opts["names"], path)
    if not os.path.isfile(names_path):
        raise DataError(f"{path}: names file {names_path}: no such file")
    names = read_names(names_path)
    if len(names) != classes:
        raise DataError(f"{names_path} has {len(names)} names but {path} says classes={classes}")
    return names


def _read_data(path, backup=None) -> Dataset:
    opts = read_data_file(path)
    classes = data_classes(opts, path)
    if not opts.get("train"):
        raise DataError(f"{path}: no 'train' list")
    lists, read = {}, {}
    for key in ("train", "valid"):
        value = opts.get(key) or opts["train"]
        p = resolve_path(value, path)
        if not os.path.isfile(p):
            raise DataError(f"{path}: {key} list {p}: no such file")
        if p not in read:  # valid is often the train list itself: read it once
            read[p] = read_image_list(p)
        lists[key] = list(read[p])
    names = data_names(opts, path, classes) or [str(i) for i in range(classes)]
    if backup is None:
        backup = resolve_path(opts.get("backup") or "backup", path)
    return Dataset(str(path), classes, names, lists["train"], lists["valid"], pathlib.Path(backup), dict(opts))


def load_dataset(path, backup=None) -> Dataset:
    """A dataset from a Darknet ``.data`` file or an ultralytics ``data.yaml`` (by extension ``.yaml``/
    ``.yml``). ``backup`` overrides the file's backup folder."""
    if str(path).lower().endswith((".yaml", ".yml")):
        return read_data_yaml(path, backup)
    return _read_data(path, backup)
