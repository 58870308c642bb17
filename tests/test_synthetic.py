"""The synthetic shapes dataset (pydarknet.synthetic): layout, labels that frame the drawn shapes, determinism."""

import hashlib
import math

import numpy as np
import pytest
from PIL import Image

from pydarknet.data import dataset as D
from pydarknet.data import labels as L
from pydarknet.data import synthetic as S


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".jpg", ".png", ".txt") and p.name not in ("train.txt", "valid.txt")
    }


def test_layout_and_strict_labels(tmp_path):
    data_path = S.generate(tmp_path / "ds", n_train=10, n_valid=4, size=(160, 128), classes=4, seed=1)
    assert data_path == (tmp_path / "ds/shapes.data").resolve()
    ds = D.load_dataset(data_path)
    assert ds.classes == 4 and ds.names == ["circle", "square", "triangle", "star"]
    assert len(ds.train) == 10 and len(ds.valid) == 4
    assert ds.backup == (tmp_path / "ds/backup").resolve()
    counts = np.zeros(4, int)
    for p in ds.train + ds.valid:
        with Image.open(p) as im:
            assert im.size == (160, 128) and im.mode == "RGB"
        lp = L.label_path(p)
        assert lp == p[:-4] + ".txt"  # beside the image: every Darknet finds it
        boxes, problems = L.parse_labels(lp, 4, eps=0.0)
        assert problems == []
        for x, y, w, h, c in boxes:
            counts[int(c)] += 1
            # never tiny: at least 0.56 of min_size (a triangle's height, squeezed by the 0.75 stretch)
            assert min(w * 160, h * 128) >= 0.5 * 0.15 * 128
    assert counts.sum() >= 14


def test_labels_frame_the_shapes(monkeypatch):
    """On a flat background, without occluders or overlaps, each box is the tight box of the pixels its shape
    covers at least half (antialiasing blends the rim; the coverage read back from a shaded colour is good to a
    pixel); nothing is drawn outside the boxes but that rim (the faint tip of a thin spike reaches 2 pixels)."""

    def flat(rng, width, height):
        rng.integers(3)
        return np.full((height, width, 3), 128, np.float32)

    monkeypatch.setattr(S, "_background", flat)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        img, rows = S.render_image(
            rng, 200, 150, S.SHAPES, max_objects=4, max_overlap=0.0, empty_fraction=0, occluders=0
        )
        assert rows
        diff = np.abs(img.astype(int) - 128).max(axis=2)
        outside = diff > 0
        for cls, x, y, w, h in rows:
            x0, x1 = round((x - w / 2) * 200), round((x + w / 2) * 200)
            y0, y1 = round((y - h / 2) * 150), round((y + h / 2) * 150)
            # the margin takes in the antialiased rim: coverage below one half
            margin = diff[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2]
            full = np.percentile(margin[margin > 0], 90)  # the shape's own contrast (its fill)
            ys, xs = np.nonzero(margin >= full / 2 + 1)
            oy, ox = max(y0 - 2, 0), max(x0 - 2, 0)
            drawn = (ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1)
            assert np.abs(np.subtract(drawn, (x0, y0, x1, y1))).max() <= 1, (seed, S.SHAPES[cls], drawn)
            outside[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = False
        assert not outside.any()


def test_shape_geometry():
    mask, x0, y0 = S._shape_mask("circle", 0.3, 1.0, 20.0, 50.0, 40.0, 100, 100)
    ys, xs = np.nonzero(mask >= 0.5)
    assert (x0 + xs.min(), x0 + xs.max() + 1) == (30, 70) and (y0 + ys.min(), y0 + ys.max() + 1) == (20, 60)
    assert mask.sum() == pytest.approx(math.pi * 400, rel=0.02)
    mask, x0, y0 = S._shape_mask("square", 0.0, 1.0, 20.0, 50.0, 50.0, 100, 100)
    assert mask.sum() == pytest.approx(2 * 400, rel=0.02)  # vertices at radius 20: side 20*sqrt(2)
    ring, _, _ = S._shape_mask("ring", 0.0, 1.0, 20.0, 50.0, 50.0, 100, 100)
    assert ring.sum() == pytest.approx(math.pi * (400 - 0.55**2 * 400), rel=0.03)
    assert ring[ring.shape[0] // 2, ring.shape[1] // 2] == 0  # the hole


def test_deterministic_and_independent_of_the_count(tmp_path):
    S.generate(tmp_path / "a", n_train=6, n_valid=2, size=96, classes=5, seed=3)
    S.generate(tmp_path / "b", n_train=6, n_valid=2, size=96, classes=5, seed=3)
    S.generate(tmp_path / "c", n_train=3, n_valid=2, size=96, classes=5, seed=3)
    S.generate(tmp_path / "d", n_train=6, n_valid=2, size=96, classes=5, seed=4)
    a, b, c, d = (_digest(tmp_path / k) for k in "abcd")
    assert a == b
    assert all(a[k] == v for k, v in c.items())  # image k does not depend on how many are made
    assert sum(a[k] != d[k] for k in a) >= len(a) - 2


def test_classes_by_name_png_and_bad_arguments(tmp_path):
    p = S.generate(tmp_path / "x", n_train=2, n_valid=1, size=64, classes=["ring", "cross"], seed=0, image_format="png")
    ds = D.load_dataset(p)
    assert ds.names == ["ring", "cross"] and ds.train[0].endswith(".png")
    with pytest.raises(ValueError, match="unknown shape"):
        S.generate(tmp_path / "y", 1, 1, 64, ["circle", "blob"])
    with pytest.raises(ValueError, match="classes=9"):
        S.generate(tmp_path / "y", 1, 1, 64, 9)
    with pytest.raises(ValueError, match="too small"):
        S.generate(tmp_path / "y", 1, 1, 16, 2)
    with pytest.raises(ValueError, match="min_size"):
        S.generate(tmp_path / "y", 1, 1, 64, 2, min_size=0.5, max_size=0.3)
