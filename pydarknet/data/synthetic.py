"""A synthetic detection dataset: coloured shapes on textured backgrounds, in Darknet's layout.

Meant for end-to-end tests of training: a small YOLO learns it in minutes on a CPU because the classes differ in
shape alone (colour, size, rotation, stretch and background are random and shared by all classes), objects are
never tiny, and overlaps are limited so that every object stays mostly visible.

``generate(out_dir, n_train, n_valid, size, classes, seed)`` writes::

    out_dir/train/00000.jpg, 00000.txt, ...    images with their YOLO labels beside them (every Darknet finds
    out_dir/valid/...                          labels there), class x y w h relative to the image
    out_dir/train.txt, valid.txt               image lists (absolute paths)
    out_dir/shapes.names                       one class name per line
    out_dir/shapes.data                        classes, train, valid, names, backup (absolute paths)

Everything is a function of ``(seed, split, index)``: the same call writes the same files, byte for byte (with
the same Pillow), and image ``k`` does not depend on how many images are made.

Each image: a background (a two-colour linear gradient, stripes, or smooth noise, plus fine grain), then 1 to
``max_objects`` shapes (some images have none), each with a random colour that stands out from the background
under it, a random size between ``min_size`` and ``max_size`` of the image's shorter side, a rotation and a
stretch, drawn antialiased; a shape may cover at most ``max_overlap`` of another's box. Thin bars in random
colours are drawn over some images as unlabelled occluders. The box of an object is the tight box of the whole
shape (also where an occluder or a later shape hides part of it), as annotators draw it.
"""

from __future__ import annotations

import math
import pathlib
from typing import List, Sequence, Tuple, Union

import numpy as np

__all__ = ["SHAPES", "generate", "render_image"]

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "crescent", "hexagon")
SUPERSAMPLE = 4  # shapes are drawn at 4x and reduced: antialiased edges
MIN_CONTRAST = 80.0  # RGB distance between an object's colour and the background under it


def _regular(n, start_deg, radius=1.0):
    a = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    return np.stack([np.cos(a), -np.sin(a)], axis=1) * radius


def _star(points=5, inner=0.45):
    a = np.deg2rad(90 + np.arange(2 * points) * 180.0 / points)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(a) * r, -np.sin(a) * r], axis=1)


def _cross(arm=0.34):
    a, o = arm, 1.0
    return np.array(
        [[-a, -o], [a, -o], [a, -a], [o, -a], [o, a], [a, a], [a, o], [-a, o], [-a, a], [-o, a], [-o, -a], [-a, -a]]
    )


# Each shape: a list of (polygon or "disc", radius/None, offset, add=True/False) drawn in order onto a mask.
def _shape_parts(name):
    if name == "circle":
        return [("disc", 1.0, (0.0, 0.0), True)]
    if name == "ring":
        return [("disc", 1.0, (0.0, 0.0), True), ("disc", 0.55, (0.0, 0.0), False)]
    if name == "crescent":
        return [("disc", 1.0, (0.0, 0.0), True), ("disc", 0.8, (0.45, -0.2), False)]
    if name == "square":
        return [(_regular(4, 45), None, None, True)]
    if name == "triangle":
        return [(_regular(3, 90), None, None, True)]
    if name == "star":
        return [(_star(), None, None, True)]
    if name == "cross":
        return [(_cross(), None, None, True)]
    if name == "hexagon":
        return [(_regular(6, 0), None, None, True)]
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


def _transform(points, angle, stretch, radius, cx, cy):
    """Stretch (x by ``stretch``, y by ``1/stretch``), rotate, scale to ``radius`` pixels, move to (cx, cy)."""
    p = np.asarray(points, np.float64) * [stretch, 1.0 / stretch]
    c, s = math.cos(angle), math.sin(angle)
    p = p @ np.array([[c, -s], [s, c]])
    return p * radius + [cx, cy]


