"""Images in: decoding files, PIL images and arrays to 8-bit RGB, and Darknet's exact pre-processing.

The one image decoder of the package (detection, evaluation, training and annotation all read images here) and
Darknet's own float32 bilinear ``resize_image`` and ``letterbox_image`` (image.c), so every path that feeds the
network prepares pixels the same way.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings

import numpy as np

from pydarknet.errors import ImageError
from pydarknet.utils import files
from pydarknet.utils.files import short

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "load_image",
    "to_network_channels",
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
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26  # 67,108,864 pixels (8192 x 8192): above every camera short of medium format


def _limit_from_env():
    value = os.environ.get("PYDARKNET_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if value.lower() in ("0", "none", "off", "unlimited"):
        return None
    try:
        limit = int(value)
        if limit < 0:
            raise ValueError
        return limit
    except ValueError:
        warnings.warn(
            f"PYDARKNET_MAX_IMAGE_PIXELS={value!r} is not a number of pixels (or 0/none for no limit); "
            f"using the default {DEFAULT_MAX_IMAGE_PIXELS:,}",
            stacklevel=2,
        )
        return DEFAULT_MAX_IMAGE_PIXELS


# The most pixels (width x height) an image file may declare; checked on the file's header before any pixel is
# decoded, so a small file that declares a huge image (a decompression bomb) costs nothing. None (or 0) disables
# the check. Set it here at run time, or with the environment variable PYDARKNET_MAX_IMAGE_PIXELS before start.
MAX_IMAGE_PIXELS = _limit_from_env()

_PIL_CAP_LOCK = threading.Lock()
# What PIL's decoders raise on damaged files: besides OSError/SyntaxError/ValueError, its parsers trip over
# malformed fields with these (a TIFF rational where an int belongs gives a TypeError, for one).
_DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    TypeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    OverflowError,
    RecursionError,
    struct.error,
)


def _open_and_decode(path, want_alpha):
    """Open ``path``, refuse it when its header declares more than MAX_IMAGE_PIXELS, then decode it."""
    from PIL import Image

    limit = MAX_IMAGE_PIXELS
    # PIL is given the bytes, not the file: a chunk that declares a length far beyond the end of the file (a PNG
    # IDAT of 2 GiB in a 1 KB file) then reads what is there instead of reserving the declared size first.
    data = files.read_bounded(path, files.MAX_IMAGE_BYTES, lambda problem: ImageError(f"{path}: {problem}"))
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if limit and w * h > limit:
            raise ImageError(
                f"{path}: the image is {w}x{h} = {w * h:,} pixels, more than the {limit:,} allowed "
                f"(pydarknet.data.images.MAX_IMAGE_PIXELS; raise it, or set PYDARKNET_MAX_IMAGE_PIXELS, "
                f"to read larger images)"
            )
        im.load()
        return _pil_to_rgb(im, exif=True, alpha=want_alpha)


def _decode_file(path, want_alpha):
    # PIL has its own, fixed decompression-bomb cap (a warning above 89 MP, an error above 179 MP). Ours is the one
    # users see and set: PIL's warning is silenced, and where PIL refuses an image our cap allows, PIL's cap is
    # lifted for this one decode (under a lock, as it is a global of PIL's).
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _open_and_decode(path, want_alpha)
    except Image.DecompressionBombError:
        with _PIL_CAP_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return _open_and_decode(path, want_alpha)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def load_image(source, *, alpha=False):
    """Return ``(rgb, path)``: an HxWx3 uint8 RGB array and the source's path (None for in-memory images).

    ``source`` is a file path, a ``PIL.Image.Image`` or an HxWx3 (or HxW, HxWx4) uint8 array in RGB order.
    With ``alpha=True`` the array is HxWx4 RGBA: the image's own alpha where it has one, else opaque (255).
    A missing file raises ``FileNotFoundError``; an unreadable one, one that is not a regular file (a FIFO, a
    device) and one whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels raise :class:`ImageError`.
    """
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        files.check_regular(path, lambda problem: ImageError(f"{path}: {problem}"))
        try:
            return _decode_file(path, alpha), path
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(f"{path}: not enough memory to decode this image") from None
        except _DECODER_ERRORS as e:
            reason = short(str(e) or type(e).__name__, 200)
            raise ImageError(f"{path}: cannot read image ({reason})") from None
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, exif=False, alpha=alpha), getattr(source, "filename", None) or None
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, alpha), None
    raise TypeError(
        f"cannot detect on a {type(source).__name__}: pass a path, a PIL image or an HxWx3 uint8 "
        "RGB array (or a list of them)"
    )


def _with_alpha(rgb, a=None):
    """HxWx3 RGB + an alpha plane (opaque when None) -> HxWx4 RGBA."""
    if a is None:
        a = np.full(rgb.shape[:2], 255, np.uint8)
    return np.ascontiguousarray(np.concatenate([rgb, a[:, :, None]], axis=2))


def _pil_to_rgb(im, exif, alpha=False):
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
        rgb = np.ascontiguousarray(np.repeat(a8[:, :, None], 3, axis=2))
        return _with_alpha(rgb) if alpha else rgb
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if alpha and has_alpha:
        arr = np.asarray(im.convert("RGBA"))
    else:
        if im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{getattr(im, 'filename', '') or 'image'}: decoded to an empty or odd array {arr.shape}")
    if alpha and arr.shape[2] == 3:
        return _with_alpha(arr)
    return arr


def _array_to_rgb(a, alpha=False):
    if alpha and a.ndim == 3 and a.shape[2] == 4 and a.dtype == np.uint8 and a.shape[0] >= 1 and a.shape[1] >= 1:
        return np.ascontiguousarray(a)
    rgb = _array_to_rgb3(a)
    return _with_alpha(rgb) if alpha else rgb


def _array_to_rgb3(a):
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

    files.check_regular(path, lambda problem: ImageError(f"{path}: {problem}"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError:
        with _PIL_CAP_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as im:
                    return im.size
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ImageError(f"{path}: cannot read image ({str(e) or type(e).__name__})") from None
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: cannot read image ({str(e) or type(e).__name__})") from None


# ----- channels --------------------------------------------------------------------------------------------
# OpenCV's RGB -> grey (cvtColor, 8-bit): Y = 0.299 R + 0.587 G + 0.114 B in 15-bit fixed point, rounded
# (imgproc color_rgb.simd.hpp: RY15, GY15, BY15).
_GREY_WEIGHTS = (9798, 19235, 3735)


def to_network_channels(image, channels):
    """An HxWx3 RGB (or HxWx4 RGBA) uint8 image as the ``channels`` a network reads, the way Darknet's OpenCV
    loader (``load_image_cv``) gives them: 3 -> RGB; 1 -> grey (``IMREAD_GRAYSCALE``; computed here with OpenCV's
    ``cvtColor`` weights from the decoded RGB, which can differ by one level from libjpeg's direct grey decoding
    of a JPEG); 4 -> RGBA (``IMREAD_UNCHANGED``: the file's own alpha, opaque 255 where it has none -- Darknet
    would hand a 3-channel image to a 4-channel network there). Other counts raise ValueError: Darknet's loader
    cannot produce them either ("OpenCV can't force load with N channels")."""
    if channels == 3:
        return np.ascontiguousarray(image[:, :, :3])
    if channels == 1:
        rgb = image[:, :, :3].astype(np.uint32)
        r, g, b = _GREY_WEIGHTS
        grey = (rgb[:, :, 0] * r + rgb[:, :, 1] * g + rgb[:, :, 2] * b + (1 << 14)) >> 15
        return grey.astype(np.uint8)[:, :, None]
    if channels == 4:
        return image if image.shape[2] == 4 else _with_alpha(np.ascontiguousarray(image[:, :, :3]))
    raise ValueError(
        f"a network with channels={channels} cannot take images: Darknet's image loader gives 1 (grey), "
        f"3 (RGB) or 4 (RGBA) channels"
    )


# ----- pre-processing --------------------------------------------------------------------------------------
def to_planar(rgb):
    """HxWxC uint8 -> (C, H, W) float32 in [0, 1] (Darknet's ``value/255.``)."""
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
    """HxWxC uint8 (RGB, grey or RGBA) -> (C, net_h, net_w) float32 network input, as Darknet prepares it."""
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
