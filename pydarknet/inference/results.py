"""Detections of one image: boxes, scores, classes, and the outputs Darknet users know.

A :class:`Results` holds one row per detection -- a (box, class) pair whose probability survived the thresholds
and NMS, the way Darknet's ``-out`` JSON and COCO export list them (a box with two classes above the threshold
gives two rows sharing ``box_index``). Rows are sorted by confidence, highest first.

Boxes are Darknet's own numbers: they may extend slightly past the image border (Darknet clips only when it
draws and in its COCO export; :meth:`Results.clip` gives clipped copies).

Box formats (``n`` rows, float32):

* ``xyxy``: left, top, right, bottom in pixels; ``xyxyn``: the same divided by the image width/height.
* ``xywh``: centre x, centre y, width, height in pixels; ``xywhn``: normalized (Darknet's
  ``relative_coordinates`` and YOLO label format).
* ``tlwh``: left, top, width, height in pixels (COCO ``bbox``, Darknet's ``-ext_output``).
"""

from __future__ import annotations

import colorsys
import json
import math
import pathlib
import re
from typing import Iterable, NamedTuple, Optional

import numpy as np

from pydarknet.data.coco import COCO80_TO_91
from pydarknet.utils.atomic import atomic_write_text

__all__ = [
    "Results",
    "Detection",
    "COCO80_TO_91",
    "class_color",
    "write_darknet_json",
    "write_coco_json",
    "coco_image_id",
    "plot_style",
]


class Detection(NamedTuple):
    """One row of a Results (what iterating over it yields)."""

    class_id: int
    name: str
    conf: float
    xyxy: tuple  # pixels: left, top, right, bottom
    box_index: int


