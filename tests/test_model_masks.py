"""The registry's yolov3-tiny runs with the mask its released weights were trained with.

Darknet's yolov3-tiny.cfg says ``mask=0,1,2`` on the second ``[yolo]`` head; the released weights were trained with
``mask=1,2,3``. The registry uses ``cfg/yolov3-tiny-weights-mask.cfg`` (Darknet's cfg with that one value changed) and
keeps ``cfg/yolov3-tiny.cfg`` as Darknet's file. The accuracy check uses the registry's real photos with hand-drawn
boxes (the same ground truth as ``tools/measure_tta.py``); measured Darknet mAP@0.5 over the 80 classes: 0.0609 with
``0,1,2``, 0.0798 with ``1,2,3``.
"""

from __future__ import annotations

import numpy as np
from support.assets import fetch_or_skip

import pydarknet
from pydarknet.evaluation.metrics import evaluate
from pydarknet.hub import models
from pydarknet.inference.detect import Detector

# (width, height), [(class, x1, y1, x2, y2)] in pixels, COCO class indices (coco.names)
GROUND_TRUTH = {
    "bus.jpg": (
        (810, 1080),
        [(0, 50, 395, 225, 910), (0, 215, 405, 345, 855), (0, 690, 370, 810, 880), (5, 0, 180, 800, 790)],
    ),
    "zidane.jpg": ((1280, 720), [(0, 740, 10, 1120, 715), (27, 980, 310, 1035, 420)]),
    "astronaut.png": ((512, 512), [(0, 20, 15, 370, 512)]),
    "chelsea.png": ((451, 300), [(15, 0, 0, 430, 300)]),
    "coffee.png": ((600, 400), [(41, 172, 18, 412, 305), (44, 322, 65, 425, 325)]),
    "motorcycle_left.png": ((741, 500), [(3, 92, 95, 685, 450), (13, 40, 105, 285, 305), (1, 0, 140, 45, 230)]),
}


def _masks(net):
    return [list(net.desc.layers[i].options["mask"]) for i in net.desc.yolo_layers]


def test_registry_yolov3_tiny_uses_the_weights_mask_and_keeps_darknets_cfg():
    m = models.get("yolov3-tiny")
    assert m.cfg == "yolov3-tiny-weights-mask.cfg" and m.darknet_cfg == "yolov3-tiny.cfg" and "1,2,3" in m.note
    ours = pydarknet.load(models.find_data_file(m.cfg))
    darknets = pydarknet.load(models.find_data_file(m.darknet_cfg))
    assert _masks(ours) == [[3, 4, 5], [1, 2, 3]]
    assert _masks(darknets) == [[3, 4, 5], [0, 1, 2]]
    assert ours.flat_params.size == darknets.flat_params.size  # the same weights file fits both


def test_models_load_reads_the_released_weights_unchanged():
    weights = fetch_or_skip("yolov3-tiny.weights")
    net = models.load("yolov3-tiny", weights=weights)
    assert _masks(net) == [[3, 4, 5], [1, 2, 3]]
    plain = pydarknet.load(models.find_data_file("yolov3-tiny.cfg"), weights)
    assert np.array_equal(np.asarray(net.flat_params), np.asarray(plain.flat_params))


def _map(cfg, weights):
    net = pydarknet.load(cfg, weights)
    det = Detector(net, thresh=0.005, nms=0.45, names=models.read_names(models.find_data_file("coco.names")))
    gts, results, sizes = [], [], []
    for name, ((w, h), boxes) in GROUND_TRUTH.items():
        res = det(fetch_or_skip(name))
        assert res.image_size == (w, h)
        gts.append((np.array([b[1:] for b in boxes], np.float32), np.array([b[0] for b in boxes])))
        results.append(res)
        sizes.append((w, h))
    return evaluate(gts, results, 80, coco=False, sizes=sizes)["map"]


def test_the_weights_mask_finds_more_on_real_photos():
    weights = fetch_or_skip("yolov3-tiny.weights")
    with_mask = _map(models.find_data_file("yolov3-tiny-weights-mask.cfg"), weights)
    darknet_mask = _map(models.find_data_file("yolov3-tiny.cfg"), weights)
    print(f"Darknet mAP@0.5 on the registry photos: mask=1,2,3 {with_mask:.4f}, mask=0,1,2 {darknet_mask:.4f}")
    assert with_mask > 1.2 * darknet_mask  # measured 1.31x
