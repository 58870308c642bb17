"""What Darknet users type: `pydarknet detect CFG WEIGHTS IMAGE`, `pydarknet detector test|train|map|valid|
calc_anchors DATA CFG [WEIGHTS] ...` and `pydarknet classifier predict DATA CFG WEIGHTS IMAGE`, with Darknet's flags;
each gives what the native pydarknet command gives. Small random-weight networks keep it fast; the detector
cases use the real yolov4-tiny weights on a real photo so that there is something to find."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from support.assets import fetch_or_skip

import pydarknet
from pydarknet.cli.darknet import rewrite, translate_classifier, translate_detector
from pydarknet.cli.main import build_parser, main
from pydarknet.data.images import resize_image, resize_min_crop, to_planar
from pydarknet.hub import models


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _timeless(text):
    # the one line whose numbers change between runs
    return "\n".join(ln for ln in text.splitlines() if "Predicted in" not in ln and " in " not in ln.split(":")[-1])


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    d = tmp_path_factory.mktemp("darknet_cli")
    cfg = d / "yolov4-tiny.cfg"
    shutil.copy(models.find_data_file("yolov4-tiny.cfg"), cfg)
    weights = d / "yolov4-tiny.weights"
    shutil.copy(fetch_or_skip("yolov4-tiny.weights"), weights)
    photo = d / "zidane.jpg"
    shutil.copy(fetch_or_skip("zidane.jpg"), photo)
    names = d / "my.names"
    names.write_text("".join(f"thing{i}\n" for i in range(80)))  # not COCO's: shows the .data's names are used
    (d / "zidane.txt").write_text("0 0.727 0.506 0.297 0.979\n27 0.787 0.507 0.043 0.153\n")  # person, tie
    (d / "valid.txt").write_text(f"{photo}\n")
    data = d / "my.data"
    data.write_text(f"classes = 80\nvalid = {d / 'valid.txt'}\nnames = {names}\nresults = {d / 'res'}\n")
    return dict(dir=d, cfg=cfg, weights=weights, photo=photo, data=data, names=names)


def test_detect_takes_darknets_positional_cfg_and_weights(yolo, capsys):
    code, darknet_out, err = run(capsys, "detect", yolo["cfg"], yolo["weights"], yolo["photo"], "-thresh", "0.3")
    assert code == 0, err
    assert "cannot read image" not in err
    code, native_out, err = run(
        capsys, "detect", "--cfg", yolo["cfg"], "--weights", yolo["weights"], yolo["photo"], "--thresh", "0.3"
    )
    assert code == 0, err
    assert "person: " in native_out and _timeless(darknet_out) == _timeless(native_out)


def test_detect_says_what_to_type_for_misplaced_model_files(yolo, capsys):
    code, out, err = run(capsys, "detect", yolo["cfg"], yolo["photo"])
    assert code == 2 and "give its weights right after it" in err and "cannot read image" not in err
    code, out, err = run(capsys, "detect", yolo["photo"], yolo["cfg"], yolo["weights"])
    assert code == 2 and "put CFG WEIGHTS first" in err
    code, out, err = run(capsys, "detect", yolo["cfg"], yolo["weights"], yolo["photo"], "--model", "yolov3-tiny")
    assert code == 2 and "either positionally or with --cfg" in err


def test_detector_test_uses_the_data_names_and_darknet_flags(yolo, capsys, tmp_path):
    out_json = tmp_path / "result.json"
    code, out, err = run(
        capsys,
        "detector",
        "test",
        yolo["data"],
        yolo["cfg"],
        yolo["weights"],
        yolo["photo"],
        "-thresh",
        "0.3",
        "-ext_output",
        "-dont_show",
        "-out",
        out_json,
    )
    assert code == 0, err
    assert "running: pydarknet detect --cfg" in err and f"--names {yolo['names']}" in err
    assert "thing0: " in out and "person" not in out and "(left_x:" in out
    assert '"name":"thing0"' in out_json.read_text()
    native = run(
        capsys,
        "detect",
        "--cfg",
        yolo["cfg"],
        "--weights",
        yolo["weights"],
        "--names",
        yolo["names"],
        "--thresh",
        "0.3",
        "--ext-output",
        yolo["photo"],
    )[1]
    assert _timeless(out) == _timeless(native)


def test_detector_test_reads_image_paths_from_stdin(yolo, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{yolo['photo']}\n\n"))
    code, out, err = run(capsys, "detector", "test", yolo["data"], yolo["cfg"], yolo["weights"], "-dont_show")
    assert code == 0, err
    assert f"{yolo['photo']}: Predicted in" in out and "thing0: " in out


def test_detector_map_and_valid_match_the_native_commands(yolo, capsys):
    argv = [yolo["data"], yolo["cfg"], yolo["weights"]]
    code, darknet_map, err = run(
        capsys, "detector", "map", *argv, "-points", "11", "-iou_thresh", "0.6", "-thresh", "0.3"
    )
    assert code == 0, err
    assert "running: pydarknet map" in err
    code, native_map, err = run(capsys, "map", *argv, "--points", "11", "--iou-thresh", "0.6", "--thresh", "0.3")
    assert code == 0, err
    assert darknet_map == native_map and "Darknet mAP@0.60 (11-point" in native_map
    assert "for conf_thresh = 0.30" in native_map
    # Darknet's valid -out PREFIX writes <results>/<PREFIX>.json
    code, out, err = run(capsys, "detector", "valid", *argv, "-out", "mine")
    assert code == 0, err
    written = yolo["dir"] / "res" / "mine.json"
    assert written.is_file() and '"category_id"' in written.read_text()


def test_detector_train_and_calc_anchors_translate_to_the_native_commands(capsys):
    new = translate_detector(["train", "a.data", "b.cfg", "c.conv.29", "-map", "-dont_show", "-gpus", "0,1", "-clear"])
    assert new == ["train", "a.data", "b.cfg", "c.conv.29", "--map", "--gpus", "0,1", "--clear"]
    args = build_parser().parse_args(new)
    assert args.map and args.clear and args.files == ["a.data", "b.cfg", "c.conv.29"] and args.gpus == "0,1"
    # Darknet's -i N trains on GPU N alone
    args = build_parser().parse_args(translate_detector(["train", "a.data", "b.cfg", "-i", "2"]))
    assert args.device == "cuda:2" and args.gpus is None
    new = translate_detector(["calc_anchors", "a.data", "-num_of_clusters", "6", "-width", "320", "-height", "256"])
    args = build_parser().parse_args(new)
    assert (args.num_of_clusters, args.width, args.height) == (6, 320, 256)
    # Darknet's default is 5 clusters
    assert build_parser().parse_args(translate_detector(["calc_anchors", "a.data"])).num_of_clusters == 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["detector", "demo", "a.data", "b.cfg", "c.weights"], "does not read video"),
        (["detector", "nope"], "not a Darknet detector action"),
        (["detector", "test", "a.data", "b.cfg", "c.weights", "x.jpg", "-bogus"], "-bogus: not a Darknet flag"),
        (["detector", "map", "a.data", "b.cfg"], "expected pydarknet detector map DATA CFG WEIGHTS"),
        (["classifier", "train", "a.data", "b.cfg"], "runs `classifier predict` only"),
        (["detector", "test", "a.data", "b.cfg", "c.weights", "-thresh"], "-thresh needs a value"),
    ],
)
def test_darknet_forms_that_cannot_run_say_why(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_darknet_flags_on_native_commands():
    args = build_parser().parse_args(
        rewrite(["map", "a.data", "b.cfg", "c.weights", "-points", "101", "-iou_thresh", "0.75", "-i", "1"])
    )
    assert (args.points, args.iou_thresh, args.device) == (101, 0.75, "cuda:1")


def test_short_weights_message_gives_the_command_line_equivalent(yolo, capsys, tmp_path):
    prefix = tmp_path / "yolov4-tiny.conv.29"
    pydarknet.load(yolo["cfg"], yolo["weights"]).save_weights(prefix, cutoff=29)
    code, out, err = run(capsys, "detect", yolo["cfg"], prefix, yolo["photo"])
    assert code == 2 and "too short" in err
    assert "partial=True" not in err and f"pydarknet train {yolo['cfg']} DATA {prefix}" in err
    code, out, err = run(capsys, "map", yolo["data"], yolo["cfg"], prefix)
    assert code == 2 and "partial=True" not in err and "pydarknet train" in err
    with pytest.raises(pydarknet.WeightsError, match="partial=True"):  # the Python API keeps its own advice
        pydarknet.load(yolo["cfg"], prefix)


# ----- classifier ------------------------------------------------------------------------------------------
CLASSIFIER_CFG = """[net]
width=32
height=24
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=7
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
"""


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    d = tmp_path_factory.mktemp("classifier")
    cfg = d / "tiny-classifier.cfg"
    cfg.write_text(CLASSIFIER_CFG)
    net = pydarknet.load(cfg, seed=3)
    rng = np.random.default_rng(0)
    net.flat_params[:] = rng.normal(0, 0.5, net.flat_params.size).astype(np.float32)
    net.touch_params()
    weights = d / "tiny-classifier.weights"
    net.save_weights(weights)
    from PIL import Image

    photo = d / "photo.png"
    Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(photo)  # landscape: cropped sides
    names = d / "seven.names"
    names.write_text("".join(f"class{i}\n" for i in range(7)))
    data = d / "seven.data"
    data.write_text(f"classes = 7\nnames = {names}\ntop = 4\n")
    return dict(cfg=cfg, weights=weights, photo=photo, names=names, data=data)


def _reference_scores(cfg, weights, photo):
    """Darknet's predict_classifier by hand: resize_min to the net width, centre crop, forward, softmax scores."""
    from PIL import Image

    net = pydarknet.load(cfg, weights)
    _, net_h, net_w = net.input_shape
    planar = to_planar(np.asarray(Image.open(photo).convert("RGB")))
    _, H, W = planar.shape
    w, h = ((W * net_w) // H, net_w) if W >= H else (net_w, (H * net_w) // W)
    resized = resize_image(planar, w, h)
    crop = np.zeros((3, net_h, net_w), np.float32)
    dx, dy = int((w - net_w) / 2), int((h - net_h) / 2)  # C's division truncates towards zero
    for j in range(net_h):
        for i in range(net_w):
            crop[:, j, i] = resized[:, min(max(j + dy, 0), h - 1), min(max(i + dx, 0), w - 1)]
    assert np.array_equal(crop, resize_min_crop(planar, net_w, net_h))
    return np.asarray(net.forward(crop[None])[-1]).reshape(-1)


def test_classifier_predict_prints_darknets_top_k(classifier, capsys):
    scores = _reference_scores(classifier["cfg"], classifier["weights"], classifier["photo"])
    assert scores.sum() == pytest.approx(1.0, abs=1e-5)  # the [softmax] output
    code, out, err = run(
        capsys,
        "classifier",
        "predict",
        classifier["data"],
        classifier["cfg"],
        classifier["weights"],
        classifier["photo"],
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{classifier['photo']}: Predicted in") and lines[0].endswith("milli-seconds.")
    top = np.argsort(-scores, kind="stable")[:4]  # the .data's top = 4
    assert lines[1:] == [f"class{i}: {scores[i]:f}" for i in top]
    # -t overrides the .data's top; the native command prints the same
    code, out, err = run(
        capsys,
        "classifier",
        "predict",
        classifier["data"],
        classifier["cfg"],
        classifier["weights"],
        classifier["photo"],
        "-t",
        "2",
    )
    assert out.splitlines()[1:] == [f"class{i}: {scores[i]:f}" for i in top[:2]]
    native = run(
        capsys,
        "classify",
        classifier["cfg"],
        classifier["weights"],
        classifier["photo"],
        "--names",
        classifier["names"],
        "--top",
        "2",
    )[1]
    assert native.splitlines()[1:] == out.splitlines()[1:]


def test_classify_refuses_a_detector(yolo, capsys):
    code, out, err = run(capsys, "classify", yolo["cfg"], yolo["weights"], yolo["photo"])
    assert code == 2 and "is a detector" in err and "pydarknet detect" in err


def test_translate_classifier_reads_names_and_top(classifier):
    new = translate_classifier(
        ["predict", str(classifier["data"]), str(classifier["cfg"]), str(classifier["weights"]), "x.png"]
    )
    assert new == [
        "classify",
        str(classifier["cfg"]),
        str(classifier["weights"]),
        "x.png",
        "--names",
        str(classifier["names"]),
        "--top",
        "4",
    ]
