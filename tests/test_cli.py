"""The `pydarknet` command end to end (folders, list files, missing and corrupt images, outputs, exit codes)
and the model registry."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pydarknet.cli.main import main
from pydarknet.hub import assets, models

PREDICTED = re.compile(r"^(.*): Predicted in [0-9.]+ milli-seconds\.$", re.M)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with two real photos, a corrupt file, a truncated JPEG and a non-image file."""
    d = tmp_path_factory.mktemp("imgs")
    shutil.copy(assets.fetch("bus.jpg"), d / "bus.jpg")
    shutil.copy(assets.fetch("zidane.jpg"), d / "zidane.jpg")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really a png")
    data = (d / "bus.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 4])
    (d / "notes.md").write_text("not an image")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_end_to_end(images, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    coco_json = tmp_path / "coco.json"
    save = tmp_path / "annotated"
    code, out, err = run(
        capsys,
        "detect",
        images,
        "--out",
        out_json,
        "--coco-out",
        coco_json,
        "--save-dir",
        save,
        "--save-txt",
        "--ext-output",
        "--batch",
        "2",
    )
    assert code == 1, err  # two unreadable images, the rest processed
    assert "corrupt.png: cannot read image" in err and "truncated.jpg: cannot read image" in err
    assert "2 images" in err and "2 failed" in err
    processed = [pathlib.Path(p).name for p in PREDICTED.findall(out)]
    assert processed == ["bus.jpg", "zidane.jpg"]
    assert re.search(r"^person: \d+%\t\(left_x: +-?\d+   top_y: +-?\d+   width: +\d+   height: +\d+\)$", out, re.M)
    # Darknet's result.json
    data = json.loads(out_json.read_text())
    assert [pathlib.Path(d["filename"]).name for d in data] == ["bus.jpg", "zidane.jpg"]
    assert [d["frame_id"] for d in data] == [1, 2]
    names = [o["name"] for o in data[0]["objects"]]
    assert names.count("person") >= 3 and "bus" in names
    assert {o["name"] for o in data[1]["objects"]} >= {"person"}
    # COCO results
    coco = json.loads(coco_json.read_text())
    assert len(coco) == sum(len(d["objects"]) for d in data)
    assert {c["image_id"] for c in coco} == {"bus", "zidane"}
    # annotated images, same size as the inputs
    from PIL import Image

    for name in ("bus.jpg", "zidane.jpg"):
        with Image.open(save / name) as a, Image.open(images / name) as b:
            assert a.size == b.size
    assert sorted(p.name for p in save.iterdir()) == ["bus.jpg", "labels", "zidane.jpg"]
    # YOLO labels: one line per box
    rows = np.loadtxt(save / "labels" / "bus.txt", ndmin=2)
    assert rows.shape[1] == 5 and 0 in rows[:, 0].astype(int)
    assert rows[:, 1:].min() >= 0 and rows[:, 1:].max() <= 1


def test_list_file_with_missing_entry(images, tmp_path, capsys):
    lst = images / "list.txt"
    lst.write_text(f"# images\nbus.jpg\n\n{images / 'zidane.jpg'}\nmissing.jpg\n")
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, "detect", lst, "--out", out_json, "--thresh", "0.5", "--letterbox")
    assert code == 1
    assert "missing.jpg: no such file (listed in" in err
    data = json.loads(out_json.read_text())
    assert [pathlib.Path(d["filename"]).name for d in data] == ["bus.jpg", "zidane.jpg"]
    assert all(o["confidence"] > 0.5 for d in data for o in d["objects"])
    assert "\t(left_x" not in out  # no --ext-output: Darknet's short lines
    assert re.search(r"^person: \d+%$", out, re.M)


def test_save_txt_never_overwrites_a_list_file(tmp_path, capsys, monkeypatch):
    shutil.copy(assets.fetch("zidane.jpg"), tmp_path / "batch.jpg")
    lst = tmp_path / "batch.txt"
    lst.write_text("batch.jpg\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "detect", lst, "--save-txt")
    assert code == 0 and "label files in runs/detect/labels" in err
    assert lst.read_text() == "batch.jpg\n" and (tmp_path / "runs" / "detect" / "labels" / "batch.txt").is_file()
    # a list file where the labels would go is still never overwritten
    trap = tmp_path / "runs" / "detect" / "labels" / "batch.txt"
    trap.write_text("batch.jpg\n")
    code, out, err = run(capsys, "detect", trap, "--save-txt")
    assert code == 1 and "not writing labels over an input list file" in err
    assert trap.read_text() == "batch.jpg\n"
    code, out, err = run(capsys, "detect", lst, "--save-txt", "--save-dir", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "labels" / "batch.txt").is_file()


def test_missing_and_corrupt_only(images, tmp_path, capsys):
    code, out, err = run(capsys, "detect", tmp_path / "nothere.jpg")
    assert code == 2 and "nothere.jpg: no such file or folder" in err and "no images to process" in err
    code, out, err = run(capsys, "detect", tmp_path / "nothere.jpg", images / "bus.jpg", "-q")
    assert code == 1 and "nothere.jpg" in err and out == ""
    code, out, err = run(capsys, "detect", images / "corrupt.png")
    assert code == 1 and "corrupt.png: cannot read image" in err and "0 images" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, "detect", empty)
    assert code == 2 and "no images in this folder" in err


def test_cfg_weights_and_names_options(images, tmp_path, capsys):
    cfg = models.find_data_file("yolov4-tiny.cfg")
    weights = models.fetch("yolov4-tiny")
    names = models.find_data_file("coco.names")
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--cfg", cfg, "--weights", weights, "--names", names)
    assert code == 0, err
    assert "person" in out
    # weights that do not fit the cfg: both byte counts in the message
    code, out, err = run(
        capsys, "detect", images / "zidane.jpg", "--cfg", models.find_data_file("yolov3-tiny.cfg"), "--weights", weights
    )
    assert code == 2 and "error:" in err and f"{os.path.getsize(weights):,}" in err and "bytes" in err
    assert "do not fit" in err
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--cfg", cfg)
    assert code == 2 and "--cfg and --weights go together" in err
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--cfg", tmp_path / "no.cfg", "--weights", weights)
    assert code == 2 and "no.cfg: no such file" in err
    bad_names = tmp_path / "three.names"
    bad_names.write_text("a\nb\nc\n")
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--names", bad_names)
    assert code == 2 and "3 names" in err and "classes=80" in err
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--model", "yolov9000")
    assert code == 2 and "unknown model" in err and "yolov4-tiny" in err
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--device", "tpu")
    assert code == 2 and "unknown device" in err
    code, out, err = run(capsys, "detect", images / "zidane.jpg", "--thresh", "1.5")
    assert code == 2 and "--thresh" in err


def test_model_option_and_save_txt_never_in_the_dataset(images, tmp_path, capsys, monkeypatch):
    dataset = tmp_path / "dataset" / "images"
    dataset.mkdir(parents=True)
    img = dataset / "coffee.png"
    shutil.copy(assets.fetch("coffee.png"), img)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run(capsys, "detect", img, "--model", "yolov3-tiny", "--letterbox", "--save-txt")
    assert code == 0, err
    assert "cup" in out
    # not beside the image (Darknet's -save_labels place, where a dataset's own labels live): a run folder
    assert sorted(p.name for p in dataset.iterdir()) == ["coffee.png"]
    assert (work / "runs" / "detect" / "labels" / "coffee.txt").read_text().startswith("41 ")  # cup


def test_help_texts_show_single_percent_signs(capsys):
    from pydarknet.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "%%" not in text, name
    assert "`name: 97%`" in sub.choices["detect"].format_help()


def test_usage_errors(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["detect"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "pydarknet" in capsys.readouterr().out


def test_download(capsys):
    code, out, err = run(capsys, "download", "--list")
    assert code == 0
    for name in ("yolov4-tiny", "yolov3-tiny", "yolov3", "yolov4", "yolov4-csp", "yolov4x-mish", "p5", "p6"):
        assert re.search(rf"^{re.escape(name)} ", out, re.M)
    assert "bus.jpg" in out
    code, out, err = run(capsys, "download", "yolov4-tiny", "bus.jpg")
    assert code == 0
    assert out.splitlines() == [str(models.fetch("yolov4-tiny")), str(assets.fetch("bus.jpg"))]
    code, out, err = run(capsys, "download", "nosuchmodel")
    assert code == 2 and "unknown model" in err


def test_python_dash_m_entry_point(images):
    # run outside the checkout so that the installed package (with its compiled engine) is the one imported
    proc = subprocess.run(
        [sys.executable, "-m", "pydarknet", "detect", str(images / "zidane.jpg"), "--thresh", "0.4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=images,
    )
    assert proc.returncode == 0, proc.stderr
    assert PREDICTED.search(proc.stdout) and "person:" in proc.stdout


# ----- the registry --------------------------------------------------------------------------------------------
def test_registry_entries():
    assert models.DEFAULT_MODEL == "yolov4-tiny"
    required = {"yolov4-tiny", "yolov3-tiny", "yolov3", "yolov4", "yolov4-csp", "yolov4x-mish", "p5", "p6"}
    assert required <= set(models.names())
    for name in models.names():
        m = models.get(name)
        assert models.find_data_file(m.cfg).is_file() and models.find_data_file(m.names).is_file()
        assert m.url.startswith("https://") and m.url.endswith(m.checkpoint or m.weights)
    for name in ("yolov4-tiny", "yolov3-tiny"):  # package-registry sources, sha256 pinned
        m = models.get(name)
        assert m.asset and m.sha256 == assets.ASSETS[m.asset].sha256
        assert models.expected_size(name) == assets.ASSETS[m.asset].size
    assert models.get("YOLOv4-Tiny").name == "yolov4-tiny"
    # Darknet's P5/P6 and the PyTorch releases' networks are distinct entries (their cfgs differ)
    for name in ("yolov4-p5", "yolov4-p6", "yolov4-p7"):
        m = models.get(name)
        assert m.checkpoint == f"{name}.pt" and m is not models.MODELS.get(name[-2:])
    assert models.get("yolov4-p7").cfg == "yolov4-p7.cfg"
    with pytest.raises(models.ModelError, match="known models"):
        models.get("yolov2")
    # sizes the cfgs need (they match the published files)
    assert models.expected_size("yolov3") == 248_007_048
    assert models.expected_size("yolov4") == 257_717_640
    assert models.expected_size("p6") == 510_868_180
    assert len(models.read_names(models.find_data_file("coco.names"))) == 80


def test_registry_cache_and_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PYDARKNET_CACHE", str(tmp_path / "cache"))
    assert not models.is_cached("yolov3")
    assert models.weights_path("yolov3") == tmp_path / "cache" / "weights" / "yolov3.weights"
    assert models.weights_path("yolov4-tiny") == tmp_path / "cache" / "assets" / "yolov4-tiny.weights"

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(models.urllib.request, "urlopen", no_network)
    with pytest.raises(models.ModelError, match="--weights PATH") as e:
        models.fetch("yolov3", quiet=True)
    assert "yolov3.weights" in str(e.value)
    assert not list((tmp_path / "cache" / "weights").glob("*"))  # nothing half-written left behind
    # a file of the right size placed in the cache is used as is, never downloaded again
    dest = models.weights_path("yolov4-tiny")
    dest.parent.mkdir(parents=True)
    shutil.copy(_real_asset("yolov4-tiny.weights"), dest)
    assert models.fetch("yolov4-tiny") == dest and models.is_cached("yolov4-tiny")


def _real_asset(name):
    env = os.environ.pop("PYDARKNET_CACHE")
    try:
        return assets.fetch(name)
    finally:
        os.environ["PYDARKNET_CACHE"] = env


def test_models_load():
    net = models.load("yolov4-tiny")
    assert len(net.names) == 80 and net.names[0] == "person"
    r = net.detect(assets.fetch("chelsea.png"), letterbox=True)
    assert r.labels[0] == "cat"


def test_default_outputs_are_git_ignored():
    # files the commands write by default into the folder they run in must not show up as changes of the checkout
    root = pathlib.Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    from pydarknet.cli.detect import DEFAULT_RUN_DIR

    paths = [f"{DEFAULT_RUN_DIR}/labels/a.txt", "anchors.txt", "counters_per_class.txt", "results/coco_results.json"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(paths), proc.stderr
