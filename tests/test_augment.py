"""Darknet's detection augmentation (pydarknet.augment), checked geometrically and against OpenCV.

Geometry: scenes of known coloured rectangles are augmented and every output box must frame the pixels of its
rectangle within 1.5 pixels (bilinear blending smears an edge over about one pixel). Colour, resize and blur
are compared with OpenCV (the library Darknet calls), noise with its statistics.
"""

import numpy as np
import pytest

from pydarknet.data import augment as A

cv2 = pytest.importorskip("cv2")

GRAY = (110, 110, 110)
COLOURS = [(230, 30, 30), (30, 220, 40), (40, 60, 235), (240, 230, 20), (220, 30, 220), (20, 220, 230)]


def scene(ow, oh, rects, background=GRAY):
    """An image with filled rectangles ``(x0, y0, x1, y1)`` (pixel edges) in COLOURS[i]; labels rows
    ``[x, y, w, h, class=i]`` relative to the image."""
    img = np.empty((oh, ow, 3), np.uint8)
    img[:] = background
    rows = []
    for i, (x0, y0, x1, y1) in enumerate(rects):
        img[y0:y1, x0:x1] = COLOURS[i]
        rows.append([(x0 + x1) / 2 / ow, (y0 + y1) / 2 / oh, (x1 - x0) / ow, (y1 - y0) / oh, i])
    return img, np.asarray(rows, np.float32)


