"""Darknet's training-time augmentation for detection, in numpy (Pillow decodes; OpenCV is not needed).

Follows AlexeyAB/darknet ``load_data_detection`` (``data.c``, OpenCV build) and ``image_data_augmentation``
(``image_opencv.cpp``). For each image:

1. **Crop rectangle** (jitter and resize): ``dw = int(ow*jitter)``; ``pleft, pright ~ U(-dw, dw)``, ``ptop, pbot ~
   U(-dh, dh)`` (truncated to int); ``resize > 1`` adds ``U(ow(1-resize)/2, ow(1-1/resize)/2)`` to the left/top
   (one draw) and right/bottom (another), i.e. zoom out or in; ``resize < 1`` only zooms out. With
   ``letter_box`` the rectangle is widened (or heightened) to the network's aspect ratio, so the image keeps its
   shape. The rectangle ``(pleft, ptop, ow-pleft-pright, oh-ptop-pbot)`` is cut out, what lies outside the image
   filled with the **image's mean colour**, and resized bilinearly (OpenCV ``INTER_LINEAR``: half-pixel centres,
   edge pixels repeated) to the network size.
2. **Flip** (horizontal, with probability 1/2 when ``flip=1``).
3. **HSV** in 8-bit OpenCV HSV (H in [0, 180), S and V in [0, 255]): ``S *= dsat``, ``V *= dexp`` with
   ``dsat = rand_scale(saturation)`` (``U(1, s)`` or its inverse, each with probability 1/2), ``H += 179*dhue``
   with ``dhue ~ U(-hue, hue)``; OpenCV's saturating uint8 arithmetic (the hue shift is rounded to an integer
   and clamped to [0, 255], not wrapped; the conversion back wraps hues >= 180).
4. **Blur** (``blur``, per image: none, background, or full with probability 1/3 each): background blur is a
   17x17 Gaussian outside the ground-truth boxes (objects stay sharp); ``blur > 1`` blurs the whole image with
   a ``(blur/2)*2+1`` kernel, reduced when an object is smaller than 8 kernel sizes.
5. **Gaussian noise** (``gaussian_noise = sigma`` on the 0..255 scale, on half of the images).
6. **Boxes**: shuffled, at most ``max``, moved into the crop, flipped, clipped to [0, 1]; boxes narrower or
   lower than one network pixel are dropped.

Whole-sample modes, each used on half of the batches as in Darknet: **mosaic** (4 images; the cut point
``cut_x ~ [0.2w, 0.8w]``, ``cut_y ~ [0.2h, 0.8h]``; each image augmented at the network size, half of them
pushed to their corner, and the part facing the cut copied into its quadrant (only that part is computed);
boxes shifted and clipped to the image, or to the quadrant with ``mosaic_bound=1``. Darknet measures the
padding it skips in original-image pixels rather than crop pixels, so without ``mosaic_bound`` a box can reach
a little into the next quadrant; that is reproduced) and **mixup** (two augmented images blended 50/50, the
boxes of both). ``mosaic`` together with ``letter_box``, which Darknet refuses, is supported: each of the 4
images is letterboxed into its own quadrant.

Deliberate differences from Darknet: Gaussian noise is symmetric (Darknet draws it into a uint8 matrix, which
clips the negative half to 0, so its noise only brightens); the resize and blur are computed in float and
rounded once (OpenCV uses fixed point: results may differ by 1 level); the mosaic/mixup coin is tossed per
batch (Darknet tosses it per loading thread's share of the batch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "AugmentSettings",
    "AugmentParams",
    "settings_from_network",
    "rand_scale",
    "draw_params",
    "crop_rect",
    "crop_resize",
    "correct_boxes",
    "rgb_to_hsv8",
    "hsv8_to_rgb",
    "shift_hsv",
    "adjust_hsv",
    "gaussian_kernel",
    "gaussian_blur",
    "blur_background",
    "add_gaussian_noise",
    "augment_image",
    "mosaic",
    "mixup",
    "augment_sample",
    "MOSAIC_MIN_OFFSET",
]

_F32 = np.float32
MOSAIC_MIN_OFFSET = 0.2  # the mosaic cut point stays within [20 %, 80 %] of the width and height
BACKGROUND_BLUR_KSIZE = 17  # Darknet's background blur kernel


# ----- settings ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentSettings:
    """What to augment, as read from a cfg: ``[net]`` keys and the last ``[yolo]``'s ``jitter``, ``resize``,
    ``random`` and ``max``. ``width``/``height`` are the cfg's input size (multi-scale changes the size per
    iteration; see :func:`pydarknet.loader.input_size`)."""

    width: int = 416
    height: int = 416
    jitter: float = 0.0
    resize: float = 1.0
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    blur: int = 0
    gaussian_noise: int = 0
    mosaic: bool = False
    mixup: bool = False
    mosaic_bound: bool = False
    letter_box: bool = False
    max_boxes: int = 200
    random: float = 0.0
    resize_step: int = 32
    max_batches: int = 0


def settings_from_network(net) -> AugmentSettings:
    """:class:`AugmentSettings` from a loaded network, its :class:`~pydarknet.graph.NetworkDesc`, or a cfg path.

    Darknet's combination rules: ``mosaic=1`` wins over ``mixup`` and ``cutmix``; ``cutmix`` is not supported
    for detection (Darknet switches augmentation of that kind off, and so does ``cutmix=1`` alone, even with
    ``mixup=1``); a warning says so.
    """
    from pydarknet.core.graph import NetworkDesc, load_network_desc

    if isinstance(net, NetworkDesc):
        desc = net
    elif hasattr(net, "desc"):
        desc = net.desc
    else:
        desc = load_network_desc(net, lenient=True)
    n = desc.net
    yolo = [desc.layers[i] for i in desc.yolo_layers]
    last = yolo[-1].options if yolo else {}
    mosaic = bool(n.get("mosaic", 0))
    cutmix = bool(n.get("cutmix", 0))
    mixup = bool(n.get("mixup", 0)) and not mosaic and not cutmix
    if cutmix:
        warnings.warn(
            f"{desc.path}: cutmix=1 is not supported for detection (as in Darknet); "
            + ("mosaic is used" if mosaic else "no mixing augmentation is used"),
            stacklevel=2,
        )
    return AugmentSettings(
        width=int(n["width"]),
        height=int(n["height"]),
        jitter=float(last.get("jitter", 0.0)) if yolo else 0.0,
        resize=float(last.get("resize", 1.0)) if yolo else 1.0,
        flip=bool(n.get("flip", 1)),
        hue=float(n.get("hue", 0.0)),
        saturation=float(n.get("saturation", 1.0)),
        exposure=float(n.get("exposure", 1.0)),
        blur=int(n.get("blur", 0)),
        gaussian_noise=int(n.get("gaussian_noise", 0)),
        mosaic=mosaic,
        mixup=mixup,
        mosaic_bound=bool(n.get("mosaic_bound", 0)),
        letter_box=bool(n.get("letter_box", 0)),
        max_boxes=int(last.get("max", 200)) if yolo else 200,
        random=float(last.get("random", 0.0)) if yolo else 0.0,
        resize_step=int(n.get("resize_step", 32)) or 32,
        max_batches=int(n.get("max_batches", 0)),
    )


# ----- random parameters -------------------------------------------------------------------------------------
def rand_scale(rng, s):
    """Darknet's ``rand_scale``: ``U(1, s)`` (bounds in either order), or its inverse, each with probability 1/2."""
    lo, hi = min(1.0, float(s)), max(1.0, float(s))
    scale = rng.uniform(lo, hi)
    return scale if rng.integers(2) else 1.0 / scale


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for one image (Darknet draws the same set per image)."""

    jitter_r: Tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)  # left, right, top, bottom in [0, 1)
    resize_r: Tuple[float, float] = (0.5, 0.5)  # left/top, right/bottom
    flip: bool = False
    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0
    blur: int = 0
    noise: int = 0
    corner: bool = False  # mosaic: push this image to its corner


def draw_params(rng, s: AugmentSettings) -> AugmentParams:
    """Draw one image's parameters. Every value is drawn whatever the settings, so the stream of draws (and so
    every other image's parameters) does not depend on which augmentations are switched on."""
    r = tuple(float(v) for v in rng.random(4))
    rr = tuple(float(v) for v in rng.random(2))
    flip = bool(rng.integers(2)) and s.flip
    dhue = float(rng.uniform(-1.0, 1.0)) * s.hue
    dsat = rand_scale(rng, s.saturation)
    dexp = rand_scale(rng, s.exposure)
    blur_kind = int(rng.integers(3))  # 0 none, 1 background, 2 the configured blur
    noise_on = bool(rng.integers(2))
    corner = not bool(rng.integers(2))
    blur = 0 if not s.blur or blur_kind == 0 else (1 if blur_kind == 1 else s.blur)
    return AugmentParams(r, rr, flip, dhue, dsat, dexp, blur, s.gaussian_noise if noise_on else 0, corner)