def _shape_mask(name, angle, stretch, radius, cx, cy, width, height):
    """Antialiased coverage (float32 in [0, 1]) of the shape on its pixel bounding square, and that square's
    origin: ``(mask, x0, y0)``."""
    from PIL import Image, ImageDraw

    reach = radius * max(stretch, 1.0 / stretch) * 1.05 + 2
    x0, y0 = max(int(math.floor(cx - reach)), 0), max(int(math.floor(cy - reach)), 0)
    x1, y1 = min(int(math.ceil(cx + reach)), width), min(int(math.ceil(cy + reach)), height)
    mw, mh = max(x1 - x0, 1), max(y1 - y0, 1)
    ss = SUPERSAMPLE
    canvas = Image.new("L", (mw * ss, mh * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, r, offset, add in _shape_parts(name):
        fill = 255 if add else 0
        if isinstance(poly, str):  # a disc (an ellipse after the stretch): drawn as a fine polygon
            a = np.linspace(0, 2 * np.pi, 96, endpoint=False)
            pts = np.stack([np.cos(a) * r + offset[0], np.sin(a) * r + offset[1]], axis=1)
        else:
            pts = poly
        q = (_transform(pts, angle, stretch, radius, cx, cy) - [x0, y0]) * ss
        draw.polygon([tuple(v) for v in q], fill=fill)
    small = canvas.resize((mw, mh), Image.BOX)
    return np.asarray(small, np.float32) / 255.0, x0, y0


def _background(rng, width, height):
    """A textured background, float32 (h, w, 3) in [0, 255]."""
    kind = int(rng.integers(3))
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        t = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c1 + (c2 - c1) * t[..., None]
    elif kind == 1:  # stripes, soft or hard
        a = rng.uniform(0, np.pi)
        k = np.float32(2 * np.pi / rng.uniform(6, 40))
        t = 0.5 + 0.5 * np.sin((xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))) * k)
        if rng.integers(2):
            t = (t > 0.5).astype(np.float32)
        img = c1 + (c2 - c1) * t[..., None]
    else:  # smooth noise: a coarse random grid, enlarged
        from PIL import Image

        gw, gh = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        grid = rng.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    grain = np.float32(rng.uniform(0, 20))  # uniform grain, up to +-10 levels
    img = img + (rng.random((height, width, 3), dtype=np.float32) - np.float32(0.5)) * grain
    return np.clip(img, 0, 255, out=img)


def _contrasting_colour(rng, under):
    """A colour at least MIN_CONTRAST away from the mean colour ``under`` (the best of a few tries)."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= MIN_CONTRAST:
            break
    return best


def _overlap(a, b):
    """Intersection of boxes a and b (x0, y0, x1, y1) as a fraction of the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-9)


