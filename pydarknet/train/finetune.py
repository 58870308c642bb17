"""The fine-tuning cfg for a dataset: a released cfg edited the way Darknet's custom-training guide says.

``pydarknet finetune-cfg BASE.cfg DATA -o OUT.cfg`` does the hand edits of AlexeyAB's README ("How to train to
detect your custom objects") on the text of ``BASE.cfg``:

* ``classes=`` of every ``[yolo]``; ``filters=(classes + 5) * len(mask)`` in the ``[convolutional]`` right before
  it (``num`` when the ``[yolo]`` has no ``mask``). That is what Darknet's parser checks (``parser.c``); the
  ``new_coords=1`` heads (yolov4-csp, -p5/p6, yolov7) follow the same rule: the anchors of the mask, not ``num``;
* ``anchors=`` of every ``[yolo]`` from :func:`pydarknet.train.anchors.calc_anchors` on the training labels
  (``num`` clusters at the network size), unless ``anchors="keep"``. The anchors come out sorted by area, so each
  must belong to exactly one head, the finer head taking the smaller ones: where the masks do not already split
  the anchors that way (yolov4-tiny's fine head uses anchors 1,2,3 of the COCO set) they are redrawn as
  consecutive runs, heads in the order of their old masks -- what Darknet's yolov4-tiny-custom.cfg does;
* ``max_batches = classes * 2000``, but not less than the number of training images and not less than 6000
  (the guide's rule), or the given number; ``steps`` at 80 % and 90 % of it (with ``policy=steps``);
* ``burn_in`` (where the cfg sets it): the cfg's, but at most a third of ``max_batches`` (our rule, not the
  guide's: a short run, e.g. a few hundred iterations on a CPU, must not spend most of it warming up);
* ``width``/``height`` (multiples of 32), ``batch``/``subdivisions`` when given; ``counters_per_class`` (where
  the base cfg has it) counted again on the new data.

Only those values change: every other line, comment and blank line of the base cfg is kept as it was, and a
key the base cfg lacks (``burn_in``) is added at the end of its section. The result is checked by building the
network from it before it is returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pydarknet.core.cfg import parse_cfg_text, read_cfg
from pydarknet.core.graph import SECTION_ALIASES, build_network
from pydarknet.data.dataset import load_dataset
from pydarknet.errors import CfgError
from pydarknet.train.anchors import calc_anchors, read_box_sizes

__all__ = ["FinetuneResult", "finetune_cfg", "guide_max_batches"]

MIN_MAX_BATCHES = 6000  # the guide: "not less than 6000"
ITERATIONS_PER_CLASS = 2000  # the guide: "classes*2000"
BURN_IN_FRACTION = 3  # burn_in at most max_batches / 3


def guide_max_batches(classes: int, train_images: int) -> int:
    """Darknet's guide: ``max_batches = classes*2000``, not less than the training images, not less than 6000."""
    return max(int(classes) * ITERATIONS_PER_CLASS, int(train_images), MIN_MAX_BATCHES)


@dataclass
class FinetuneResult:
    text: str  # the new cfg
    classes: int
    max_batches: int
    steps: Optional[List[int]]  # None when the policy is not steps
    burn_in: int
    anchors: Optional[List[List[int]]]  # the anchors written (w, h), None with anchors="keep"
    anchors_iou: Optional[float]  # average IoU of the training boxes with their closest anchor
    train_images: int
    changes: List[str] = field(default_factory=list)  # "line N: [section] key old -> new", in line order