def _trunc(v):
    """C's float -> int conversion (toward zero)."""
    return int(v)


def _cdiv(a, b):
    """C's integer division (toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _precalc(lo, hi, r):
    """Darknet's ``rand_precalc_random``: ``r`` in [0, 1) mapped onto [lo, hi] (bounds in either order)."""
    if hi < lo:
        lo, hi = hi, lo
    return r * (hi - lo) + lo


def crop_rect(
    ow,
    oh,
    w,
    h,
    s: AugmentSettings,
    p: AugmentParams,
    mosaic_part: Optional[int] = None,
    letter_box: Optional[bool] = None,
):
    """Darknet's crop offsets ``(pleft, ptop, pright, pbot)`` for an ``ow x oh`` image and a ``w x h`` output.

    Negative offsets pad (zoom out), positive ones crop (zoom in). ``mosaic_part`` (0..3) applies Darknet's
    "push to the corner" when ``p.corner``.
    """
    letter_box = s.letter_box if letter_box is None else letter_box
    dw, dh = _trunc(ow * s.jitter), _trunc(oh * s.jitter)
    resize_down = 1.0 / s.resize if s.resize > 1.0 else s.resize
    resize_up = 1.0 / s.resize if s.resize < 1.0 else s.resize
    min_rdw, min_rdh = _trunc(ow * (1 - 1 / resize_down) / 2), _trunc(oh * (1 - 1 / resize_down) / 2)
    max_rdw, max_rdh = _trunc(ow * (1 - 1 / resize_up) / 2), _trunc(oh * (1 - 1 / resize_up) / 2)
    r1, r2, r3, r4 = p.jitter_r
    rr1, rr2 = p.resize_r
    pleft, pright = _trunc(_precalc(-dw, dw, r1)), _trunc(_precalc(-dw, dw, r2))
    ptop, pbot = _trunc(_precalc(-dh, dh, r3)), _trunc(_precalc(-dh, dh, r4))
    if s.resize < 1:
        hi_w, hi_h = 0, 0
    else:
        hi_w, hi_h = max_rdw, max_rdh
    pleft = _trunc(pleft + _precalc(min_rdw, hi_w, rr1))
    pright = _trunc(pright + _precalc(min_rdw, hi_w, rr2))
    ptop = _trunc(ptop + _precalc(min_rdh, hi_h, rr1))
    pbot = _trunc(pbot + _precalc(min_rdh, hi_h, rr2))
    if letter_box:
        net_ar = w / h
        if (ow / oh) / net_ar > 1:  # wider than the network: add height
            delta = (ow / net_ar - oh) / 2
            ptop, pbot = _trunc(ptop - delta), _trunc(pbot - delta)
        else:
            delta = (oh * net_ar - ow) / 2
            pleft, pright = _trunc(pleft - delta), _trunc(pright - delta)
    if mosaic_part is not None and p.corner:
        # Darknet moves every other image to the corner facing the cut so that more of it shows.
        k = mosaic_part
        toward_right = (k in (0, 2)) != p.flip  # the image's right edge faces the cut
        if toward_right:
            pright, pleft = pright + pleft, 0
        else:
            pleft, pright = pleft + pright, 0
        if k in (0, 1):
            pbot, ptop = pbot + ptop, 0
        else:
            ptop, pbot = ptop + pbot, 0
    if ow - pleft - pright < 1:  # only with absurd jitter: keep the whole width
        pleft = pright = 0
    if oh - ptop - pbot < 1:
        ptop = pbot = 0
    return pleft, ptop, pright, pbot