def pixel_box(img, colour, tol=40):
    """(x0, y0, x1, y1) pixel edges of the pixels within ``tol`` of ``colour``, or None."""
    d = np.abs(img.astype(int) - np.asarray(colour)).max(axis=2)
    ys, xs = np.nonzero(d <= tol)
    if not len(xs):
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def assert_boxes_frame_rectangles(img, boxes, n_rects, tol=1.5):
    h, w = img.shape[:2]
    seen = set()
    for x, y, bw, bh, cls in boxes:
        cls = int(cls)
        seen.add(cls)
        px = pixel_box(img, COLOURS[cls])
        assert px is not None, f"class {cls} has a box but no pixels"
        expect = ((x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h)
        assert np.allclose(px, expect, atol=tol), (cls, px, expect)
    for cls in set(range(n_rects)) - seen:
        px = pixel_box(img, COLOURS[cls], tol=10)
        # a rectangle without a box is out of the picture, or less than a pixel of it is left
        assert px is None or px[2] - px[0] <= 2 or px[3] - px[1] <= 2, (cls, px)


RECTS = [(20, 15, 70, 55), (110, 30, 170, 90), (40, 80, 100, 115), (150, 100, 190, 118)]


# ----- settings ----------------------------------------------------------------------------------------------
CFG = """[net]
width=96
height=64
channels=3
batch=4
{net}

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23
classes=2
num=3
{yolo}
"""


def _settings(tmp_path, net="", yolo=""):
    path = tmp_path / "t.cfg"
    path.write_text(CFG.format(net=net, yolo=yolo))
    return A.settings_from_network(str(path))


def test_settings_from_cfg(tmp_path):
    s = _settings(
        tmp_path,
        "flip=0\nhue=.1\nsaturation=1.5\nexposure=1.4\nblur=5\ngaussian_noise=20\nmixup=1\n"
        "letter_box=1\nresize_step=64\nmax_batches=3000\nmosaic_bound=1",
        "jitter=.3\nresize=1.5\nrandom=1.2\nmax=90",
    )
    assert (s.width, s.height, s.flip, s.hue, s.saturation, s.exposure) == (96, 64, False, 0.1, 1.5, 1.4)
    assert (s.blur, s.gaussian_noise, s.mixup, s.mosaic, s.letter_box, s.mosaic_bound) == (
        5,
        20,
        True,
        False,
        True,
        True,
    )
    assert (s.jitter, s.resize, s.random, s.max_boxes, s.resize_step, s.max_batches) == (0.3, 1.5, 1.2, 90, 64, 3000)
    d = _settings(tmp_path)  # Darknet's defaults: flip on, nothing else
    assert (d.flip, d.jitter, d.resize, d.hue, d.saturation, d.exposure, d.max_boxes) == (True, 0.2, 1.0, 0, 1, 1, 200)


def test_mosaic_wins_and_cutmix_is_refused(tmp_path):
    s = _settings(tmp_path, "mosaic=1\nmixup=1")
    assert s.mosaic and not s.mixup
    with pytest.warns(UserWarning, match="cutmix"):
        s = _settings(tmp_path, "cutmix=1\nmixup=1")
    assert not s.mosaic and not s.mixup  # Darknet: cutmix replaces mixup, then is switched off
    with pytest.warns(UserWarning, match="mosaic is used"):
        s = _settings(tmp_path, "cutmix=1\nmosaic=1")
    assert s.mosaic


def test_rand_scale_range_and_symmetry():
    rng = np.random.default_rng(0)
    v = np.array([A.rand_scale(rng, 1.5) for _ in range(4000)])
    assert v.min() >= 1 / 1.5 - 1e-12 and v.max() <= 1.5 + 1e-12
    assert 0.45 < (v > 1).mean() < 0.55
    assert A.rand_scale(rng, 1.0) == 1.0


# ----- resize and crop ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (300, 200), (157, 123), (78, 61), (40, 200)])
def test_resize_matches_opencv_inter_linear(size):
    img = np.random.default_rng(1).integers(0, 256, (123, 157, 3), dtype=np.uint8)
    ours = A.crop_resize(img, 0, 0, 157, 123, *size)
    ref = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("rect", [(-20, 15, 190, 90), (10, -30, 100, 200), (30, 20, 60, 50), (-40, -40, 240, 200)])
def test_crop_with_mean_fill_matches_opencv_on_a_padded_canvas(rect):
    """Darknet's image_data_augmentation: a canvas filled with the image mean, the image copied in, resized."""
    img = np.random.default_rng(2).integers(0, 256, (123, 157, 3), dtype=np.uint8)
    pl, pt, sw, sh = rect
    canvas = np.empty((sh, sw, 3), np.uint8)
    canvas[:] = np.rint(img.reshape(-1, 3).mean(axis=0))
    x0, y0, x1, y1 = max(pl, 0), max(pt, 0), min(pl + sw, 157), min(pt + sh, 123)
    canvas[y0 - pt : y1 - pt, x0 - pl : x1 - pl] = img[y0:y1, x0:x1]
    ref = cv2.resize(canvas, (100, 80), interpolation=cv2.INTER_LINEAR)
    ours = A.crop_resize(img, pl, pt, sw, sh, 100, 80)
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_correct_boxes_by_hand():
    # a 200x100 image, crop rectangle (pleft=20, ptop=-10, 160 x 120); box (40..80, 20..60) pixels
    b = np.array([[0.3, 0.4, 0.2, 0.4, 3]])
    out = A.correct_boxes(b, 20, -10, 160, 120, 200, 100, flip=False)
    assert np.allclose(out[0], [(60 - 20) / 160, (40 + 10) / 120, 40 / 160, 40 / 120, 3])
    flipped = A.correct_boxes(b, 20, -10, 160, 120, 200, 100, flip=True)
    assert np.allclose(flipped[0], [1 - 40 / 160, 50 / 120, 40 / 160, 40 / 120, 3])
    # a box half outside the crop is clipped to it
    out = A.correct_boxes(np.array([[0.1, 0.5, 0.2, 0.2, 0]]), 20, 0, 160, 100, 200, 100, flip=False)
    assert np.allclose(out[0], [10 / 160, 0.5, 20 / 160, 0.2, 0])


def test_crop_rect_follows_darknets_integer_arithmetic():
    s = A.AugmentSettings(width=100, height=100, jitter=0.3, resize=1.5)
    p = A.AugmentParams(jitter_r=(0.0, 1.0, 0.25, 0.75), resize_r=(0.0, 1.0))
    # dw = int(157*.3) = 47, dh = int(123*.3) = 36; pleft = -47, pright = 47, ptop = int(-18.0) = -18, pbot = 18
    # resize 1.5: min_rdw = int(157*(1-1.5)/2) = -39, max_rdw = int(157*(1-1/1.5)/2) = 26 (rows: -30, 20)
    assert A.crop_rect(157, 123, 100, 100, s, p) == (-47 - 39, -18 - 30, 47 + 26, 18 + 20)
    # letter_box on a 2:1 image and a square network: 50 rows added above and below
    s = A.AugmentSettings(width=64, height=64, letter_box=True)
    assert A.crop_rect(200, 100, 64, 64, s, A.AugmentParams()) == (0, -50, 0, -50)


# ----- whole images: geometry ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("letter_box", [False, True])
def test_boxes_frame_the_drawn_rectangles(seed, letter_box):
    img, rows = scene(200, 120, RECTS)
    s = A.AugmentSettings(width=160, height=128, jitter=0.3, resize=1.5, flip=True, letter_box=letter_box)
    rng = np.random.default_rng(seed)
    out, boxes, _ = A.augment_image(img, rows, 160, 128, s, A.draw_params(rng, s), rng)
    assert out.shape == (128, 160, 3) and out.dtype == np.uint8
    assert_boxes_frame_rectangles(out, boxes, len(RECTS))


def test_flip_mirrors_image_and_boxes():
    img, rows = scene(200, 120, RECTS)
    s = A.AugmentSettings(width=160, height=128, jitter=0.3)
    p = A.AugmentParams(jitter_r=(0.1, 0.7, 0.3, 0.9))
    plain, b0, _ = A.augment_image(img, rows, 160, 128, s, p, np.random.default_rng(5))
    p_flip = A.AugmentParams(jitter_r=p.jitter_r, flip=True)
    mirrored, b1, _ = A.augment_image(img, rows, 160, 128, s, p_flip, np.random.default_rng(5))
    assert np.array_equal(mirrored, plain[:, ::-1])
    assert np.allclose(b1[:, 0], 1 - b0[:, 0]) and np.allclose(b1[:, 1:], b0[:, 1:])


def test_jitter_padding_is_the_mean_colour():
    img, rows = scene(200, 120, RECTS)
    mean = np.rint(img.reshape(-1, 3).mean(axis=0))
    s = A.AugmentSettings(width=150, height=90, jitter=0.25)
    p = A.AugmentParams(jitter_r=(0.0, 0.0, 0.0, 0.0))  # every side at -dw / -dh: the image shrinks
    out, boxes, rect = A.augment_image(img, rows, 150, 90, s, p, np.random.default_rng(0))
    assert rect == (-50, -30, -50, -30)  # 300 x 180 rectangle -> 150 x 90: scale 1/2
    for region in (out[:, :24], out[:, 126:], out[:14], out[76:]):
        assert np.array_equal(region, np.broadcast_to(mean, region.shape))
    inner = out[16:74, 26:124]
    assert np.abs(inner.astype(int) - cv2.resize(img, (100, 60), interpolation=cv2.INTER_LINEAR)[1:59, 1:99]).max() <= 1
    assert_boxes_frame_rectangles(out, boxes, len(RECTS))


def test_letterbox_keeps_the_aspect_ratio():
    img, rows = scene(200, 100, [(80, 30, 120, 70)])  # a 40x40 square in a 2:1 image
    s = A.AugmentSettings(width=128, height=128, letter_box=True)
    out, boxes, rect = A.augment_image(img, rows, 128, 128, s, A.AugmentParams(), np.random.default_rng(0))
    assert rect == (0, -50, 0, -50)
    ((x, y, w, h, _),) = boxes
    assert w * 128 == pytest.approx(h * 128) and w * 128 == pytest.approx(40 * 128 / 200)
    mean = np.rint(img.reshape(-1, 3).mean(axis=0))
    assert np.array_equal(out[:31], np.broadcast_to(mean, out[:31].shape))  # bars above and below
    assert np.array_equal(out[97:], np.broadcast_to(mean, out[97:].shape))
    assert_boxes_frame_rectangles(out, boxes, 1)
    px = pixel_box(out, COLOURS[0])
    assert abs((px[2] - px[0]) - (px[3] - px[1])) <= 1  # still a square on screen


@pytest.mark.parametrize("seed", range(10))
def test_a_window_is_exactly_that_part_of_the_whole_image(seed):
    """Mosaics compute only their quadrant: the same pixels, blur (which looks around) and noise included."""
    img, rows = scene(200, 120, RECTS[:2])
    s = A.AugmentSettings(
        width=160, height=128, jitter=0.3, resize=1.5, hue=0.1, saturation=1.5, exposure=1.5, blur=7, gaussian_noise=15
    )
    p = A.draw_params(np.random.default_rng(seed), s)
    p = A.AugmentParams(
        p.jitter_r,
        p.resize_r,
        p.flip,
        p.dhue,
        p.dsat,
        p.dexp,
        blur=(0, 1, 7)[seed % 3],
        noise=15 * (seed % 2),
        corner=p.corner,
    )
    whole, b_whole, rect = A.augment_image(img, rows, 160, 128, s, p, np.random.default_rng(seed))
    r = np.random.default_rng(100 + seed)
    x0, y0 = int(r.integers(0, 100)), int(r.integers(0, 80))
    window = (x0, y0, x0 + int(r.integers(1, 160 - x0)), y0 + int(r.integers(1, 128 - y0)))
    part, b_part, rect_part = A.augment_image(img, rows, 160, 128, s, p, np.random.default_rng(seed), window=window)
    assert np.array_equal(part, whole[window[1] : window[3], window[0] : window[2]])
    assert np.array_equal(b_part, b_whole) and rect_part == rect


def test_tiny_boxes_dropped_max_kept_and_order_shuffled():
    img, rows = scene(400, 400, [(10 * i, 10, 10 * i + 6, 16) for i in range(6)])
    rows = rows.copy()
    rows[0, 2] = 0.5 / 400  # half a pixel wide: dropped at any scale <= 1
    s = A.AugmentSettings(width=400, height=400, max_boxes=6)
    _, boxes, _ = A.augment_image(img, rows, 400, 400, s, A.AugmentParams(), np.random.default_rng(0))
    assert sorted(boxes[:, 4]) == [1, 2, 3, 4, 5]
    orders = {
        tuple(A.augment_image(img, rows, 400, 400, s, A.AugmentParams(), np.random.default_rng(k))[1][:, 4])
        for k in range(10)
    }
    assert len(orders) > 1  # boxes come out in a random order
    s3 = A.AugmentSettings(width=400, height=400, max_boxes=3)
    _, boxes, _ = A.augment_image(img, rows, 400, 400, s3, A.AugmentParams(), np.random.default_rng(0))
    assert len(boxes) <= 3


# ----- colour ------------------------------------------------------------------------------------------------
def _colours():
    rng = np.random.default_rng(3)
    rand = rng.integers(0, 256, (400_000, 3), dtype=np.uint8)
    special = np.array(
        [[v, v, v] for v in range(256)]
        + [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [1, 0, 0], [0, 0, 1]],
        np.uint8,
    )
    return np.concatenate([rand, special])[None]


def test_rgb_to_hsv_is_opencvs_exactly():
    rgb = _colours()
    h, s, v = A.rgb_to_hsv8(rgb)
    assert np.array_equal(np.stack([h, s, v], axis=-1), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))