class _CfgText:
    """A cfg's lines with the position of every section and key, for editing values in place."""

    def __init__(self, text: str, path):
        self.path = path
        self.lines = text.splitlines(keepends=True)
        if self.lines and not self.lines[-1].endswith(("\n", "\r")):
            self.lines[-1] += "\n"
        self.newline = "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"
        self.sections = []  # [name, header line index, {key: line index}]
        for i, raw in enumerate(self.lines):
            line = re.sub(r"[ \t\r\n\f\v]", "", raw)
            if not line or line[0] in "#;":
                continue
            if line[0] == "[":
                self.sections.append([line[1:-1], i, {}])
            elif self.sections and "=" in line:
                self.sections[-1][2].setdefault(line.split("=", 1)[0], i)
        self.changes: List[str] = []

    def get(self, section: int, key: str) -> Optional[str]:
        i = self.sections[section][2].get(key)
        return None if i is None else re.sub(r"[ \t\r\n\f\v]", "", self.lines[i]).split("=", 1)[1]

    def set(self, section: int, key: str, value) -> None:
        value = str(value)
        old = self.get(section, key)
        if old == value.replace(" ", ""):
            return
        i = self.sections[section][2].get(key)
        if i is None:
            at = self._end_of(section)
            self.lines.insert(at, f"{key}={value}{self.newline}")
            for s in self.sections:
                s[1] += s[1] >= at
                for k in s[2]:
                    s[2][k] += s[2][k] >= at
            self.sections[section][2][key] = at
            self.changes.append(f"line {at + 1}: [{self.sections[section][0]}] {key}={value} (added)")
            return
        raw = self.lines[i]
        body = raw.rstrip("\r\n")
        head = re.match(r"\s*[^=]*=\s*", body).group(0)  # the key as written, "=", and the spaces after it
        self.lines[i] = head + value + raw[len(body) :]
        self.changes.append(f"line {i + 1}: [{self.sections[section][0]}] {key} {old} -> {value}")

    def _end_of(self, section: int) -> int:
        """Where a new key goes: after the last key line of the section (before blank lines and comments)."""
        keys = self.sections[section][2].values()
        return (max(keys) if keys else self.sections[section][1]) + 1

    def changes_in_line_order(self) -> List[str]:
        return sorted(self.changes, key=lambda c: int(c.split(":", 1)[0].split()[1]))

    def text(self) -> str:
        return "".join(self.lines)


def _layer_kind(name: str) -> str:
    return SECTION_ALIASES.get(name, name)


def _ints(text: Optional[str]) -> List[int]:
    return [int(float(v)) for v in (text or "").split("#")[0].split(",") if v != ""]


def _split_anchors(masks: List[List[int]], num: int) -> List[List[int]]:
    """Masks under which each of the ``num`` anchors (sorted by area) belongs to exactly one head: unchanged if
    they already do, else consecutive runs of the same sizes, heads in the order of their old masks' means."""
    flat = sorted(m for mask in masks for m in mask)
    if flat == list(range(num)) or len(flat) != num:
        return masks
    order = sorted(range(len(masks)), key=lambda h: (sum(masks[h]) / max(1, len(masks[h])), h))
    out: List[List[int]] = [[] for _ in masks]
    start = 0
    for h in order:
        out[h] = list(range(start, start + len(masks[h])))
        start += len(masks[h])
    return out