# ----- geometry ----------------------------------------------------------------------------------------------
def _taps(n_out, n_src):
    """Source taps of OpenCV's INTER_LINEAR: half-pixel centres, the edge pixel repeated outside."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_src / n_out) - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(_F32)
    i1 = np.clip(i0 + 1, 0, n_src - 1)
    i0 = np.clip(i0, 0, n_src - 1)
    return i0, i1, frac


def crop_resize(rgb, pleft, ptop, swidth, sheight, w, h, fill=None, window=None):
    """Cut the rectangle ``(pleft, ptop, swidth, sheight)`` out of ``rgb`` (HxWx3 uint8), filling what lies
    outside the image with ``fill`` (default: the image's mean colour, rounded), and resize it bilinearly to
    ``w x h``. The padded rectangle is never built: each output pixel samples it directly, so ``window``
    ``(x0, y0, x1, y1)`` computes just that part of the output (the same pixels)."""
    oh, ow = rgb.shape[:2]
    ya, yb, fy = _taps(h, sheight)
    xa, xb, fx = _taps(w, swidth)
    if window is not None:
        x0, y0, x1, y1 = window
        ya, yb, fy, xa, xb, fx = ya[y0:y1], yb[y0:y1], fy[y0:y1], xa[x0:x1], xb[x0:x1], fx[x0:x1]
    ya, yb, xa, xb = ya + ptop, yb + ptop, xa + pleft, xb + pleft
    in_ya, in_yb, in_xa, in_xb = ((0 <= t) & (t < n) for t, n in ((ya, oh), (yb, oh), (xa, ow), (xb, ow)))
    complete = in_ya.all() and in_yb.all() and in_xa.all() and in_xb.all()
    if fill is None and not complete:
        # cv::mean, rounded as cv::Mat::setTo does; per-channel integer sums are exact (and fast)
        fill = np.rint([rgb[..., c].sum(dtype=np.int64) / (oh * ow) for c in range(3)])
    fill = None if fill is None else np.asarray(fill, _F32)
    rows_out, cols_out = len(fy), len(fx)
    # Work in a (rows, cols*3) layout: gathers of flat indices and weights broadcast along contiguous rows.
    channel = np.arange(3)
    xa3 = (np.clip(xa, 0, ow - 1)[:, None] * 3 + channel).ravel()
    xb3 = (np.clip(xb, 0, ow - 1)[:, None] * 3 + channel).ravel()
    gx = np.repeat(fx, 3)[None, :]
    flat = rgb.reshape(oh, ow * 3)

    def row_pass(ys, in_y):
        # Rows of the padded rectangle at the taps ys, interpolated horizontally.
        rows = flat[np.clip(ys, 0, oh - 1)]
        left, right = rows[:, xa3].astype(_F32), rows[:, xb3].astype(_F32)
        if not complete:
            for v, inside in ((left, in_xa), (right, in_xb)):
                v3 = v.reshape(rows_out, cols_out, 3)
                v3[:, ~inside] = fill
                v3[~in_y] = fill
        right -= left
        right *= gx
        right += left
        return right

    top, bottom = row_pass(ya, in_ya), row_pass(yb, in_yb)
    bottom -= top
    bottom *= fy[:, None]
    bottom += top
    bottom += _F32(0.5)  # round half up (OpenCV's fixed-point rounding); values are in [0, 255]
    return bottom.astype(np.uint8).reshape(rows_out, cols_out, 3)


def correct_boxes(boxes, pleft, ptop, swidth, sheight, ow, oh, flip):
    """Darknet's ``correct_boxes``: boxes ``[x, y, w, h, ...]`` relative to the image -> relative to the crop
    rectangle, mirrored when ``flip``, clipped to [0, 1]. Extra columns (the class) are kept."""
    b = np.asarray(boxes, np.float64).copy()
    if not len(b):
        return b
    left = ((b[:, 0] - b[:, 2] / 2) * ow - pleft) / swidth
    right = ((b[:, 0] + b[:, 2] / 2) * ow - pleft) / swidth
    top = ((b[:, 1] - b[:, 3] / 2) * oh - ptop) / sheight
    bottom = ((b[:, 1] + b[:, 3] / 2) * oh - ptop) / sheight
    if flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (np.clip(v, 0, 1) for v in (left, right, top, bottom))
    b[:, 0], b[:, 1] = (left + right) / 2, (top + bottom) / 2
    b[:, 2], b[:, 3] = right - left, bottom - top
    return b


def _drop_small(b, w, h):
    """Drop boxes narrower than one pixel of a ``w x h`` output (Darknet's ``lowest_w``/``lowest_h``)."""
    if not len(b):
        return b
    return b[(b[:, 2] >= 1.0 / w) & (b[:, 3] >= 1.0 / h)]


# ----- colour ------------------------------------------------------------------------------------------------
_HSV_SHIFT = 12
_i = np.arange(256, dtype=np.float64)
with np.errstate(divide="ignore"):
    # OpenCV's fixed-point tables for 8-bit RGB -> HSV (saturation and 180-degree hue).
    _SDIV = np.where(_i > 0, np.rint((255 << _HSV_SHIFT) / np.maximum(_i, 1)), 0).astype(np.int32)
    _HDIV = np.where(_i > 0, np.rint((180 << _HSV_SHIFT) / (6.0 * np.maximum(_i, 1))), 0).astype(np.int32)
del _i
# Which of (v, v(1-s), v(1-s f), v(1-s(1-f))) each of r, g, b takes in each 60-degree hue sector.
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _hsv_factor_table():
    """``T[h, s]``: the factors (1, 1-s, 1-s f, 1-s(1-f)) that r, g, b take from v for every 8-bit hue (wrapping
    at 180) and saturation, computed in float32 exactly as OpenCV's HSV -> RGB does, so ``v * T[h, s]`` is
    bit-identical to the per-pixel formula."""
    hue = np.arange(256, dtype=_F32) * _F32(6.0 / 180.0)
    hue = np.where(hue >= 6, hue - _F32(6), hue)
    sector = np.clip(np.floor(hue).astype(np.int64), 0, 5)
    frac = (hue - sector.astype(_F32))[:, None]
    sat = (np.arange(256, dtype=_F32) * _F32(1.0 / 255.0))[None, :]
    one = np.ones((256, 256), _F32)
    factors = np.stack([one, one - sat, one - sat * frac, one - sat * (one - frac)], axis=-1)  # (h, s, 4)
    return np.take_along_axis(factors, _SECTOR_RGB[sector][:, None, :], axis=-1).astype(_F32)  # (h, s, 3)


_HSV_FACTORS = _hsv_factor_table()


def rgb_to_hsv8(rgb):
    """8-bit RGB -> 8-bit HSV exactly as OpenCV's ``COLOR_RGB2HSV`` (H in [0, 180), S, V in [0, 255]);
    returns int32 ``(h, s, v)`` arrays."""
    c = rgb.astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return h, s, v


def hsv8_to_rgb(h, s, v):
    """8-bit HSV (hue in [0, 255]; hues >= 180 wrap around, as OpenCV's conversion does) -> HxWx3 uint8 RGB,
    OpenCV's ``COLOR_HSV2RGB`` formula in float32, rounded."""
    val = np.asarray(v).astype(_F32) * _F32(1.0 / 255.0)
    rgb = val[..., None] * _HSV_FACTORS[np.asarray(h, np.intp), np.asarray(s, np.intp)]
    rgb *= _F32(255)
    return np.clip(np.rint(rgb, out=rgb), 0, 255).astype(np.uint8)


def shift_hsv(h, s, v, dhue, dsat, dexp):
    """Darknet's HSV change on 8-bit HSV channels with OpenCV's uint8 saturating arithmetic: ``S *= dsat`` and
    ``V *= dexp`` (float32 product, rounded), ``H += 179*dhue`` (the shift rounded to an integer first, the sum
    clamped to [0, 255], not wrapped). Returns int32 ``(h, s, v)``."""
    s = np.clip(np.rint(np.asarray(s).astype(_F32) * _F32(dsat)), 0, 255).astype(np.int32)
    v = np.clip(np.rint(np.asarray(v).astype(_F32) * _F32(dexp)), 0, 255).astype(np.int32)
    h = np.clip(np.asarray(h, np.int32) + int(np.rint(179.0 * dhue)), 0, 255)
    return h, s, v


def adjust_hsv(rgb, dhue, dsat, dexp):
    """Darknet's HSV augmentation of an HxWx3 uint8 RGB image (nothing to do when it is the identity)."""
    if dsat == 1 and dexp == 1 and dhue == 0:
        return rgb
    return hsv8_to_rgb(*shift_hsv(*rgb_to_hsv8(rgb), dhue, dsat, dexp))


# ----- blur and noise ----------------------------------------------------------------------------------------
_SMALL_GAUSSIANS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    9: [v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)],
}