def test_hsv_to_rgb_matches_opencv():
    hh, ss, vv = np.meshgrid(np.arange(0, 256, 3), np.arange(256), np.arange(256), indexing="ij")
    hsv = np.stack([hh, ss, vv], axis=-1).astype(np.uint8).reshape(1, -1, 3)
    ours = A.hsv8_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2])
    # hues 180..255 included: both wrap them around
    assert np.abs(ours.astype(int) - cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)).max() <= 1


@pytest.mark.parametrize(
    "dhue,dsat,dexp", [(0.1, 1.5, 1.5), (-0.1, 1 / 1.5, 0.7), (0.03, 1.0, 1.3), (-0.0279, 1.37, 1 / 1.2)]
)
def test_hsv_shift_is_opencvs_saturating_arithmetic(dhue, dsat, dexp):
    hsv = cv2.cvtColor(_colours(), cv2.COLOR_RGB2HSV)
    h, s, v = A.shift_hsv(hsv[..., 0], hsv[..., 1], hsv[..., 2], dhue, dsat, dexp)
    assert np.array_equal(s, cv2.convertScaleAbs(hsv[..., 1], alpha=dsat))  # Darknet: hsv[1] *= dsat
    assert np.array_equal(v, cv2.convertScaleAbs(hsv[..., 2], alpha=dexp))
    assert np.array_equal(h, cv2.add(hsv[..., 0], 179 * dhue))  # hsv[0] += 179*dhue
    if dhue < 0:
        assert (h[hsv[..., 0] < 5] == 0).all()  # clamped at 0, not wrapped