def render_image(
    rng,
    width,
    height,
    classes: Sequence[str],
    max_objects=4,
    min_size=0.15,
    max_size=0.45,
    max_overlap=0.3,
    empty_fraction=0.05,
    occluders=0.3,
):
    """One image: ``(rgb uint8 (h, w, 3), rows)`` with ``rows`` a list of ``(class, x, y, w, h)`` relative."""
    img = _background(rng, width, height)
    short = min(width, height)
    n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    placed: List[Tuple[float, float, float, float]] = []
    rows = []
    for _ in range(n):
        cls = int(rng.integers(len(classes)))
        for _attempt in range(20):
            size = rng.uniform(min_size, max_size) * short  # the shape's extent before the stretch
            radius = size / 2
            stretch = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
            angle = float(rng.uniform(0, 2 * np.pi))
            reach = radius * max(stretch, 1 / stretch)
            if 2 * reach >= min(width, height):
                continue
            cx = float(rng.uniform(reach, width - reach))
            cy = float(rng.uniform(reach, height - reach))
            mask, x0, y0 = _shape_mask(classes[cls], angle, stretch, radius, cx, cy, width, height)
            ys, xs = np.nonzero(mask >= 0.5)
            if len(xs) == 0:
                continue
            box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            if any(_overlap(box, other) > max_overlap for other in placed):
                continue
            mh, mw = mask.shape
            region = img[y0 : y0 + mh, x0 : x0 + mw]
            under = region[mask >= 0.5].mean(axis=0)
            colour = _contrasting_colour(rng, under).astype(np.float32)
            shade = 1 + np.float32(rng.uniform(-0.15, 0.15)) * np.linspace(-1, 1, mh, dtype=np.float32)
            alpha = mask[..., None]
            region += (np.clip(colour * shade[:, None, None], 0, 255) - region) * alpha
            placed.append(box)
            bx0, by0, bx1, by1 = box
            rows.append(
                (cls, (bx0 + bx1) / 2 / width, (by0 + by1) / 2 / height, (bx1 - bx0) / width, (by1 - by0) / height)
            )
            break
    if rng.random() < occluders:
        from PIL import Image, ImageDraw

        layer = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(layer)
        colour = rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            half = rng.uniform(0.2, 0.6) * short
            dx, dy = math.cos(a) * half, math.sin(a) * half
            draw.line(
                [(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(2, int(rng.uniform(0.02, 0.05) * short))
            )
        m = np.asarray(layer)
        ys, xs = np.nonzero(m)
        alpha = (m[ys, xs].astype(np.float32) / 255)[:, None]
        img[ys, xs] += (colour.astype(np.float32) - img[ys, xs]) * alpha
    img += np.float32(0.5)  # round: values are in [0, 255]
    return img.astype(np.uint8), rows


def _size(size) -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        w, h = int(size[0]), int(size[1])
    else:
        w = h = int(size)
    if w < 32 or h < 32:
        raise ValueError(f"image size {w}x{h} is too small (at least 32x32)")
    return w, h


def _class_names(classes) -> List[str]:
    if isinstance(classes, int):
        if not 1 <= classes <= len(SHAPES):
            raise ValueError(f"classes={classes}: choose 1..{len(SHAPES)} (the shapes: {', '.join(SHAPES)})")
        return list(SHAPES[:classes])
    names = [str(c) for c in classes]
    for n in names:
        if n not in SHAPES:
            raise ValueError(f"unknown shape {n!r}; known: {', '.join(SHAPES)}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"classes must be distinct shape names, got {names}")
    return names


def generate(
    out_dir,
    n_train=200,
    n_valid=50,
    size: Union[int, Tuple[int, int]] = 256,
    classes: Union[int, Sequence[str]] = 5,
    seed=0,
    *,
    max_objects=4,
    min_size=0.15,
    max_size=0.45,
    max_overlap=0.3,
    empty_fraction=0.05,
    occluders=0.3,
    image_format="jpg",
    quality=92,
) -> pathlib.Path:
    """Write the dataset (see the module documentation) and return the path of its ``.data`` file.

    ``size``: image width and height (an int for square images); ``classes``: how many of :data:`SHAPES`
    (in that order), or their names; ``min_size``/``max_size``: object extent as a fraction of the shorter
    image side; ``image_format``: ``jpg`` or ``png``.
    """
    from PIL import Image

    width, height = _size(size)
    names = _class_names(classes)
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 0 < min_size <= max_size < 1:
        raise ValueError(f"need 0 < min_size <= max_size < 1, got {min_size}, {max_size}")
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lists = {}
    for split_id, (split, count) in enumerate((("train", n_train), ("valid", n_valid))):
        folder = out / split
        folder.mkdir(exist_ok=True)
        paths = []
        for i in range(int(count)):
            rng = np.random.default_rng([int(seed), split_id, i])
            rgb, rows = render_image(
                rng, width, height, names, max_objects, min_size, max_size, max_overlap, empty_fraction, occluders
            )
            path = folder / f"{i:05d}.{image_format}"
            if image_format == "jpg":
                Image.fromarray(rgb).save(path, quality=quality)
            else:
                Image.fromarray(rgb).save(path)
            path.with_suffix(".txt").write_text(
                "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows), encoding="utf-8"
            )
            paths.append(str(path))
        lists[split] = out / f"{split}.txt"
        lists[split].write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    names_path = out / "shapes.names"
    names_path.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    data_path = out / "shapes.data"
    data_path.write_text(
        f"classes = {len(names)}\ntrain = {lists['train']}\nvalid = {lists['valid']}\n"
        f"names = {names_path}\nbackup = {out / 'backup'}\n",
        encoding="utf-8",
    )
    return data_path
