"""Running an exported detector in ONNX Runtime on images, with pydarknet's own image preparation and the same
Results as ``net.detect`` (for checking an export and for comparing runtimes; onnxruntime is the ``export`` extra).

    det = OnnxDetector("yolov4-tiny.onnx")          # exported with outputs="nms" or "decoded"
    res = det("bus.jpg")                              # a pydarknet Results
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pydarknet.errors import ExportError
from pydarknet.inference.detect import correct_boxes, default_names, load_image, nms, preprocess
from pydarknet.inference.results import Results

__all__ = ["OnnxDetector", "results_from_detections", "results_from_decoded"]

_F32 = np.float32


def _relative_xywh(xyxy, net_w, net_h):
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2 / net_w
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / net_h
    out[:, 2] = (b[:, 2] - b[:, 0]) / net_w
    out[:, 3] = (b[:, 3] - b[:, 1]) / net_h
    return out.astype(_F32)


def results_from_detections(detections, image_size, net_size, *, letterbox, names, image=None, path=None):
    """The rows of an ``outputs="nms"`` model's ``detections`` (``batch, x1, y1, x2, y2, score, class``, input
    pixels) of one image as a Results with boxes on the original ``image_size`` (w, h) image."""
    d = np.asarray(detections, _F32).reshape(-1, 7)
    net_w, net_h = net_size
    boxes = correct_boxes(_relative_xywh(d[:, 1:5], net_w, net_h), *image_size, net_w, net_h, letterbox)
    probs = np.zeros((len(d), len(names)), _F32)
    probs[np.arange(len(d)), d[:, 6].astype(np.int64)] = d[:, 5]
    return Results.from_darknet(boxes, d[:, 5], probs, names=names, image_size=image_size, image=image, path=path)


def results_from_decoded(
    boxes,
    scores,
    image_size,
    net_size,
    *,
    letterbox,
    names,
    thresh=0.25,
    nms_thresh=0.45,
    nms_kind="default",
    beta_nms=0.6,
    image=None,
    path=None,
):
    """One image's ``outputs="decoded"`` ``boxes`` (K, 4) and ``scores`` (K, C) through Darknet's thresholds and NMS
    (any ``nms_kind``, as ``net.detect``) into a Results. The file holds no separate objectness, so the Results'
    ``objectness`` is each box's best class probability."""
    net_w, net_h = net_size
    scores = np.asarray(scores, _F32)
    keep = (scores > _F32(thresh)).any(axis=1)
    rel = correct_boxes(_relative_xywh(np.asarray(boxes)[keep], net_w, net_h), *image_size, net_w, net_h, letterbox)
    probs = np.where(scores[keep] > _F32(thresh), scores[keep], _F32(0))
    probs = nms(rel, probs, nms_thresh, nms_kind, beta_nms)
    return Results.from_darknet(
        rel, probs.max(axis=1, initial=0), probs, names=names, image_size=image_size, image=image, path=path
    )


class OnnxDetector:
    """An exported pydarknet detector (``outputs="nms"`` or ``"decoded"``) in ONNX Runtime on the CPU.

    ``letterbox``/``names`` default to what the export stored in the file's metadata; ``threads`` sets ONNX
    Runtime's intra-op threads (None: its default). Images are prepared as ``net.detect`` prepares them."""

    def __init__(
        self,
        path,
        *,
        names: Optional[Sequence[str]] = None,
        letterbox: Optional[bool] = None,
        threads: Optional[int] = None,
        thresh: float = 0.25,
        nms: float = 0.45,
        nms_kind: str = "default",
    ):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - the extra is missing
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'pydarknet[export]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.outputs = meta.get("outputs", "")
        if self.outputs not in ("nms", "decoded"):
            raise ExportError(f"{path}: not a pydarknet detector export with outputs 'nms' or 'decoded'")
        shape = self.session.get_inputs()[0].shape
        self.net_w = shape[3] if isinstance(shape[3], int) else int(meta["input_width"])
        self.net_h = shape[2] if isinstance(shape[2], int) else int(meta["input_height"])
        self.letterbox = bool(int(meta.get("letter_box", "0"))) if letterbox is None else bool(letterbox)
        stored = meta.get("names")
        self.names = list(names) if names is not None else (stored.split("\n") if stored else None)
        self.thresh, self.nms, self.nms_kind = float(thresh), float(nms), nms_kind

    def run(self, tensor):
        """The session's outputs for one prepared (3, H, W) float32 input."""
        return self.session.run(None, {"images": np.ascontiguousarray(tensor[None], _F32)})

    def __call__(self, image) -> Results:
        rgb, path = load_image(image)
        outs = self.run(preprocess(rgb, self.net_w, self.net_h, self.letterbox))
        size = (rgb.shape[1], rgb.shape[0])
        net_size = (self.net_w, self.net_h)
        if self.outputs == "nms":
            names = self.names or default_names(int(outs[0][:, 6].max(initial=0)) + 1)
            return results_from_detections(
                outs[0], size, net_size, letterbox=self.letterbox, names=names, image=rgb, path=path
            )
        names = self.names or default_names(outs[1].shape[-1])
        return results_from_decoded(
            outs[0][0],
            outs[1][0],
            size,
            net_size,
            letterbox=self.letterbox,
            names=names,
            thresh=self.thresh,
            nms_thresh=self.nms,
            nms_kind=self.nms_kind,
            image=rgb,
            path=path,
        )