def test_adjust_hsv_against_opencv_pipeline():
    rgb = _colours()
    dhue, dsat, dexp = 0.07, 1.4, 0.8
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = cv2.split(hsv)
    ref = cv2.cvtColor(
        cv2.merge([cv2.add(h, 179 * dhue), cv2.convertScaleAbs(s, alpha=dsat), cv2.convertScaleAbs(v, alpha=dexp)]),
        cv2.COLOR_HSV2RGB,
    )
    assert np.abs(A.adjust_hsv(rgb, dhue, dsat, dexp).astype(int) - ref).max() <= 1
    assert A.adjust_hsv(rgb, 0.0, 1.0, 1.0) is rgb  # identity: untouched, as Darknet skips it


# ----- blur and noise ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ksize", [3, 5, 7, 9, 17, 31])
def test_gaussian_blur_matches_opencv(ksize):
    img = np.random.default_rng(4).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    assert np.allclose(A.gaussian_kernel(ksize), cv2.getGaussianKernel(ksize, 0).ravel(), atol=1e-7)
    assert np.abs(A.gaussian_blur(img, ksize).astype(int) - cv2.GaussianBlur(img, (ksize, ksize), 0)).max() <= 1


def test_background_blur_keeps_objects_sharp():
    img = np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    boxes = np.array([[0.3, 0.5, 0.2, 0.5, 0]])  # pixels x 20..40, y 20..60
    out = A.blur_background(img, boxes)
    assert np.array_equal(out[20:60, 20:40], img[20:60, 20:40])
    blurred = cv2.GaussianBlur(img, (17, 17), 0)
    mask = np.ones((80, 100), bool)
    mask[20:60, 20:40] = False
    assert np.abs(out[mask].astype(int) - blurred[mask]).max() <= 1


