"""End to end: `pydarknet map` / `valid` with the real yolov4-tiny on real photos and hand-written labels."""

import json
import shutil

import pytest

from pydarknet import assets, cli, models

pytest.importorskip("pycocotools")

# Hand-written ground truth (pixel x1 y1 x2 y2, class): bus.jpg 810x1080, zidane.jpg 1280x720.
GT = {
    "bus.jpg": ((810, 1080), [(0, 50, 395, 225, 910), (0, 215, 405, 345, 855), (0, 690, 370, 810, 880),
                              (5, 0, 180, 800, 790)]),
    "zidane.jpg": ((1280, 720), [(0, 740, 10, 1120, 715), (27, 980, 310, 1035, 420)]),
}


def _fetch(name):
    try:
        return assets.fetch(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"cannot fetch {name}: {e}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    weights = _fetch("yolov4-tiny.weights") if "yolov4-tiny.weights" in assets.ASSETS else None
    if weights is None:
        try:
            weights = models.fetch("yolov4-tiny", quiet=True)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"cannot fetch the yolov4-tiny weights: {e}")
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    lines = []
    for name, ((w, h), boxes) in GT.items():
        dst = root / "images" / name
        shutil.copy(_fetch(name), dst)
        lines.append(str(dst))
        rows = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for c, x1, y1, x2, y2 in boxes]
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
    assert {r["category_id"] for r in res} >= {1, 6}           # person, bus through the 80->91 map


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