def _c_round(v):
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def class_color(class_id):
    """A distinct, saturated RGB colour per class id (golden-ratio hue steps, three brightness levels)."""
    h = (class_id * 0.618033988749895) % 1.0
    s = (0.95, 0.75, 0.85)[class_id % 3]
    v = (0.95, 0.80, 0.65)[(class_id // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def coco_image_id(path):
    """COCO image id from a file name: ``000000000139.jpg`` -> 139, ``COCO_val2014_000000000042.jpg`` -> 42;
    other names give the file stem (a string)."""
    stem = pathlib.PurePath(str(path)).stem
    if stem.isdigit():
        return int(stem)
    m = re.search(r"_(\d+)$", stem)
    if m:
        return int(m.group(1))
    return stem


class Results:
    """Detections of one image (see the module docstring for the box formats)."""

    # For a video frame (net.detect_stream): its index in the source and its time in seconds.
    frame: Optional[int] = None
    timestamp: Optional[float] = None

    def __init__(
        self,
        boxes,
        conf,
        class_id,
        *,
        names,
        image_size,
        box_index=None,
        objectness=None,
        image=None,
        path=None,
        speed=None,
    ):
        self._xywhn = np.asarray(boxes, np.float32).reshape(-1, 4)
        n = len(self._xywhn)
        self.conf = np.asarray(conf, np.float32).reshape(n)
        self.class_id = np.asarray(class_id, np.int64).reshape(n)
        self.box_index = (np.arange(n) if box_index is None else np.asarray(box_index, np.int64)).reshape(n)
        self.objectness = self.conf.copy() if objectness is None else np.asarray(objectness, np.float32).reshape(n)
        self.names = list(names)
        self.width, self.height = int(image_size[0]), int(image_size[1])
        self.image = image
        self.path = None if path is None else str(path)
        self.speed = dict(speed or {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0})

    @classmethod
    def from_darknet(cls, boxes, objectness, probs, *, names, image_size, image=None, path=None):
        """Build from Darknet detections: relative boxes (m,4), objectness (m,), per-class probabilities (m,C)."""
        probs = np.asarray(probs, np.float32)
        rows, classes = np.nonzero(probs > 0)
        conf = probs[rows, classes]
        order = np.lexsort((classes, rows, -conf))  # by confidence, then box, then class
        rows, classes, conf = rows[order], classes[order], conf[order]
        # number boxes by first appearance (box 0 holds the most confident detection)
        first = {}
        box_index = np.array([first.setdefault(int(r), len(first)) for r in rows], np.int64)
        return cls(
            np.asarray(boxes, np.float32)[rows],
            conf,
            classes,
            names=names,
            image_size=image_size,
            box_index=box_index,
            objectness=np.asarray(objectness, np.float32)[rows],
            image=image,
            path=path,
        )

    # ----- sizes and boxes ----------------------------------------------------------------------------------
    @property
    def image_size(self):
        """(width, height) of the original image."""
        return self.width, self.height

    @property
    def timings(self):
        """Milliseconds spent on this image: ``preprocess``, ``inference`` (its share of the batch), ``postprocess``."""
        return dict(self.speed)

    @property
    def orig_shape(self):
        """(height, width) of the original image."""
        return self.height, self.width

    @property
    def _scale(self):
        return np.array([self.width, self.height, self.width, self.height], np.float32)

    @property
    def xywhn(self):
        return self._xywhn.copy()

    @property
    def xyxyn(self):
        b = self._xywhn
        return np.stack(
            [b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], axis=1
        ).astype(np.float32)

    @property
    def xywh(self):
        return (self._xywhn * self._scale).astype(np.float32)

    @property
    def xyxy(self):
        return (self.xyxyn * self._scale).astype(np.float32)

    @property
    def tlwh(self):
        b = self.xyxy
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).astype(np.float32)

    @property
    def labels(self):
        """Class name of each detection."""
        return [self.names[c] for c in self.class_id]

    def clip(self):
        """A copy whose boxes are clipped to the image."""
        b = np.clip(self.xyxyn, 0.0, 1.0)
        xywhn = np.stack(
            [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1
        )
        return Results(
            xywhn,
            self.conf,
            self.class_id,
            names=self.names,
            image_size=self.image_size,
            box_index=self.box_index,
            objectness=self.objectness,
            image=self.image,
            path=self.path,
            speed=self.speed,
        )

    # ----- python protocol ----------------------------------------------------------------------------------
    def __len__(self):
        return len(self.conf)

    def __iter__(self):
        xyxy = self.xyxy
        for i in range(len(self)):
            c = int(self.class_id[i])
            yield Detection(
                c, self.names[c], float(self.conf[i]), tuple(float(v) for v in xyxy[i]), int(self.box_index[i])
            )

    def __getitem__(self, i):
        return list(self)[i]

    def counts(self):
        """{class name: number of detections}, most frequent first."""
        out = {}
        for name in self.labels:
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self):
        """One line: image size, number of objects per class and timings."""
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        s = self.speed
        what = f"{len(self)} object{'s' if len(self) != 1 else ''}" + (f" ({counts})" if counts else "")
        return (
            f"{self.path or 'image'} {self.width}x{self.height}: {what}; {s['preprocess']:.1f} ms pre-process, "
            f"{s['inference']:.1f} ms inference, {s['postprocess']:.1f} ms post-process"
        )

    def __repr__(self):
        return f"<pydarknet.Results {self.summary()}>"

    def to_dict(self):
        """Plain Python data (one dict per detection, pixel boxes)."""
        return [
            {
                "class_id": d.class_id,
                "name": d.name,
                "confidence": d.conf,
                "box": {"left": d.xyxy[0], "top": d.xyxy[1], "right": d.xyxy[2], "bottom": d.xyxy[3]},
            }
            for d in self
        ]

    # ----- Darknet's text outputs ---------------------------------------------------------------------------
    def darknet_lines(self, ext_output=False):
        """What Darknet's ``detector test`` prints for this image (``draw_detections_v3``): for each box, sorted by
        its left edge, ``name: 97%`` for its best class (with ``-ext_output`` followed by
        ``\\t(left_x: ... top_y: ... width: ... height: ...)`` in pixels) and a plain line for each other class."""
        lines = []
        groups = {}
        for i in range(len(self)):
            groups.setdefault(int(self.box_index[i]), []).append(i)
        b = self._xywhn.astype(np.float64)
        order = sorted(groups, key=lambda k: float(b[groups[k][0], 0] - b[groups[k][0], 2] / 2))
        for k in order:
            rows = sorted(groups[k], key=lambda i: -float(self.conf[i]))
            best = rows[0]
            line = f"{self.names[self.class_id[best]]}: {float(self.conf[best]) * 100:.0f}%"
            if ext_output:
                x, y, w, h = b[best]
                left, top = _c_round((x - w / 2) * self.width), _c_round((y - h / 2) * self.height)
                width, height = _c_round(w * self.width), _c_round(h * self.height)
                line += f"\t(left_x: {left:4.0f}   top_y: {top:4.0f}   width: {width:4.0f}   height: {height:4.0f})"
            lines.append(line)
            for i in sorted(rows[1:], key=lambda i: int(self.class_id[i])):
                lines.append(f"{self.names[self.class_id[i]]}: {float(self.conf[i]) * 100:.0f}%")
        return lines

    def to_json(self, frame_id=1, filename=None):
        """This image's entry of Darknet's ``-out result.json`` (``detection_to_json``), same layout and ``%f``
        numbers; ``filename`` defaults to the image's path (omitted when there is none, as Darknet does)."""
        filename = self.path if filename is None else str(filename)
        head = f'{{\n "frame_id":{int(frame_id)}, \n'
        if filename is not None:
            head += f' "filename":{json.dumps(filename)}, \n'
        head += ' "objects": [ \n'
        objs = []
        for i in range(len(self)):
            x, y, w, h = (float(v) for v in self._xywhn[i])
            c = int(self.class_id[i])
            objs.append(
                f'  {{"class_id":{c}, "name":{json.dumps(self.names[c])}, "relative_coordinates":'
                f'{{"center_x":{x:f}, "center_y":{y:f}, "width":{w:f}, "height":{h:f}}}, '
                f'"confidence":{float(self.conf[i]):f}}}'
            )
        return head + ", \n".join(objs) + "\n ] \n}"

    def to_coco(self, image_id=None, category_ids=None):
        """COCO results (``detector valid`` with ``eval=coco``): one dict per detection with ``image_id``,
        ``category_id``, ``bbox`` = [left, top, width, height] in pixels clipped to the image, ``score``.

        ``image_id`` defaults to :func:`coco_image_id` of the path; ``category_ids`` maps class ids to
        category ids (default: Darknet's 80 -> 91 COCO map for 80 classes, the class id otherwise)."""
        if image_id is None:
            image_id = coco_image_id(self.path) if self.path else 0
        if category_ids is None:
            category_ids = COCO80_TO_91 if len(self.names) == 80 else None
        b = self._xywhn.astype(np.float64)
        out = []
        for i in range(len(self)):
            x, y, w, h = b[i] * [self.width, self.height, self.width, self.height]
            xmin, xmax = max(x - w / 2, 0.0), min(x + w / 2, float(self.width))
            ymin, ymax = max(y - h / 2, 0.0), min(y + h / 2, float(self.height))
            c = int(self.class_id[i])
            out.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[c]) if category_ids else c,
                    "bbox": [round(xmin, 6), round(ymin, 6), round(xmax - xmin, 6), round(ymax - ymin, 6)],
                    "score": round(float(self.conf[i]), 6),
                }
            )
        return out

    def txt_lines(self, conf=False):
        """YOLO label lines ``class x_center y_center width height`` (normalized, clipped to the image), one per
        box with its best class, as Darknet's ``-save_labels`` writes them; ``conf=True`` appends the score."""
        lines = []
        clipped = self.clip()._xywhn
        seen = set()
        for i in range(len(self)):  # rows are sorted by confidence: the first row of a box is its best
            k = int(self.box_index[i])
            if k in seen:
                continue
            seen.add(k)
            x, y, w, h = (float(v) for v in clipped[i])
            line = f"{int(self.class_id[i])} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
            if conf:
                line += f" {float(self.conf[i]):.6f}"
            lines.append(line)
        return lines

    def save_txt(self, path, conf=False):
        """Write :meth:`txt_lines` to ``path`` (an empty file when nothing was detected); returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in self.txt_lines(conf))
        path.write_text(text)
        return path

    # ----- drawing ------------------------------------------------------------------------------------------
    def plot(self, image=None, *, line_width=None, font_size=None, labels=True, conf=True):
        """The image with a box and a ``name 0.87`` label per detected box (a colour per class), as a PIL image.

        ``image`` defaults to the image the detections came from (HxWx3 uint8 RGB array or PIL image)."""
        from PIL import Image, ImageDraw

        if image is None:
            image = self.image
        if image is None and self.path:
            from pydarknet.data.images import load_image

            image = load_image(self.path)[0]
        if image is None:
            raise ValueError("no image to draw on: pass image=")
        im = (
            image.convert("RGB").copy()
            if isinstance(image, Image.Image)
            else Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
        )
        if im.size != (self.width, self.height):
            raise ValueError(
                f"the image is {im.size[0]}x{im.size[1]} but the detections are for {self.width}x{self.height}"
            )
        W, H = im.size
        lw, fs = plot_style(W, H, line_width, font_size)
        font = _font(fs)
        draw = ImageDraw.Draw(im)
        groups = self._box_groups()
        xyxy = self.xyxy.astype(np.float64)
        # least confident first so the most confident box ends up on top (as Darknet draws)
        for k in sorted(groups, key=lambda k: float(self.conf[groups[k][0]])):
            best = groups[k][0]
            x1, y1, x2, y2 = xyxy[best]
            x1, x2 = min(max(x1, 0), W - 1), min(max(x2, 0), W - 1)
            y1, y2 = min(max(y1, 0), H - 1), min(max(y2, 0), H - 1)
            draw.rectangle([x1, y1, x2, y2], outline=class_color(int(self.class_id[best])), width=lw)
        if not labels:
            return im
        # labels after every box, so that no outline crosses one
        for label in reversed(self.label_layout(lambda t: draw.textbbox((0, 0), t, font=font), lw, fs, conf)):
            color = class_color(label["class_id"])
            lx, ly, bw, bh = label["rect"]
            draw.rectangle([lx, ly, lx + bw - 1, ly + bh - 1], fill=color)
            lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
            tb, pad = label["text_bbox"], label["pad"]
            draw.text(
                (lx + pad - tb[0], ly + pad - tb[1]),
                label["text"],
                fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
                font=font,
            )
        return im

    def _box_groups(self):
        """{box index: its rows, most confident first}."""
        groups = {}
        for i in range(len(self)):
            groups.setdefault(int(self.box_index[i]), []).append(i)
        return groups

    def label_layout(self, text_bbox, line_width, font_size, conf=True):
        """Where :meth:`plot` puts each box's label: a list, most confident box first, of dicts with ``text``,
        ``class_id``, ``rect`` = (left, top, width, height) in pixels, ``text_bbox`` and ``pad``.

        ``text_bbox(text)`` gives the text's (left, top, right, bottom) in the font used. The most confident box
        chooses first among: above its top-left corner, inside it, below its bottom edge, then the same on the
        right; the first spot that fits in the image and covers no label already placed wins (else the one
        covering least), so that on small or crowded images labels do not hide each other."""
        W, H = self.width, self.height
        xyxy = self.xyxy.astype(np.float64)
        groups = self._box_groups()
        placed, out = [], []
        for k in sorted(groups, key=lambda k: -float(self.conf[groups[k][0]])):
            rows = groups[k]
            best = rows[0]
            text = ", ".join(
                f"{self.names[self.class_id[i]]}" + (f" {float(self.conf[i]):.2f}" if conf else "") for i in rows
            )
            tb = text_bbox(text)
            pad = max(1, font_size // 6)
            bw, bh = int(tb[2] - tb[0]) + 2 * pad, int(tb[3] - tb[1]) + 2 * pad
            x1, y1, x2, y2 = (int(round(v)) for v in xyxy[best])
            x1, x2 = min(max(x1, 0), W - 1), min(max(x2, 0), W - 1)
            y1, y2 = min(max(y1, 0), H - 1), min(max(y2, 0), H - 1)
            lw = line_width
            candidates = [
                (x1, y1 - bh),  # above the top-left corner (Darknet's place)
                (x1 + lw, y1 + lw),  # inside, top-left
                (x1, y2 + 1),  # below the box
                (x1 + lw, y2 - lw - bh + 1),  # inside, bottom-left
                (x2 - bw + 1, y1 - bh),  # above the top-right corner
                (x2 - lw - bw + 1, y1 + lw),  # inside, top-right
            ]
            choice, least = None, None
            for cx, cy in candidates:
                cx, cy = min(max(cx, 0), max(W - bw, 0)), min(max(cy, 0), max(H - bh, 0))
                overlap = sum(_overlap((cx, cy, bw, bh), r) for r in placed)
                if overlap == 0:
                    choice = (cx, cy)
                    break
                if least is None or overlap < least[0]:
                    least = (overlap, (cx, cy))
            lx, ly = choice if choice is not None else least[1]
            placed.append((lx, ly, bw, bh))
            out.append(
                dict(
                    text=text,
                    class_id=int(self.class_id[best]),
                    rect=(lx, ly, bw, bh),
                    text_bbox=tuple(tb),
                    pad=pad,
                )
            )
        return out

    def save(self, path, **plot_options):
        """Write :meth:`plot` to ``path`` (format from the extension; JPEG quality 95); returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        im = self.plot(**plot_options)
        ext = path.suffix.lower()
        if ext in (".jpg", ".jpeg", ".jpe", ".jfif"):
            im.save(path, quality=95)
        elif ext in (".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"):
            im.save(path)
        else:
            im.save(path, format="PNG")
        return path