def test_blur_setting_applies_kernel_or_background():
    img, rows = scene(200, 120, RECTS[:2])  # smallest object side 40 px: 40 // 8 >= 5
    s = A.AugmentSettings(width=200, height=120, blur=5)
    full, boxes, _ = A.augment_image(img, rows, 200, 120, s, A.AugmentParams(blur=5), np.random.default_rng(0))
    assert np.abs(full.astype(int) - cv2.GaussianBlur(img, (5, 5), 0)).max() <= 1
    # an 18 px object: Darknet shrinks the blur to 18 // 8 = 2, a 3x3 kernel
    img, rows = scene(200, 120, RECTS)
    small, _, _ = A.augment_image(img, rows, 200, 120, s, A.AugmentParams(blur=5), np.random.default_rng(0))
    assert np.abs(small.astype(int) - cv2.GaussianBlur(img, (3, 3), 0)).max() <= 1
    back, _, _ = A.augment_image(img, rows, 200, 120, s, A.AugmentParams(blur=1), np.random.default_rng(0))
    x0, y0, x1, y1 = RECTS[1]
    # the box's pixel rectangle is truncated to int (as in Darknet): its last row or column may be blurred
    assert np.array_equal(back[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1], img[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1])
    assert not np.array_equal(back, img)
    # no objects: Darknet turns a kernel blur off (the smallest object size is 0)
    none, _, _ = A.augment_image(img, rows[:0], 200, 120, s, A.AugmentParams(blur=5), np.random.default_rng(0))
    assert np.array_equal(none, img)