def gaussian_kernel(ksize):
    """OpenCV's ``getGaussianKernel(ksize, 0)``: fixed tables up to 9, else sigma ``0.3((k-1)/2 - 1) + 0.8``."""
    if ksize in _SMALL_GAUSSIANS:
        return np.asarray(_SMALL_GAUSSIANS[ksize], np.float64)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(rgb, ksize):
    """OpenCV's ``GaussianBlur(src, (k, k), 0)`` on HxWx3 uint8: separable, mirrored border (BORDER_REFLECT_101)."""
    k = gaussian_kernel(int(ksize)).astype(_F32)
    r = len(k) // 2
    if r == 0:
        return rgb
    img = rgb.astype(_F32)
    hgt, wid = img.shape[:2]
    padded = (
        np.pad(img, ((0, 0), (r, r), (0, 0)), mode="reflect")
        if wid > 1
        else np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    )
    tmp = sum(k[i] * padded[:, i : i + wid] for i in range(len(k)))
    padded = (
        np.pad(tmp, ((r, r), (0, 0), (0, 0)), mode="reflect")
        if hgt > 1
        else np.pad(tmp, ((r, r), (0, 0), (0, 0)), mode="edge")
    )
    out = sum(k[i] * padded[i : i + hgt] for i in range(len(k)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blur_background(rgb, boxes, ksize=BACKGROUND_BLUR_KSIZE, origin=(0, 0), size=None):
    """Darknet's ``blur=1``: blur the whole image, then put back the original pixels inside every box
    (``[x, y, w, h]`` relative; the pixel rectangle truncated to int as Darknet does). ``rgb`` may be the part
    at ``origin`` of an image of ``size`` (width, height) to which the boxes refer."""
    out = gaussian_blur(rgb, ksize)
    hgt, wid = rgb.shape[:2]
    full_w, full_h = size or (wid, hgt)
    ox, oy = origin
    for x, y, bw, bh in np.asarray(boxes, np.float64)[:, :4]:
        left, top = _trunc((x - bw / 2) * full_w), _trunc((y - bh / 2) * full_h)
        right, bottom = left + _trunc(bw * full_w), top + _trunc(bh * full_h)
        left, top = max(left - ox, 0), max(top - oy, 0)
        right, bottom = min(right - ox, wid), min(bottom - oy, hgt)
        if right > left and bottom > top:
            out[top:bottom, left:right] = rgb[top:bottom, left:right]
    return out


def add_gaussian_noise(rgb, sigma, rng, *, full=None, origin=(0, 0)):
    """Add N(0, sigma) noise (0..255 scale, sigma clamped to [0, 127]) to a uint8 image, rounded and clipped.
    ``rgb`` may be the part at ``origin`` (x, y) of an image of ``full`` (height, width) size: the noise is drawn
    for the whole image, so the part gets the very values the whole image would."""
    sigma = min(max(int(sigma), 0), 127)
    if sigma == 0:
        return rgb
    hgt, wid = rgb.shape[:2]
    full_h, full_w = full or (hgt, wid)
    x0, y0 = origin
    noise = rng.standard_normal((full_h, full_w, 3), dtype=_F32)[y0 : y0 + hgt, x0 : x0 + wid] * _F32(sigma)
    return np.clip(np.rint(rgb.astype(_F32) + noise), 0, 255).astype(np.uint8)


# ----- one image ---------------------------------------------------------------------------------------------
def augment_image(
    rgb,
    boxes,
    w,
    h,
    s: AugmentSettings,
    p: AugmentParams,
    rng,
    *,
    mosaic_part=None,
    letter_box=None,
    shuffle=True,
    window=None,
):
    """Augment one image (HxWx3 uint8 RGB) with its boxes (``(k, 5)`` rows ``[x, y, w, h, class]`` relative to
    the image) into a ``w x h`` network input.

    Returns ``(image uint8 (h, w, 3), boxes float64 (k', 5) relative to the output, (pleft, ptop, pright,
    pbot))``. ``rng`` shuffles the boxes and draws the noise. ``window`` ``(x0, y0, x1, y1)``: compute only
    that part of the output image (exactly its pixels in the whole one; a mosaic needs only a quadrant).
    """
    oh, ow = rgb.shape[:2]
    pleft, ptop, pright, pbot = crop_rect(ow, oh, w, h, s, p, mosaic_part, letter_box)
    swidth, sheight = ow - pleft - pright, oh - ptop - pbot
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    if len(b) and shuffle:
        b = b[rng.permutation(len(b))]
    b = b[: max(int(s.max_boxes), 0)]
    b = _drop_small(correct_boxes(b, pleft, ptop, swidth, sheight, ow, oh, p.flip), w, h)
    blur = p.blur
    if blur > 1:
        # Darknet shrinks the kernel when an object is small (and drops it when there is no object at all).
        min_side = min((_trunc(min(bw * w, bh * h)) for bw, bh in b[:, 2:4]), default=0)
        if min_side // 8 < blur:
            blur = min_side // 8
    ksize = BACKGROUND_BLUR_KSIZE if blur == 1 else (blur // 2) * 2 + 1 if blur > 1 else 1
    x0, y0, x1, y1 = window if window is not None else (0, 0, w, h)
    # the blur needs the pixels around the window (up to the image border, where it mirrors)
    r = ksize // 2
    ex0, ey0, ex1, ey1 = max(x0 - r, 0), max(y0 - r, 0), min(x1 + r, w), min(y1 + r, h)
    columns = (w - ex1, ey0, w - ex0, ey1) if p.flip else (ex0, ey0, ex1, ey1)
    img = crop_resize(rgb, pleft, ptop, swidth, sheight, w, h, window=columns)
    if p.flip:
        img = np.ascontiguousarray(img[:, ::-1])
    img = adjust_hsv(img, p.dhue, p.dsat, p.dexp)
    if blur == 1:
        img = blur_background(img, b, ksize, origin=(ex0, ey0), size=(w, h))
    elif blur > 1:
        img = gaussian_blur(img, ksize)
    img = img[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
    img = add_gaussian_noise(img, p.noise, rng, full=(h, w), origin=(x0, y0))
    return np.ascontiguousarray(img), b, (pleft, ptop, pright, pbot)


# ----- mosaic and mixup --------------------------------------------------------------------------------------
def _quadrants(w, h, cut_x, cut_y):
    """(x, y, width, height) of the 4 mosaic pieces: top-left, top-right, bottom-left, bottom-right."""
    return [
        (0, 0, cut_x, cut_y),
        (cut_x, 0, w - cut_x, cut_y),
        (0, cut_y, cut_x, h - cut_y),
        (cut_x, cut_y, w - cut_x, h - cut_y),
    ]


def _mosaic_boxes(b, k, w, h, cut_x, cut_y, shifts, bound):
    """Darknet's ``blend_truth_mosaic`` for one piece: shift into the mosaic, fix boxes that leave the image
    (or the piece, with ``bound``), keep those still inside."""
    left_shift, top_shift, right_shift, bot_shift = shifts
    out = []
    for xb, yb, wb, hb, cls in b:
        if k in (0, 2):
            xb -= (w - cut_x - right_shift) / w
        else:
            xb += (cut_x - left_shift) / w
        if k in (0, 1):
            yb -= (h - cut_y - bot_shift) / h
        else:
            yb += (cut_y - top_shift) / h
        left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
        top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if bound:
            px, py, pw, ph = _quadrants(w, h, cut_x, cut_y)[k]
            left, right = max(left, px), min(right, px + pw)
            top, bot = max(top, py), min(bot, py + ph)
            xb, wb = (right + left) / 2 / w, (right - left) / w
            yb, hb = (bot + top) / 2 / h, (bot - top) / h
        else:
            if left < 0:
                xb, wb = xb - left / w / 2, wb + left / w
            if right > w:
                xb, wb = xb - (right - w) / w / 2, wb - (right - w) / w
            if top < 0:
                yb, hb = yb - top / h / 2, hb + top / h
            if bot > h:
                yb, hb = yb - (bot - h) / h / 2, hb - (bot - h) / h
            left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
            top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if (
            left >= 0
            and right <= w
            and top >= 0
            and bot <= h
            and 0 < wb < 1
            and 0 < hb < 1
            and 0 < xb < 1
            and 0 < yb < 1
            and wb > 1.0 / w
            and hb > 1.0 / h
        ):
            out.append((xb, yb, wb, hb, cls))
    return np.asarray(out, np.float64).reshape(-1, 5)


def mosaic(
    parts,
    w,
    h,
    s: AugmentSettings,
    rng,
    params: Optional[Sequence[AugmentParams]] = None,
    cut: Optional[Tuple[int, int]] = None,
):
    """Darknet's mosaic of 4 ``(rgb, boxes)`` images into one ``w x h`` sample.

    Returns ``(image uint8 (h, w, 3), boxes (k, 5))``. ``params``/``cut`` override the random draws (tests).
    """
    if cut is None:
        cut_x = int(rng.integers(int(w * MOSAIC_MIN_OFFSET), int(w * (1 - MOSAIC_MIN_OFFSET)) + 1))
        cut_y = int(rng.integers(int(h * MOSAIC_MIN_OFFSET), int(h * (1 - MOSAIC_MIN_OFFSET)) + 1))
    else:
        cut_x, cut_y = cut
    out = np.zeros((h, w, 3), np.uint8)
    boxes = []
    total = 0
    for k, (rgb, b) in enumerate(parts):
        p = params[k] if params is not None else draw_params(rng, s)
        px, py, pw, ph = _quadrants(w, h, cut_x, cut_y)[k]
        if s.letter_box:
            img, bk, _ = augment_image(rgb, b, pw, ph, s, p, rng)
            out[py : py + ph, px : px + pw] = img
            if len(bk):
                bk = bk.copy()
                bk[:, 0], bk[:, 1] = (px + bk[:, 0] * pw) / w, (py + bk[:, 1] * ph) / h
                bk[:, 2], bk[:, 3] = bk[:, 2] * pw / w, bk[:, 3] * ph / h
        else:
            oh, ow = rgb.shape[:2]
            pleft, ptop, pright, pbot = crop_rect(ow, oh, w, h, s, p, mosaic_part=k)
            if p.flip:
                pleft, pright = pright, pleft
            # Darknet skips the padding facing away from the cut, measured in original-image pixels
            shifts = (
                min(cut_x, max(0, _cdiv(-pleft * w, ow))),
                min(cut_y, max(0, _cdiv(-ptop * h, oh))),
                min(w - cut_x, max(0, _cdiv(-pright * w, ow))),
                min(h - cut_y, max(0, _cdiv(-pbot * h, oh))),
            )
            left_shift, top_shift, right_shift, bot_shift = shifts
            sx = w - cut_x - right_shift if k in (0, 2) else left_shift
            sy = h - cut_y - bot_shift if k in (0, 1) else top_shift
            img, bk, _ = augment_image(rgb, b, w, h, s, p, rng, mosaic_part=k, window=(sx, sy, sx + pw, sy + ph))
            out[py : py + ph, px : px + pw] = img
            bk = _mosaic_boxes(bk, k, w, h, cut_x, cut_y, shifts, s.mosaic_bound)
        room = max(int(s.max_boxes) - total, 0)
        bk = bk[:room]
        total += len(bk)
        boxes.append(bk)
    return out, np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 5))


def mixup(parts, w, h, s: AugmentSettings, rng, params: Optional[Sequence[AugmentParams]] = None):
    """Darknet's mixup: two augmented images blended 50/50 in float (``(a/255 + b/255) / 2``), the first one's
    boxes then the second's (at most ``max``). Returns ``(image float32 (h, w, 3) in [0, 1], boxes)``."""
    imgs, boxes = [], []
    for k, (rgb, b) in enumerate(parts[:2]):
        p = params[k] if params is not None else draw_params(rng, s)
        img, bk, _ = augment_image(rgb, b, w, h, s, p, rng)
        imgs.append(img)
        boxes.append(bk)
    blended = (imgs[0].astype(_F32) / _F32(255)) * _F32(0.5) + (imgs[1].astype(_F32) / _F32(255)) * _F32(0.5)
    return blended, np.concatenate(boxes, axis=0)[: int(s.max_boxes)]


def augment_sample(parts, w, h, s: AugmentSettings, rng, mode="plain"):
    """One training sample from ``parts`` (a list of ``(rgb, boxes)``: 1 for ``plain``, 2 for ``mixup``,
    4 for ``mosaic``). Returns ``(image, boxes)``: image uint8 (h, w, 3), or float32 in [0, 1] for mixup;
    boxes float32 ``(k, 5)`` rows ``[x, y, w, h, class]`` relative to the output."""
    if mode == "mosaic":
        img, b = mosaic(parts[:4], w, h, s, rng)
    elif mode == "mixup":
        img, b = mixup(parts[:2], w, h, s, rng)
    elif mode == "plain":
        img, b, _ = augment_image(parts[0][0], parts[0][1], w, h, s, draw_params(rng, s), rng)
    else:
        raise ValueError(f"unknown augmentation mode {mode!r} (plain, mosaic or mixup)")
    return img, np.asarray(b, np.float32).reshape(-1, 5)
