"""End to end: `pydarknet map` / `valid` with the real yolov4-tiny on real photos and hand-written labels."""

import json
import shutil

import pytest

from pydarknet.cli import main as cli
from pydarknet.hub import assets, models

pytest.importorskip("pycocotools")

# Hand-written ground truth (pixel x1 y1 x2 y2, class): bus.jpg 810x1080, zidane.jpg 1280x720.
GT = {
    "bus.jpg": (
        (810, 1080),
        [(0, 50, 395, 225, 910), (0, 215, 405, 345, 855), (0, 690, 370, 810, 880), (5, 0, 180, 800, 790)],
    ),
    "zidane.jpg": ((1280, 720), [(0, 740, 10, 1120, 715), (27, 980, 310, 1035, 420)]),
}


def _fetch(name):
    try:
        return assets.fetch(name)
    except Exception as e:
        pytest.skip(f"cannot fetch {name}: {e}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    weights = _fetch("yolov4-tiny.weights") if "yolov4-tiny.weights" in assets.ASSETS else None
    if weights is None:
        try:
            weights = models.fetch("yolov4-tiny", quiet=True)
        except Exception as e:
            pytest.skip(f"cannot fetch the yolov4-tiny weights: {e}")
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    lines = []
    for name, ((w, h), boxes) in GT.items():
        dst = root / "images" / name
        shutil.copy(_fetch(name), dst)
        lines.append(str(dst))
        rows = [
            f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for c, x1, y1, x2, y2 in boxes
        ]
        (root / "labels" / (name.rsplit(".", 1)[0] + ".txt")).write_text("\n".join(rows) + "\n")
    (root / "valid.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(models.find_data_file("coco.names"), root / "coco.names")
    (root / "ds.data").write_text(f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\n")
    return root, str(models.find_data_file("yolov4-tiny.cfg")), str(weights)


def test_map_cli_end_to_end(dataset, capsys):
    root, cfg, weights = dataset
    out = root / "metrics.json"
    # CFG DATA order is accepted too
    assert cli.main(["map", cfg, str(root / "ds.data"), weights, "--json", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "Darknet mAP@0.50" in text and "COCO (pycocotools) AP@[.50:.95]" in text
    m = json.loads(out.read_text())
    assert {"map", "coco", "per_class"} <= set(m)
    assert set(m["coco"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    per = {p["name"]: p for p in m["per_class"]}
    assert per["person"]["gt"] == 4 and per["bus"]["gt"] == 1
    assert per["person"]["ap"] > 0.5 and per["bus"]["ap"] > 0.5 and per["tie"]["ap"] > 0.5
    # Darknet averages over all 80 classes (absent ones count 0); COCO only over classes with ground truth
    assert m["map"] == pytest.approx(sum(p["ap"] for p in m["per_class"]) / 80)
    present = [p["ap"] for p in m["per_class"] if p["gt"]]
    assert sum(present) / len(present) > 0.5
    assert m["coco"]["AP50"] > 0.5


def test_valid_cli_writes_coco_results(dataset):
    root, cfg, weights = dataset
    out = root / "res.json"
    assert cli.main(["valid", str(root / "ds.data"), cfg, weights, "--out", str(out), "-q"]) == 0
    res = json.loads(out.read_text())
    assert res and {"image_id", "category_id", "bbox", "score"} <= set(res[0])
    assert min(r["score"] for r in res) > 0.001
    assert {r["category_id"] for r in res} >= {1, 6}  # person, bus through the 80->91 map


def test_map_cli_clear_errors(dataset, tmp_path, capsys):
    root, cfg, weights = dataset
    bad = tmp_path / "bad.data"
    bad.write_text(f"classes = 3\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\n")
    assert cli.main(["map", str(bad), cfg, weights, "-q"]) == 2
    assert "80 names" in capsys.readouterr().err
    (tmp_path / "x.jpg").write_bytes((root / "images" / "bus.jpg").read_bytes())
    (tmp_path / "v.txt").write_text(str(tmp_path / "x.jpg") + "\n")
    nolab = tmp_path / "nolab.data"
    nolab.write_text(f"classes = 80\nvalid = {tmp_path / 'v.txt'}\nnames = {root / 'coco.names'}\n")
    assert cli.main(["map", str(nolab), cfg, weights, "-q"]) == 2
    assert "no label file" in capsys.readouterr().err


def _coco_annotation_file(root, category_ids, names=None):
    """The same hand-written ground truth as a COCO annotation file (file names with a folder, ids of our own)."""
    images, anns = [], []
    for k, (name, ((w, h), boxes)) in enumerate(GT.items()):
        images.append({"id": 1000 + k, "file_name": f"val2017/{name}", "width": w, "height": h})
        for c, x1, y1, x2, y2 in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 1000 + k,
                    "category_id": category_ids[c],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float((x2 - x1) * (y2 - y1)),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": cid, "name": (names[k] if names else f"c{cid}")} for k, cid in enumerate(category_ids)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _map(root, cfg, weights, data_text, *extra):
    data = root / "variant.data"
    data.write_text(data_text)
    out = root / "variant.json"
    code = cli.main(["map", str(data), cfg, weights, "--json", str(out), "-q", *extra])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_map_from_coco_annotations_equals_labels(dataset, capsys):
    from pydarknet.inference.results import COCO80_TO_91

    root, cfg, weights = dataset
    base = f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\n"
    _, from_labels = _map(root, cfg, weights, base)
    ann = _coco_annotation_file(root, COCO80_TO_91)
    code, from_ann = _map(root, cfg, weights, base + f"annotations = {ann}\n")
    assert code == 0, capsys.readouterr().err
    assert from_ann["ground_truth"] == {"source": "coco annotations", "path": str(ann), "pairing": "coco80"}
    assert from_labels["ground_truth"]["source"] == "yolo labels"
    # the same boxes, so the same numbers (the label files round the boxes to 6 decimals)
    assert from_ann["map"] == pytest.approx(from_labels["map"], abs=1e-4)
    for a, b in zip(from_ann["per_class"], from_labels["per_class"]):
        assert (a["gt"], a["tp"], a["fp"]) == (b["gt"], b["tp"], b["fp"]), a["name"]
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert from_ann["coco"][k] == pytest.approx(from_labels["coco"][k], abs=1e-3), k


def test_valid_with_coco_annotations(dataset):
    root, cfg, weights = dataset
    ids = [3 * k + 2 for k in range(80)]  # categories the COCO map would not give
    ann = _coco_annotation_file(root, ids)
    data = root / "ann.data"
    data.write_text(f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\nannotations = {ann}\n")
    out = root / "ann_results.json"
    assert cli.main(["valid", str(data), cfg, weights, "--out", str(out), "-q", "--tta"]) == 0
    res = json.loads(out.read_text())
    assert {r["image_id"] for r in res} == {1000, 1001}  # the annotation's ids, found by file name
    assert {r["category_id"] for r in res} >= {ids[0], ids[5], ids[27]}  # person, bus, tie in id order
    assert {r["category_id"] for r in res} <= set(ids)


def test_map_plot_tta_and_difficult(dataset, tmp_path, capsys):
    from PIL import Image

    root, cfg, weights = dataset
    base = f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\n"
    png = tmp_path / "pr.png"
    code, plain = _map(root, cfg, weights, base, "--plot", str(png))
    assert code == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500
    assert plain["settings"]["tta"] is None
    # TTA: three passes, every image, merged before NMS
    code, tta = _map(root, cfg, weights, base, "--tta")
    assert code == 0 and tta["settings"]["tta"] == [[1.0, False], [0.83, True], [0.67, False]]
    assert (
        tta["per_class"][0]["tp"] + tta["per_class"][0]["fp"]
        != plain["per_class"][0]["tp"] + plain["per_class"][0]["fp"]
    )  # other detections than the plain run
    # difficult: zidane's tie moves from its label file to a difficult label file
    dif = tmp_path / "difficult"
    (dif / "labels").mkdir(parents=True)
    (dif / "labels" / "bus.txt").write_text("")
    (dif / "labels" / "zidane.txt").write_text((root / "labels" / "zidane.txt").read_text().splitlines()[1] + "\n")
    (dif / "list.txt").write_text(f"{dif / 'images' / 'bus.jpg'}\n{dif / 'images' / 'zidane.jpg'}\n")
    labels = tmp_path / "ds"
    shutil.copytree(root / "images", labels / "images")
    (labels / "labels").mkdir()
    (labels / "labels" / "bus.txt").write_text((root / "labels" / "bus.txt").read_text())
    (labels / "labels" / "zidane.txt").write_text((root / "labels" / "zidane.txt").read_text().splitlines()[0] + "\n")
    (labels / "valid.txt").write_text(f"{labels / 'images' / 'bus.jpg'}\n{labels / 'images' / 'zidane.jpg'}\n")
    moved = f"classes = 80\nvalid = {labels / 'valid.txt'}\nnames = {root / 'coco.names'}\n"
    _, no_tie = _map(root, cfg, weights, moved)
    _, hard_tie = _map(root, cfg, weights, moved + f"difficult = {dif / 'list.txt'}\n")
    tie = lambda m: m["per_class"][27]  # noqa: E731
    assert tie(plain)["gt"] == 1 and tie(plain)["tp"] == 1
    assert tie(no_tie)["gt"] == 0 and tie(no_tie)["fp"] >= 1  # unlabelled: the tie detection is an FP
    assert tie(hard_tie)["gt"] == 0 and tie(hard_tie)["tp"] + tie(hard_tie)["fp"] == tie(no_tie)["fp"] - 1
    assert hard_tie["ground_truth"]["difficult"] is True
    assert hard_tie["at_thresh"]["fn"] == plain["at_thresh"]["fn"]  # a missed difficult box is no FN


def test_map_cli_more_errors(dataset, tmp_path, capsys):
    root, cfg, weights = dataset
    names, valid = root / "coco.names", root / "valid.txt"

    def fails(text, *needles, command="map"):
        data = tmp_path / "e.data"
        data.write_text(text)
        assert cli.main([command, str(data), cfg, weights, "-q"]) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err

    fails(f"valid = {valid}\nnames = {names}\n", "not a Darknet .data file (expected classes=")
    fails(f"classes = 80\nvalid = {tmp_path / 'nope.txt'}\nnames = {names}\n", "valid list", "no such file")
    fails(f"classes = 80\nvalid = {valid}\nnames = {tmp_path / 'nope.names'}\n", "names file", "no such file")
    (tmp_path / "three.names").write_text("a\nb\nc\n")
    fails(f"classes = 3\nvalid = {valid}\nnames = {tmp_path / 'three.names'}\n", "has classes=80", "classes=3")
    # label files: a bad line, a class out of range
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    shutil.copy(root / "images" / "bus.jpg", bad / "images" / "bus.jpg")
    (bad / "list.txt").write_text(str(bad / "images" / "bus.jpg") + "\n")
    (bad / "labels" / "bus.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    fails(f"classes = 80\nvalid = {bad / 'list.txt'}\nnames = {names}\n", "bus.txt:2: expected 'class cx cy w h'")
    (bad / "labels" / "bus.txt").write_text("0 0.5 0.5 0.1 0.1\n80 0.5 0.5 0.1 0.1\n")
    fails(f"classes = 80\nvalid = {bad / 'list.txt'}\nnames = {names}\n", "bus.txt: class 80 out of range")
    # difficult: a list of another length, a missing difficult label file
    (bad / "labels" / "bus.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (bad / "dif.txt").write_text("a.jpg\nb.jpg\n")
    fails(
        f"classes = 80\nvalid = {bad / 'list.txt'}\nnames = {names}\ndifficult = {bad / 'dif.txt'}\n",
        "dif.txt lists 2 images but the valid list 1",
    )
    (bad / "dif.txt").write_text("/nowhere/images/bus.jpg\n")
    fails(
        f"classes = 80\nvalid = {bad / 'list.txt'}\nnames = {names}\ndifficult = {bad / 'dif.txt'}\n",
        "no difficult label file for /nowhere/images/bus.jpg",
        "/nowhere/labels/bus.txt",
    )
    # annotation files: missing, broken, without one of the images, together with difficult=
    fails(
        f"classes = 80\nvalid = {valid}\nnames = {names}\nannotations = {tmp_path / 'no.json'}\n",
        "annotations file",
        "no such file",
    )
    (tmp_path / "broken.json").write_text("{")
    fails(
        f"classes = 80\nvalid = {valid}\nnames = {names}\nannotations = {tmp_path / 'broken.json'}\n",
        "broken.json:1:2: not valid JSON",
    )
    one = {
        "images": [{"id": 1, "file_name": "bus.jpg", "width": 810, "height": 1080}],
        "annotations": [],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names.read_text().split("\n")[:80])],
    }
    (tmp_path / "one.json").write_text(json.dumps(one))
    for command in ("map", "valid"):
        fails(
            f"classes = 80\nvalid = {valid}\nnames = {names}\nannotations = {tmp_path / 'one.json'}\n",
            "has no image named like 1 of the 2 images",
            "zidane.jpg",
            command=command,
        )
    fails(
        f"classes = 80\nvalid = {valid}\nnames = {names}\nannotations = {tmp_path / 'one.json'}\ndifficult = {valid}\n",
        "'difficult' goes with YOLO label files",
    )
    one["images"].append({"id": 2, "file_name": "zidane.jpg", "width": 720, "height": 1280})
    (tmp_path / "one.json").write_text(json.dumps(one))
    fails(
        f"classes = 80\nvalid = {valid}\nnames = {names}\nannotations = {tmp_path / 'one.json'}\n",
        "'zidane.jpg' (id 2) is 720x1280 in the annotations but 1280x720 on disk",
    )