def test_gaussian_noise_statistics():
    img = np.full((200, 200, 3), 128, np.uint8)
    out = A.add_gaussian_noise(img, 20, np.random.default_rng(0)).astype(float) - 128
    assert abs(out.mean()) < 0.3 and out.std() == pytest.approx(20, rel=0.03)
    assert A.add_gaussian_noise(img, 0, np.random.default_rng(0)) is img
    big = A.add_gaussian_noise(img, 1000, np.random.default_rng(0)).astype(float) - 128  # clamped to 127
    assert big.std() < 110


# ----- mosaic and mixup --------------------------------------------------------------------------------------
def _four_scenes():
    parts = []
    for k, bg in enumerate([(90, 90, 90), (160, 120, 80), (70, 120, 160), (140, 140, 60)]):
        rect = [(20 + 5 * k, 15, 70 + 5 * k, 45)]
        img, rows = scene(100, 80, [])
        img[:] = bg
        x0, y0, x1, y1 = rect[0]
        img[y0:y1, x0:x1] = COLOURS[k]
        rows = np.array([[(x0 + x1) / 200, (y0 + y1) / 160, (x1 - x0) / 100, (y1 - y0) / 80, k]], np.float32)
        parts.append((img, rows))
    return parts


def test_mosaic_places_the_four_images_with_their_boxes():
    parts = _four_scenes()
    w, h, cut_x, cut_y = 128, 128, 50, 70
    s = A.AugmentSettings(width=w, height=h, mosaic=True, mosaic_bound=True, flip=False)
    ident = [A.AugmentParams()] * 4
    out, boxes = A.mosaic(parts, w, h, s, np.random.default_rng(0), params=ident, cut=(cut_x, cut_y))
    full = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img, _ in parts]
    # quadrant k shows the part of image k that faces the cut point
    expect = np.empty_like(out)
    expect[:cut_y, :cut_x] = full[0][h - cut_y :, w - cut_x :]
    expect[:cut_y, cut_x:] = full[1][h - cut_y :, : w - cut_x]
    expect[cut_y:, :cut_x] = full[2][: h - cut_y, w - cut_x :]
    expect[cut_y:, cut_x:] = full[3][: h - cut_y, : w - cut_x]
    assert np.abs(out.astype(int) - expect).max() <= 1
    assert sorted(boxes[:, 4]) == [0, 1, 2, 3]
    assert_boxes_frame_rectangles(out, boxes, 4, tol=1.5)
    quads = [(0, 0, cut_x, cut_y), (cut_x, 0, w, cut_y), (0, cut_y, cut_x, h), (cut_x, cut_y, w, h)]
    for x, y, bw, bh, cls in boxes:
        qx0, qy0, qx1, qy1 = quads[int(cls)]  # mosaic_bound: inside its quadrant
        assert qx0 - 1e-9 <= (x - bw / 2) * w and (x + bw / 2) * w <= qx1 + 1e-9
        assert qy0 - 1e-9 <= (y - bh / 2) * h and (y + bh / 2) * h <= qy1 + 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_mosaic_without_bound_boxes_cover_their_rectangles(seed):
    """mosaic_bound=0 (Darknet's default): the same pixels; boxes clipped to the image only. Darknet measures the
    padding it skips in original-image pixels, not crop pixels, so a box can reach into the next quadrant; it
    always covers what is visible of its object, and the bounded box is its part inside the quadrant."""
    parts = _four_scenes()
    kw = dict(width=160, height=128, mosaic=True, jitter=0.3, resize=1.3)
    bounded, bb = A.mosaic(parts, 160, 128, A.AugmentSettings(mosaic_bound=True, **kw), np.random.default_rng(seed))
    free, fb = A.mosaic(parts, 160, 128, A.AugmentSettings(mosaic_bound=False, **kw), np.random.default_rng(seed))
    assert np.array_equal(bounded, free)
    for x, y, bw, bh, cls in fb:
        px = pixel_box(free, COLOURS[int(cls)])
        assert px is not None
        box = ((x - bw / 2) * 160, (y - bh / 2) * 128, (x + bw / 2) * 160, (y + bh / 2) * 128)
        assert box[0] <= px[0] + 1.5 and box[1] <= px[1] + 1.5 and box[2] >= px[2] - 1.5 and box[3] >= px[3] - 1.5
        # inside the image, as Darknet checks it: on the edges truncated to whole pixels
        assert box[0] > -1 and box[2] < 161 and box[1] > -1 and box[3] < 129
    for x, y, bw, bh, cls in bb:
        ((fx, fy, fw, fh, _),) = fb[fb[:, 4] == cls]
        assert (x - bw / 2) >= (fx - fw / 2) - 1.5 / 160 and (x + bw / 2) <= (fx + fw / 2) + 1.5 / 160


