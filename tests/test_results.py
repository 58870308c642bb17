"""Results: box formats, Darknet's JSON and text outputs, COCO export, YOLO label files and the annotated image,
each parsed or read back."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pydarknet.data.images import load_image
from pydarknet.hub import assets
from pydarknet.inference.detect import default_names
from pydarknet.inference.results import (
    COCO80_TO_91,
    Results,
    class_color,
    coco_image_id,
    write_coco_json,
    write_darknet_json,
)

NAMES = default_names(80)


def make_results(path="images/000000000139.jpg", image=None, size=(800, 600)):
    """Four Darknet detections (relative xywh) on an 800x600 image: box 2 has two classes, box 3 pokes out of
    the image on the left and the top."""
    boxes = np.array(
        [
            [0.25, 0.50, 0.20, 0.40],  # person
            [0.70, 0.40, 0.30, 0.20],  # car
            [0.50, 0.80, 0.10, 0.10],  # dog 0.6 and cat 0.3
            [0.02, 0.05, 0.10, 0.20],
        ],  # kite, partly outside
        np.float32,
    )
    probs = np.zeros((4, 80), np.float32)
    probs[0, 0] = 0.9
    probs[1, 2] = 0.8
    probs[2, 16] = 0.6
    probs[2, 15] = 0.3
    probs[3, 33] = 0.5
    objectness = np.array([0.95, 0.85, 0.7, 0.55], np.float32)
    return Results.from_darknet(boxes, objectness, probs, names=NAMES, image_size=size, image=image, path=path)


def test_rows_sorted_and_grouped():
    r = make_results()
    assert len(r) == 5
    assert r.labels == ["person", "car", "dog", "kite", "cat"]
    np.testing.assert_allclose(r.conf, [0.9, 0.8, 0.6, 0.5, 0.3])
    assert r.class_id.tolist() == [0, 2, 16, 33, 15]
    assert r.box_index.tolist() == [0, 1, 2, 3, 2]  # dog and cat share a box
    np.testing.assert_allclose(r.objectness, [0.95, 0.85, 0.7, 0.55, 0.7])
    assert r.counts() == {"car": 1, "cat": 1, "dog": 1, "kite": 1, "person": 1}
    assert r.image_size == (800, 600) and r.orig_shape == (600, 800)
    first = next(iter(r))
    assert first.name == "person" and first.class_id == 0 and first.conf == pytest.approx(0.9)
    assert "5 objects" in r.summary() and "800x600" in r.summary()


def test_box_formats():
    r = make_results()
    np.testing.assert_allclose(r.xywhn[0], [0.25, 0.5, 0.2, 0.4])
    np.testing.assert_allclose(r.xywh[0], [200, 300, 160, 240], rtol=1e-6)
    np.testing.assert_allclose(r.xyxy[0], [120, 180, 280, 420], rtol=1e-6)
    np.testing.assert_allclose(r.xyxyn[0], [0.15, 0.3, 0.35, 0.7], rtol=1e-6)
    np.testing.assert_allclose(r.tlwh[0], [120, 180, 160, 240], rtol=1e-5)
    for arr in (r.xyxy, r.xywh, r.xywhn, r.xyxyn, r.tlwh):
        assert arr.shape == (5, 4) and arr.dtype == np.float32
    # Darknet's boxes are not clipped; clip() is
    assert r.xyxy[3][0] < 0 and r.xyxy[3][1] < 0
    c = r.clip()
    assert c.xyxy.min() >= 0 and np.all(c.xyxy[:, 2] <= 800) and np.all(c.xyxy[:, 3] <= 600)
    np.testing.assert_allclose(c.xyxy[3], [0, 0, 0.07 * 800, 0.15 * 600], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(c.xyxy[:3], r.xyxy[:3])


def test_empty_results():
    r = Results.from_darknet(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 80)), names=NAMES, image_size=(10, 20))
    assert len(r) == 0 and r.xyxy.shape == (0, 4) and r.labels == [] and r.txt_lines() == []
    data = json.loads(r.to_json())
    assert data["objects"] == [] and data["frame_id"] == 1
    assert r.to_coco() == [] and r.darknet_lines() == []


def test_to_json_darknet_format():
    r = make_results()
    text = r.to_json(frame_id=7)
    # Darknet's exact layout (detection_to_json)
    assert text.startswith(
        '{\n "frame_id":7, \n "filename":"images/000000000139.jpg", \n "objects": [ \n  {"class_id":0,'
    )
    assert text.endswith("\n ] \n}")
    assert re.search(
        r'"relative_coordinates":\{"center_x":0\.250000, "center_y":0\.500000, "width":0\.200000, '
        r'"height":0\.400000\}, "confidence":0\.900000\}',
        text,
    )
    data = json.loads(text)
    assert data["frame_id"] == 7 and data["filename"] == "images/000000000139.jpg"
    assert [o["name"] for o in data["objects"]] == r.labels
    for o, cid, conf, box in zip(data["objects"], r.class_id, r.conf, r.xywhn):
        assert o["class_id"] == cid
        assert o["confidence"] == pytest.approx(float(conf), abs=1e-6)
        rc = o["relative_coordinates"]
        np.testing.assert_allclose([rc["center_x"], rc["center_y"], rc["width"], rc["height"]], box, atol=1e-6)
    # no path: no filename (as Darknet without one); odd characters stay valid JSON
    assert "filename" not in json.loads(make_results(path=None).to_json())
    assert json.loads(make_results(path='a "quoted"\\name.jpg').to_json())["filename"] == 'a "quoted"\\name.jpg'


def test_write_darknet_json_file(tmp_path):
    a, b = make_results(path="a.jpg"), make_results(path="b.jpg")
    out = write_darknet_json([a, b], tmp_path / "sub" / "result.json")
    text = out.read_text()
    assert text.startswith("[\n{\n") and text.endswith("\n}\n]")
    data = json.loads(text)
    assert [d["frame_id"] for d in data] == [1, 2] and [d["filename"] for d in data] == ["a.jpg", "b.jpg"]
    assert len(data[1]["objects"]) == 5
    assert json.loads(write_darknet_json([], tmp_path / "empty.json").read_text()) == []


def test_coco_export(tmp_path):
    r = make_results()
    coco = r.to_coco()
    assert [c["image_id"] for c in coco] == [139] * 5
    assert [c["category_id"] for c in coco] == [1, 3, 18, 38, 17]  # Darknet's coco_ids map
    person = coco[0]
    np.testing.assert_allclose(person["bbox"], [120, 180, 160, 240], atol=1e-3)
    assert person["score"] == pytest.approx(0.9)
    kite = coco[3]  # clipped to the image as Darknet does
    np.testing.assert_allclose(kite["bbox"], [0, 0, 0.07 * 800, 0.15 * 600], atol=1e-3)
    assert r.to_coco(image_id=5, category_ids=list(range(80)))[1]["category_id"] == 2
    assert r.to_coco(image_id=5)[0]["image_id"] == 5
    path = write_coco_json([r, make_results(path="COCO_val2014_000000000042.jpg")], tmp_path / "coco.json")
    data = json.loads(path.read_text())
    assert len(data) == 10 and {d["image_id"] for d in data} == {139, 42}
    assert set(data[0]) == {"image_id", "category_id", "bbox", "score"}


def test_coco_ids_and_image_ids():
    assert len(COCO80_TO_91) == 80 and len(set(COCO80_TO_91)) == 80
    assert COCO80_TO_91[0] == 1 and COCO80_TO_91[11] == 13 and COCO80_TO_91[79] == 90
    assert coco_image_id("/x/000000000139.jpg") == 139
    assert coco_image_id("COCO_val2014_000000000042.jpg") == 42
    assert coco_image_id("dog.jpg") == "dog"


def test_save_txt_parsed_back(tmp_path):
    r = make_results()
    path = r.save_txt(tmp_path / "labels" / "img.txt")
    rows = np.loadtxt(path, ndmin=2)
    assert rows.shape == (4, 5)  # one line per box, its best class
    assert rows[:, 0].astype(int).tolist() == [0, 2, 16, 33]
    np.testing.assert_allclose(rows[0, 1:], [0.25, 0.5, 0.2, 0.4], atol=1e-6)
    assert rows[:, 1:].min() >= 0 and rows[:, 1:].max() <= 1  # clipped: valid training labels
    np.testing.assert_allclose(rows[3, 1:], [0.035, 0.075, 0.07, 0.15], atol=1e-6)
    with_conf = np.loadtxt(r.save_txt(tmp_path / "c.txt", conf=True), ndmin=2)
    np.testing.assert_allclose(with_conf[:, 5], [0.9, 0.8, 0.6, 0.5], atol=1e-6)
    empty = Results.from_darknet(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 80)), names=NAMES, image_size=(4, 4))
    assert empty.save_txt(tmp_path / "e.txt").read_text() == ""


def test_darknet_lines():
    r = make_results()
    lines = r.darknet_lines(ext_output=True)
    # sorted by the left edge: kite (x=-0.03), person (0.15), dog+cat (0.45), car (0.55)
    assert [l.split(":")[0] for l in lines] == ["kite", "person", "dog", "cat", "car"]
    assert lines[1] == "person: 90%\t(left_x:  120   top_y:  180   width:  160   height:  240)"
    assert lines[0] == "kite: 50%\t(left_x:  -24   top_y:  -30   width:   80   height:  120)"
    assert lines[3] == "cat: 30%"  # second class of the dog's box
    assert r.darknet_lines() == ["kite: 50%", "person: 90%", "dog: 60%", "cat: 30%", "car: 80%"]


def test_class_colors_are_distinct():
    colors = [class_color(c) for c in range(80)]
    assert len(set(colors)) == 80
    for c in colors:
        assert all(0 <= v <= 255 for v in c)


@pytest.fixture(scope="module")
def bus():
    return load_image(assets.fetch("bus.jpg"))[0]


def test_plot_draws_inside_each_box(bus):
    H, W = bus.shape[:2]
    boxes = np.array([[0.3, 0.6, 0.3, 0.5], [0.7, 0.3, 0.2, 0.2], [0.9, 0.9, 0.3, 0.3]], np.float32)
    probs = np.zeros((3, 80), np.float32)
    probs[0, 0], probs[1, 5], probs[2, 0], probs[2, 1] = 0.91, 0.55, 0.4, 0.3
    r = Results.from_darknet(boxes, probs.max(1), probs, names=NAMES, image_size=(W, H), image=bus, path="bus.jpg")
    im = r.plot()
    assert im.size == (W, H) and im.mode == "RGB"
    out = np.asarray(im)
    assert not np.array_equal(out, bus)
    for x1, y1, x2, y2 in r.clip().xyxy.round().astype(int):
        region_in, region_out = bus[y1 : y2 + 1, x1 : x2 + 1], out[y1 : y2 + 1, x1 : x2 + 1]
        changed = np.any(region_in != region_out, axis=2)
        assert changed.mean() > 0.005, "the box outline is drawn inside its region"
        # the outline: the box's top-left corner pixel has the class colour
    assert tuple(out[int(r.xyxy[0][1]) + 1, int(r.xyxy[0][0]) + 1]) == class_color(0)
    # the input was not modified, and a plain call without labels also works
    assert np.array_equal(bus, load_image(assets.fetch("bus.jpg"))[0])
    assert r.plot(labels=False).size == (W, H)


def test_plot_without_image_and_errors(bus, tmp_path):
    from PIL import Image

    H, W = bus.shape[:2]
    p = tmp_path / "bus.png"
    Image.fromarray(bus).save(p)
    r = make_results(path=str(p), size=(W, H))  # no pixels kept: plot() reads the file
    assert r.plot().size == (W, H)
    with pytest.raises(ValueError, match="no image"):
        make_results(path=None, size=(W, H)).plot()
    with pytest.raises(ValueError, match="detections are for"):
        make_results(path=None).plot(image=bus)


@pytest.mark.parametrize("name", ["out.jpg", "out.png", "noext"])
def test_save_annotated(bus, tmp_path, name):
    from PIL import Image

    H, W = bus.shape[:2]
    r = make_results(image=bus, size=(W, H), path="bus.jpg")
    path = r.save(tmp_path / "sub" / name)
    with Image.open(path) as im:
        assert im.size == (W, H)
        drawn = np.asarray(im.convert("RGB")).astype(int)
    x1, y1, x2, y2 = r.clip().xyxy[0].astype(int)
    assert np.abs(drawn[y1:y2, x1:x2] - bus[y1:y2, x1:x2]).max() > 100


def _crowded_small(size=(160, 120)):
    """Five boxes side by side on a small image, their tops on one line (people in a row): labels placed above
    each top-left corner, at a font fit for a photo, would run into each other."""
    W, H = size
    xs = [0.12, 0.30, 0.48, 0.66, 0.84]
    boxes = np.array([[x, 0.55, 0.16, 0.5] for x in xs], np.float32)
    probs = np.zeros((5, 80), np.float32)
    for k, c in enumerate([0, 0, 56, 0, 2]):  # person, person, chair, person, car
        probs[k, c] = 0.9 - 0.1 * k
    return Results.from_darknet(boxes, probs.max(1), probs, names=NAMES, image_size=(W, H))


def test_plot_style_scales_with_the_image():
    from pydarknet.inference.results import plot_style

    assert plot_style(1280, 720) == (3, 22)
    assert plot_style(416, 416) == (1, 9)
    assert plot_style(128, 128) == (1, 8)  # a thumbnail: thin lines, a small font
    assert plot_style(128, 128, line_width=4, font_size=20) == (4, 20)


def test_labels_of_a_small_crowded_image_do_not_cover_each_other():
    from PIL import Image, ImageDraw

    from pydarknet.inference.results import _font, plot_style

    r = _crowded_small()
    W, H = r.image_size
    lw, fs = plot_style(W, H)
    font = _font(fs)
    draw = ImageDraw.Draw(Image.new("RGB", (W, H)))
    layout = r.label_layout(lambda t: draw.textbbox((0, 0), t, font=font), lw, fs)
    assert [lab["text"].split()[0] for lab in layout] == ["person", "person", "chair", "person", "car"]
    rects = [lab["rect"] for lab in layout]
    for k, (x, y, w, h) in enumerate(rects):
        assert 0 <= x and x + w <= W and 0 <= y and y + h <= H, layout[k]
        for x2, y2, w2, h2 in rects[k + 1 :]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, (rects[k], (x2, y2, w2, h2))
    # the drawing follows the layout: every label keeps its own colour where it is drawn
    im = np.asarray(r.plot(image=np.full((H, W, 3), 127, np.uint8)))
    for lab in layout:
        x, y, w, h = lab["rect"]
        patch = im[y : y + h, x : x + w].reshape(-1, 3)
        assert (patch == class_color(lab["class_id"])).all(axis=1).mean() > 0.3, lab
