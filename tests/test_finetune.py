"""`pydarknet finetune-cfg`: a released cfg edited for a dataset as Darknet's custom-training guide says (classes,
filters, anchors, max_batches/steps/burn_in, input size), every other line kept; the result loads and trains."""

import pathlib

import numpy as np
import pytest

from pydarknet.cli.main import main
from pydarknet.core.graph import load_network_desc
from pydarknet.data import synthetic
from pydarknet.errors import CfgError
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.finetune import finetune_cfg, guide_max_batches
from pydarknet.train.trainer import IterationLog, Trainer, TrainOptions

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = REPO / "cfg"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ft")
    return synthetic.generate(folder / "data", n_train=24, n_valid=4, size=64, classes=3, seed=2)


def _yolo_and_before(desc):
    return [(desc.layers[l.index - 1], l) for l in desc.layers if l.type == "yolo"]


def test_guide_rule_for_max_batches():
    assert guide_max_batches(1, 100) == 6000  # not less than 6000
    assert guide_max_batches(5, 400) == 10000  # classes * 2000
    assert guide_max_batches(2, 9000) == 9000  # not less than the training images


def test_finetune_cfg_command_gives_a_cfg_that_loads_and_trains(shapes, tmp_path, capsys):
    out = tmp_path / "yolov4-tiny-shapes.cfg"
    base = CFG / "yolov4-tiny.cfg"
    args = ["finetune-cfg", str(base), str(shapes), "-o", str(out), "--width", "64", "--height", "64"]
    assert main(args + ["--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "max_batches 6000 (Darknet's rule: classes*2000 = 6000" in printed and "hours left" in printed
    desc = load_network_desc(out)
    assert (desc.net["width"], desc.net["height"], desc.net["batch"]) == (64, 64, 4)
    assert desc.net["max_batches"] == 6000 and desc.net["steps"] == [4800, 5400] and desc.net["burn_in"] == 1000
    fit = calc_anchors(str(shapes), 6, 64, 64, seed=0).anchors
    expected = [float(max(1, round(float(v)))) for v in fit.reshape(-1)]
    heads = _yolo_and_before(desc)
    assert len(heads) == 2
    for conv, yolo in heads:
        assert conv.type == "convolutional" and conv.options["filters"] == (3 + 5) * 3
        assert yolo.options["classes"] == 3 and yolo.options["anchors"] == expected
    # the fine head used anchors 1,2,3 of COCO's set; fitted anchors are split between the heads, smallest first
    assert [h[1].options["mask"] for h in heads] == [[3, 4, 5], [0, 1, 2]]
    # nothing else changed: the same lines but those of the edited keys, comments included
    before, after = base.read_text().splitlines(), out.read_text().splitlines()
    assert len(before) == len(after) and before[0] == after[0] and before[0].startswith("#")
    changed = {a.split("=")[0] for b, a in zip(before, after) if a != b}
    assert changed == {"width", "height", "batch", "max_batches", "steps", "filters", "anchors", "classes", "mask"}
    # it trains
    trainer = Trainer(out, shapes, None, TrainOptions(backup=str(tmp_path / "b"), workers=0), log=lambda _: None)
    result = trainer.run(stop_after=2)
    assert result.iterations == 2 and all(np.isfinite(e.loss) and not e.skipped for e in trainer.history)


def test_a_short_run_scales_steps_and_burn_in_like_the_hand_edited_recipe(shapes):
    # the edits tests/test_train.py's fine-tuning test made by hand: 128x128, batch 16, 300 iterations, burn_in
    # 100, steps at 80 % / 90 %
    r = finetune_cfg(CFG / "yolov4-tiny.cfg", shapes, width=128, height=128, max_batches=300, batch=16)
    assert (r.max_batches, r.steps, r.burn_in) == (300, [240, 270], 100)
    assert "max_batches=300" in r.text and "steps=240,270" in r.text and "burn_in=100" in r.text
    assert r.text.count("filters=24") == 2 and r.text.count("classes=3") == 2 and "mask=0,1,2" in r.text
    kept = finetune_cfg(CFG / "yolov4-tiny.cfg", shapes, anchors="keep")
    assert kept.anchors is None and kept.text.count("anchors=10,14,23,27,37,58,81,82,135,169,344,319") == 2
    assert "mask=1,2,3" in kept.text  # masks follow the anchors: the base cfg's are kept with them


@pytest.mark.parametrize(
    "name, per_head, num",
    [("yolov4-csp.cfg", 3, 9), ("yolov4-p5.cfg", 4, 12), ("yolov7-tiny.cfg", 3, 9), ("yolov3.cfg", 3, 9)],
)
def test_new_coords_and_four_anchor_heads(shapes, name, per_head, num):
    r = finetune_cfg(CFG / name, shapes, width=64, height=64)
    text_desc = _load_text(r.text)
    for conv, yolo in _yolo_and_before(text_desc):
        assert len(yolo.options["mask"]) == per_head and yolo.options["num"] == num
        assert conv.options["filters"] == (3 + 5) * per_head  # (classes + 5) * len(mask), new_coords or not
    masks = sorted(m for _, y in _yolo_and_before(text_desc) for m in y.options["mask"])
    assert masks == list(range(num))


def _load_text(text):
    from pydarknet.core.cfg import parse_cfg_text
    from pydarknet.core.graph import build_network

    return build_network(parse_cfg_text(text))


BASE = """# a comment that stays
[net]
batch = 8
width=64
height=64
channels=3
max_batches = 500200
policy=steps
steps=400000,450000
scales=.1,.1

; another comment
[convolutional]
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters = 255{trailing}
size=1
stride=1
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14, 23,27, 37,58
classes=80
num=3
""".format(trailing="   ")  # trailing spaces after a value, as hand-edited cfgs have


def test_values_are_edited_in_place_and_missing_keys_added(shapes, tmp_path):
    base = tmp_path / "small.cfg"
    base.write_text(BASE)
    r = finetune_cfg(base, shapes, anchors="keep")
    lines = r.text.splitlines()
    assert lines[0] == "# a comment that stays" and "; another comment" in lines
    assert "batch = 8" in lines and "max_batches = 6000" in lines  # the key as written, the new value
    assert "filters = 24" in lines and "classes=3" in lines
    assert lines.count("steps=4800,5400") == 1
    # burn_in is not in the base cfg (Darknet's default 0): nothing to scale, nothing added
    assert "burn_in" not in r.text and r.burn_in == 0
    assert [c.split(":")[0] for c in r.changes] == ["line 7", "line 9", "line 21", "line 29"]


def test_bad_input_is_a_typed_error_naming_the_problem(shapes, tmp_path):
    base = tmp_path / "routed.cfg"
    base.write_text(BASE.replace("[yolo]", "[route]\nlayers=-1\n\n[yolo]"))
    with pytest.raises(CfgError, match=r"routed.cfg:\d+: the section before this \[yolo\] is not a"):
        finetune_cfg(base, shapes)
    no_yolo = tmp_path / "classifier.cfg"
    no_yolo.write_text(BASE.split("[yolo]")[0])
    with pytest.raises(CfgError, match="has none"):
        finetune_cfg(no_yolo, shapes)
    with pytest.raises(ValueError, match="multiple of 32"):
        finetune_cfg(CFG / "yolov4-tiny.cfg", shapes, width=100)
    out = tmp_path / "same.cfg"
    out.write_text(BASE)
    assert main(["finetune-cfg", str(out), str(shapes), "-o", str(out)]) == 2  # never overwrites its base


def test_hours_left_is_the_mean_of_the_recent_iterations(shapes, tmp_path):
    cfg = tmp_path / "ft.cfg"
    cfg.write_text(finetune_cfg(CFG / "yolov4-tiny.cfg", shapes, width=64, height=64, max_batches=3600).text)
    lines = []
    trainer = Trainer(cfg, shapes, None, TrainOptions(backup=str(tmp_path / "b"), workers=0), log=lines.append)
    seconds = iter([30.0, 2.0, 4.0])

    def step():  # a stand-in iteration that took the given time
        trainer.state.iteration += 1
        entry = IterationLog(trainer.state.iteration, 1.0, 1.0, 0.001, next(seconds), 0, 64, 64)
        trainer.history.append(entry)
        return entry

    trainer.step = step
    trainer.run(stop_after=3)
    left = [float(l.split(" seconds, ")[1].split()[2]) for l in lines if " hours left" in l]
    # (3600 - i) iterations at the mean of the iterations so far, not at the last one alone
    assert left == [round(3599 * 30 / 3600, 2), round(3598 * 16 / 3600, 2), round(3597 * 12 / 3600, 2)]