def finetune_cfg(
    base_cfg,
    data,
    *,
    width: Optional[int] = None,
    height: Optional[int] = None,
    max_batches: Optional[int] = None,
    anchors: str = "auto",
    batch: Optional[int] = None,
    subdivisions: Optional[int] = None,
    seed: int = 0,
    lenient: bool = False,
) -> FinetuneResult:
    """The text of ``base_cfg`` edited for fine-tuning on ``data`` (a ``.data`` or ``data.yaml``); see the module
    documentation. ``anchors``: ``"auto"`` (k-means on the training labels) or ``"keep"``."""
    if anchors not in ("auto", "keep"):
        raise ValueError(f"anchors must be 'auto' or 'keep', got {anchors!r}")
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value < 32 or value % 32):
            raise ValueError(f"--{name} must be a positive multiple of 32, got {value}")
    for name, value in (("max-batches", max_batches), ("batch", batch), ("subdivisions", subdivisions)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    base = build_network(read_cfg(base_cfg, lenient), base_cfg, lenient)  # the base cfg must be sound
    with open(base_cfg, encoding="utf-8", errors="replace") as f:
        cfg = _CfgText(f.read(), base_cfg)
    dataset = load_dataset(data)
    classes = dataset.classes
    train_images = len(dataset.train)
    if train_images == 0:
        raise CfgError(f"{dataset.source} lists no training images", data, None)

    # ----- [net]
    net = 0
    for key, value in (("width", width), ("height", height), ("batch", batch), ("subdivisions", subdivisions)):
        if value is not None:
            cfg.set(net, key, int(value))
    net_w = int(width or base.net["width"])
    net_h = int(height or base.net["height"])
    guide = guide_max_batches(classes, train_images)
    iterations = int(max_batches) if max_batches is not None else guide
    cfg.set(net, "max_batches", iterations)
    steps = None
    if base.net["policy"] == "steps":
        steps = [int(iterations * 0.8), int(iterations * 0.9)]
        cfg.set(net, "steps", ",".join(str(s) for s in steps))
        if len((cfg.get(net, "scales") or "").split(",")) != 2:
            cfg.set(net, "scales", ".1,.1")
    burn_in = min(int(base.net["burn_in"]), iterations // BURN_IN_FRACTION)
    if cfg.get(net, "burn_in") is not None:
        cfg.set(net, "burn_in", burn_in)

    # ----- the heads
    heads = [i for i, s in enumerate(cfg.sections) if _layer_kind(s[0]) == "yolo"]
    if not heads:
        raise CfgError("finetune-cfg edits [yolo] heads and this cfg has none", base_cfg, None)
    yolo_layers = [layer for layer in base.layers if layer.type == "yolo"]
    nums = {int(layer.options["num"]) for layer in yolo_layers}
    masks = [list(layer.options["mask"]) for layer in yolo_layers]
    new_anchors = iou = None
    if anchors == "auto":
        if len(nums) != 1:
            raise CfgError(f"the [yolo] heads have different num= ({sorted(nums)}); use --anchors keep", base_cfg)
        num = nums.pop()
        fit = calc_anchors(dataset.train, num, net_w, net_h, seed=seed)
        new_anchors = [[max(1, round(float(w))), max(1, round(float(h)))] for w, h in fit.anchors]
        iou = fit.mean_iou
        masks = _split_anchors(masks, num)
    counts: Optional[Dict[int, int]] = None
    for head, mask in zip(heads, masks):
        before = head - 1
        if before < 1 or _layer_kind(cfg.sections[before][0]) != "convolutional":
            raise CfgError(
                "the section before this [yolo] is not a [convolutional]: its filters cannot be set",
                base_cfg,
                cfg.sections[head][1] + 1,
            )
        cfg.set(before, "filters", (classes + 5) * len(mask))
        cfg.set(head, "classes", classes)
        if new_anchors is not None:
            cfg.set(head, "anchors", ", ".join(f"{w},{h}" for w, h in new_anchors))
            if cfg.get(head, "mask") is not None:
                cfg.set(head, "mask", ",".join(str(m) for m in mask))
        if cfg.get(head, "counters_per_class") is not None:
            if counts is None:
                counts = _class_counts(dataset.train, classes)
            cfg.set(head, "counters_per_class", ", ".join(str(counts[c]) for c in range(classes)))

    text = cfg.text()
    build_network(parse_cfg_text(text, base_cfg, lenient), base_cfg, lenient)  # the result loads
    return FinetuneResult(text, classes, iterations, steps, burn_in, new_anchors, iou, train_images, list(cfg.changes))


def _class_counts(images, classes) -> Dict[int, int]:
    _, counts, _, _ = read_box_sizes(images, classes)
    return {c: (counts[c] if c < len(counts) else 0) for c in range(classes)}