def plot_style(width, height, line_width=None, font_size=None):
    """``(box line width, label font size)`` in pixels for an image of this size: 0.3 % and 2.2 % of its mean
    side, at least 1 and 8 pixels (a 1280x720 photo: 3 and 22; a 416x416 image: 1 and 9; a 128x128 one: 1 and 8),
    so that the labels of a small image stay small beside its boxes. Given values are used as they are."""
    side = (int(width) + int(height)) / 2
    lw = int(line_width) if line_width else max(1, int(round(side * 0.003)))
    fs = int(font_size) if font_size else max(8, int(round(side * 0.022)))
    return lw, fs


def _overlap(a, b):
    """Overlapping area of two (left, top, width, height) rectangles."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


_FONTS = {}


def _font(size):
    from PIL import ImageFont

    if size not in _FONTS:
        font = None
        try:
            font = ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
        except (TypeError, OSError, AttributeError):
            pass
        if font is None:
            for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
                try:
                    font = ImageFont.truetype(name, size)
                    break
                except OSError:
                    continue
        _FONTS[size] = font or ImageFont.load_default()
    return _FONTS[size]


def write_darknet_json(results: Iterable[Results], path_or_file):
    """Write Darknet's ``-out result.json``: a JSON array of :meth:`Results.to_json` entries, frame ids 1, 2..."""
    parts = [r.to_json(frame_id=i + 1) for i, r in enumerate(results)]
    text = "[\n" + ", \n".join(parts) + "\n]"
    return _write_text(path_or_file, text)


def write_coco_json(results: Iterable[Results], path_or_file, category_ids=None):
    """Write COCO results for several images (``[{"image_id", "category_id", "bbox", "score"}, ...]``)."""
    items = []
    for r in results:
        items.extend(r.to_coco(category_ids=category_ids))
    return _write_text(path_or_file, "[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]\n")


def _write_text(path_or_file, text):
    if hasattr(path_or_file, "write"):
        path_or_file.write(text)
        return path_or_file
    path = pathlib.Path(path_or_file)
    if path.parent != pathlib.Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
