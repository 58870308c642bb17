"""Images in: decoding files, PIL images and arrays to 8-bit RGB, and Darknet's exact pre-processing.

The one image decoder of the package (detection, evaluation, training and annotation all read images here) and
Darknet's own float32 bilinear ``resize_image`` and ``letterbox_image`` (image.c), so every path that feeds the
network prepares pixels the same way.
"""

from __future__ import annotations

import os

import numpy as np

from pydarknet.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_image",
    "to_planar",
    "resize_image",
    "letterbox_size",
    "letterbox_image",
    "preprocess",
    "resize_min_crop",
    "TO_FLOAT",
]

# Every extension Darknet's OpenCV build and PIL read; lists, folders and data.yaml entries are filtered by it.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
    ".pbm",
    ".jp2",
    ".jpe",
    ".jfif",
)

_F32 = np.float32
# value/255 computed in double and stored as float, as Darknet's loaders do; a table is exact and fast.
TO_FLOAT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


# ----- loading ---------------------------------------------------------------------------------------------
def load_image(source):
    """Return ``(rgb, path)``: an HxWx3 uint8 RGB array and the source's path (None for in-memory images).

    ``source`` is a file path, a ``PIL.Image.Image`` or an HxWx3 (or HxW, HxWx4) uint8 array in RGB order.
    A missing file raises ``FileNotFoundError``; an unreadable one raises :class:`ImageError`.
    """
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if os.path.isdir(path):
            raise ImageError(f"{path}: is a folder, not an image")
        try:
            with Image.open(path) as im:
                im.load()
                return _pil_to_rgb(im, exif=True), path
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
            reason = str(e) or type(e).__name__
            raise ImageError(f"{path}: cannot read image ({reason})") from None
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, exif=False), getattr(source, "filename", None) or None
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source), None
    raise TypeError(
        f"cannot detect on a {type(source).__name__}: pass a path, a PIL image or an HxWx3 uint8 "
        "RGB array (or a list of them)"
    )


def _pil_to_rgb(im, exif):
    from PIL import ImageOps

    if exif:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not make the image unreadable
            pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit greyscale: keep the top 8 bits
        a = np.asarray(im).astype(np.int64)
        if im.mode == "I" and a.max(initial=0) <= 255:
            a8 = np.clip(a, 0, 255).astype(np.uint8)
        else:
            a8 = np.clip(a >> 8, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a8[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{getattr(im, 'filename', '') or 'image'}: decoded to an empty or odd array {arr.shape}")
    return arr


def _array_to_rgb(a):
    if a.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (HxWx3 RGB); got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image arrays must be HxWx3 RGB (or HxW greyscale); got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"empty image array {a.shape}")
    return np.ascontiguousarray(a)


def image_size(path):
    """``(width, height)`` of an image file, from its header (the pixels are not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: cannot read image ({str(e) or type(e).__name__})") from None


# ----- pre-processing --------------------------------------------------------------------------------------
def to_planar(rgb):
    """HxWx3 uint8 -> (3, H, W) float32 in [0, 1] (Darknet's ``value/255.``)."""
    return np.ascontiguousarray(TO_FLOAT[rgb].transpose(2, 0, 1))


def resize_image(im, w, h):
    """Darknet's ``resize_image`` (image.c): bilinear, ``(W-1)/(w-1)`` scale, float32 arithmetic.

    ``im`` is a float32 (C, H, W) array; returns (C, h, w). A horizontal pass (the last column copied) then a
    vertical pass in which the last row takes only its ``(1-dy)`` share, exactly as Darknet computes it.
    """
    im = np.asarray(im, dtype=_F32)
    c, H, W = im.shape
    w, h = int(w), int(h)
    if w < 1 or h < 1:
        raise ValueError(f"cannot resize to {w}x{h}")
    if (W, H) == (w, h):
        return im.copy()
    part = np.empty((c, H, w), _F32)
    if W == 1 or w == 1:
        part[:] = im[:, :, W - 1 : W]
    else:
        w_scale = _F32(W - 1) / _F32(w - 1)
        sx = np.arange(w - 1, dtype=_F32) * w_scale
        ix = sx.astype(np.int64)
        dx = sx - ix.astype(_F32)
        part[:, :, : w - 1] = (_F32(1) - dx) * im[:, :, ix] + dx * im[:, :, ix + 1]
        part[:, :, w - 1] = im[:, :, W - 1]
    if H == 1 or h == 1:
        # h == 1: Darknet divides by zero here (h_scale = inf, row 0 at NaN); row 0 is the sensible answer.
        return np.ascontiguousarray(np.repeat(part[:, :1, :], h, axis=1))
    h_scale = _F32(H - 1) / _F32(h - 1)
    sy = np.arange(h, dtype=_F32) * h_scale
    iy = sy.astype(np.int64)
    dy = sy - iy.astype(_F32)
    out = (_F32(1) - dy)[None, :, None] * part[:, iy, :]
    out[:, : h - 1, :] += dy[: h - 1, None] * part[:, iy[: h - 1] + 1, :]
    return out


def letterbox_size(img_w, img_h, net_w, net_h):
    """The size Darknet's ``letterbox_image``/``correct_yolo_boxes`` fit an image into (integer arithmetic)."""
    if _F32(net_w) / _F32(img_w) < _F32(net_h) / _F32(img_h):
        new_w, new_h = net_w, (img_h * net_w) // img_w
    else:
        new_w, new_h = (img_w * net_h) // img_h, net_h
    return max(1, min(new_w, net_w)), max(1, min(new_h, net_h))


def letterbox_image(im, net_w, net_h):
    """Darknet's ``letterbox_image``: aspect-preserving resize, centred on a 0.5-filled canvas."""
    c, H, W = im.shape
    new_w, new_h = letterbox_size(W, H, net_w, net_h)
    resized = resize_image(im, new_w, new_h)
    boxed = np.full((c, net_h, net_w), 0.5, _F32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2
    boxed[:, dy : dy + new_h, dx : dx + new_w] = resized
    return boxed


def preprocess(rgb, net_w, net_h, letterbox=False):
    """HxWx3 uint8 RGB -> (3, net_h, net_w) float32 network input, as Darknet prepares it."""
    planar = to_planar(rgb)
    if letterbox:
        return letterbox_image(planar, net_w, net_h)
    return resize_image(planar, net_w, net_h)


def resize_min_crop(im, net_w, net_h):
    """What Darknet's ``classifier predict`` feeds a classifier (AlexeyAB classifier.c): ``resize_min(im, net_w)``
    (the shorter side scaled to ``net_w``, the other by integer arithmetic, bilinear) then ``crop_image`` of
    ``net_w`` x ``net_h`` at the centre, where pixels outside the resized image repeat its nearest edge pixel."""
    c, H, W = im.shape
    if W < H:
        w, h = net_w, (H * net_w) // W
    else:
        w, h = (W * net_w) // H, net_w
    resized = resize_image(im, w, h) if (w, h) != (W, H) else im
    dx, dy = (w - net_w) // 2, (h - net_h) // 2  # C's integer division truncates towards zero
    if w - net_w < 0:
        dx = -((net_w - w) // 2)
    if h - net_h < 0:
        dy = -((net_h - h) // 2)
    rows = np.clip(np.arange(net_h) + dy, 0, h - 1)
    cols = np.clip(np.arange(net_w) + dx, 0, w - 1)
    return np.ascontiguousarray(resized[:, rows][:, :, cols])
