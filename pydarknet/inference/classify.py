"""Image classification as Darknet's ``classifier predict`` does it (AlexeyAB classifier.c ``predict_classifier``).

The image is scaled so that its shorter side is the network width and cropped to the network size at the centre
(:func:`pydarknet.data.images.resize_min_crop`); the network's last layer (a ``[softmax]`` for the Darknet
classifiers, e.g. ``cfg/darknet53.cfg``) gives one score per class, and the ``top`` highest are reported, highest
first (ties: the lower class index first, as Darknet's ``top_k``).
"""

from __future__ import annotations

import time
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from pydarknet.data.images import load_image, resize_min_crop, to_planar
from pydarknet.errors import UsageError

__all__ = ["Prediction", "Classification", "classifier_outputs", "classify"]


class Prediction(NamedTuple):
    class_id: int
    name: str
    probability: float


class Classification(NamedTuple):
    """The ``top`` classes of one image, highest first, and the milliseconds the forward pass took."""

    predictions: List[Prediction]
    milliseconds: float
    path: Optional[str] = None

    def darknet_lines(self) -> List[str]:
        """What Darknet's ``classifier predict`` prints: the timing line, then ``name: 0.912345`` per class."""
        head = f"{self.path or 'image'}: Predicted in {self.milliseconds:f} milli-seconds."
        return [head] + [f"{p.name}: {p.probability:f}" for p in self.predictions]


def classifier_outputs(net) -> int:
    """Number of class scores the network's last layer gives; a :class:`UsageError` for a detector or a network
    whose last layer is not a vector of scores."""
    if net.yolo_layers:
        raise UsageError(f"{net.desc.path} is a detector ([yolo] layers): use `pydarknet detect`")
    c, h, w = net.desc.layers[-1].out_shape
    if h != 1 or w != 1:
        raise UsageError(
            f"{net.desc.path}: the last layer gives a {c}x{h}x{w} map, not one score per class; "
            "a classifier ends in [softmax] (or an [avgpool] + 1x1 [convolutional])"
        )
    return c


def classify(net, image, *, top: int = 5, names: Optional[Sequence[str]] = None) -> Classification:
    """The ``top`` classes of ``image`` (a path, PIL image or HxWx3 uint8 array) for the classifier ``net``."""
    n = classifier_outputs(net)
    names = list(names) if names is not None else list(getattr(net, "names", None) or [str(i) for i in range(n)])
    if len(names) < n:
        raise UsageError(f"{len(names)} class names for a network with {n} outputs")
    rgb, path = load_image(image)
    _, net_h, net_w = net.input_shape
    x = resize_min_crop(to_planar(rgb), net_w, net_h)[None]
    t0 = time.perf_counter()
    out = net.forward(x)
    ms = (time.perf_counter() - t0) * 1000.0
    scores = np.asarray(out[-1] if isinstance(out, (list, tuple)) else out, dtype=np.float32).reshape(-1)
    k = max(0, min(int(top), n))
    order = np.argsort(-scores, kind="stable")[:k]
    preds = [Prediction(int(i), names[int(i)], float(scores[i])) for i in order]
    return Classification(preds, ms, None if path is None else str(path))
