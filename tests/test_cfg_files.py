"""The project's cfg/ files: each builds, and each describes the same network as Darknet's original file."""

import os
from pathlib import Path

import pytest

import pydarknet
from pydarknet.core.cfg import read_cfg
from pydarknet.core.graph import load_network_desc
from pydarknet.core.weights import expected_bytes

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
# Darknet's original cfg files (AlexeyAB's cfg/ folder): $PYDARKNET_DARKNET_CFG, else ../shared/darknet-cfg beside
# the checkout; without them the comparison tests skip (README, "Tests").
ORIGINALS = Path(
    os.environ.get("PYDARKNET_DARKNET_CFG") or Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"
)
CFGS = sorted(p.name for p in CFG_DIR.glob("*.cfg"))
# cfgs that are a Darknet cfg with documented changes: name -> (Darknet's cfg, {(section, nth such section): {key:
# value}}). yolov3-tiny-weights-mask.cfg: the mask the released yolov3-tiny.weights were trained with (models.py).
DERIVED = {"yolov3-tiny-weights-mask.cfg": ("yolov3-tiny.cfg", {("yolo", 1): {"mask": "1,2,3"}})}

# Darknet's parameter counts of the released files (darknet-reference.md 1.4): header + 4 bytes per float.
WEIGHTS_BYTES = {
    "yolov3.cfg": 248_007_048,
    "yolov3-tiny.cfg": 35_434_956,
    "yolov3-tiny-weights-mask.cfg": 35_434_956,
    "yolov3-spp.cfg": 252_209_544,
    "yolov4.cfg": 257_717_640,
    "yolov4-tiny.cfg": 24_251_276,
    "yolov4-tiny-3l.cfg": 25_336_200,
    "yolov4-csp.cfg": 211_944_840,
    "yolov4x-mish.cfg": 399_388_168,
    "yolov4-p5.cfg": 283_669_892,
    "yolov4-p6.cfg": 510_868_180,
    "yolov7-tiny.cfg": 24_967_560,
    "yolov7.cfg": 147_898_248,
    "yolov7x.cfg": 285_638_760,
    "darknet53.cfg": 166_582_580,
}
PARTIAL_BYTES = {
    ("darknet53.cfg", 74): 162_482_580,
    ("yolov4.cfg", 137): 170_038_676,
    ("yolov4-tiny.cfg", 29): 19_789_716,
}
YOLO_HEADS = {
    "yolov3.cfg": [82, 94, 106],
    "yolov4.cfg": [139, 150, 161],
    "yolov4-tiny.cfg": [30, 37],
    "yolov4-csp.cfg": [144, 159, 174],
    "yolov4-p6.cfg": [292, 296, 300, 304],
    "yolov7-tiny.cfg": [90, 94, 98],
}


def test_the_supported_cfgs_are_shipped():
    for name in [
        "yolov3.cfg",
        "yolov3-tiny.cfg",
        "yolov3-tiny_3l.cfg",
        "yolov3-spp.cfg",
        "yolov4.cfg",
        "yolov4-tiny.cfg",
        "yolov4-tiny-3l.cfg",
        "yolov4-csp.cfg",
        "yolov4-csp-swish.cfg",
        "yolov4-csp-x-swish.cfg",
        "yolov4x-mish.cfg",
        "yolov4-p5.cfg",
        "yolov4-p6.cfg",
        "yolov7-tiny.cfg",
        "yolov7.cfg",
        "yolov7x.cfg",
        "darknet53.cfg",
    ]:
        assert name in CFGS
    assert len((CFG_DIR / "coco.names").read_text().split("\n")) >= 80


@pytest.mark.parametrize("name", CFGS)
def test_cfg_builds(name):
    desc = load_network_desc(CFG_DIR / name)
    assert desc.layers
    if name in WEIGHTS_BYTES:
        assert expected_bytes(desc) == WEIGHTS_BYTES[name]
    if name in YOLO_HEADS:
        assert desc.yolo_layers == YOLO_HEADS[name]


@pytest.mark.parametrize("name,cutoff", sorted(PARTIAL_BYTES))
def test_partial_sizes(name, cutoff):
    assert expected_bytes(load_network_desc(CFG_DIR / name), cutoff) == PARTIAL_BYTES[(name, cutoff)]


@pytest.mark.parametrize("name", [n for n in CFGS if n not in DERIVED])
def test_cfg_matches_darknet_original(name):
    original = ORIGINALS / name
    if not original.exists():
        pytest.skip(f"Darknet's original {name} is not in {ORIGINALS} (set PYDARKNET_DARKNET_CFG to Darknet's cfg/)")
    ours, theirs = read_cfg(CFG_DIR / name), read_cfg(original)
    assert [s.name for s in ours] == [s.name for s in theirs]
    for a, b in zip(ours, theirs):
        assert {k: v for k, (v, _) in a.items.items()} == {k: v for k, (v, _) in b.items.items()}, a.name


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_derived_cfg_differs_from_darknets_only_as_documented(name):
    base, changes = DERIVED[name]
    ours, theirs = read_cfg(CFG_DIR / name), read_cfg(CFG_DIR / base)
    assert [s.name for s in ours] == [s.name for s in theirs]
    seen = {}
    for a, b in zip(ours, theirs):
        nth = seen[a.name] = seen.get(a.name, -1) + 1
        expected = {k: v for k, (v, _) in b.items.items()}
        expected.update(changes.get((a.name, nth), {}))
        assert {k: v for k, (v, _) in a.items.items()} == expected, (a.name, nth)
    assert expected_bytes(load_network_desc(CFG_DIR / name)) == expected_bytes(load_network_desc(CFG_DIR / base))


def test_cfg_dir_is_installed_with_the_package():
    import importlib.resources

    shipped = importlib.resources.files(pydarknet) / "cfg"
    if not shipped.is_dir():
        pytest.skip("running against a source tree without an installed copy of cfg/")
    assert (shipped / "yolov4-tiny.cfg").is_file()