@pytest.mark.parametrize("seed", range(8))
def test_random_mosaics_frame_their_rectangles(seed):
    parts = _four_scenes()
    s = A.AugmentSettings(width=160, height=128, mosaic=True, mosaic_bound=True, jitter=0.3, resize=1.3)
    out, boxes = A.mosaic(parts, 160, 128, s, np.random.default_rng(seed))
    assert out.shape == (128, 160, 3)
    assert_boxes_frame_rectangles(out, boxes, 4)


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_with_letterbox_letterboxes_each_quadrant(seed):
    parts = []
    for k in range(4):
        img, rows = scene(160, 80, [])
        img[:, :] = (90 + 30 * k, 90, 90)
        img[20:60, 50 + 10 * k : 90 + 10 * k] = COLOURS[k]  # a 40x40 square in a 2:1 image
        rows = np.array([[(70 + 10 * k) / 160, 0.5, 40 / 160, 0.5, k]], np.float32)
        parts.append((img, rows))
    s = A.AugmentSettings(width=128, height=128, mosaic=True, letter_box=True, flip=True)
    rng = np.random.default_rng(seed)
    out, boxes = A.mosaic(parts, 128, 128, s, rng)
    assert len(boxes) == 4
    assert_boxes_frame_rectangles(out, boxes, 4)
    for x, y, bw, bh, cls in boxes:
        assert bw * 128 == pytest.approx(bh * 128, abs=1.0)  # squares stay square


def test_mixup_blends_two_images_and_keeps_both_box_sets():
    a, ra = scene(200, 120, RECTS[:2])
    b, rb = scene(200, 120, RECTS[2:], background=(40, 40, 40))
    rb = rb.copy()
    rb[:, 4] += 2
    s = A.AugmentSettings(width=100, height=60, mixup=True, jitter=0.2)
    p = [A.AugmentParams(jitter_r=(0.2, 0.4, 0.6, 0.8)), A.AugmentParams(jitter_r=(0.9, 0.1, 0.5, 0.5), flip=True)]
    out, boxes = A.mixup([(a, ra), (b, rb)], 100, 60, s, np.random.default_rng(0), params=p)
    ia, ba, _ = A.augment_image(a, ra, 100, 60, s, p[0], np.random.default_rng(0))
    rng = np.random.default_rng(0)
    A.augment_image(a, ra, 100, 60, s, p[0], rng)  # the same draws as inside mixup
    ib, bb, _ = A.augment_image(b, rb, 100, 60, s, p[1], rng)
    assert out.dtype == np.float32
    assert np.allclose(out, ia / 255.0 * 0.5 + ib / 255.0 * 0.5, atol=1e-6)
    assert np.allclose(boxes, np.concatenate([ba, bb]))


def test_augment_sample_modes():
    img, rows = scene(200, 120, RECTS)
    s = A.AugmentSettings(width=96, height=64, jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5)
    for mode, n, dtype in (("plain", 1, np.uint8), ("mixup", 2, np.float32), ("mosaic", 4, np.uint8)):
        out, boxes = A.augment_sample([(img, rows)] * n, 96, 64, s, np.random.default_rng(1), mode)
        assert out.shape == (64, 96, 3) and out.dtype == dtype and boxes.dtype == np.float32
        assert boxes.shape[1] == 5 and (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 1).all()
    with pytest.raises(ValueError, match="mode"):
        A.augment_sample([(img, rows)], 96, 64, s, np.random.default_rng(1), "cutmix")
