"""What the OpenCV comparisons share: the [yolo] heads of a cfg, Darknet's decode of one head in numpy, OpenCV's
rows turned into the same form, and the first layer where two networks part.

OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet) is the independent reference for whole networks; these
helpers put its outputs and ours side by side.
"""

from __future__ import annotations

import re

import numpy as np

from support.netcalib import read_sections
from support.netcalib import sigmoid as _sigmoid

TOL = 1e-3
THRESH_BAND = 1e-4
OPENCV_ACTIVATIONS = (
    "leaky",
    "mish",
    "swish",
    "logistic",
    "relu",
    "tanh",
    "elu",
    "hardswish",
    "relu6",
    "selu",
    "gelu",
    "activation",
)


def yolo_specs(text):
    """Per [yolo] section: Darknet layer index, masked anchors (pixels), classes, scale_x_y, ..."""
    specs = []
    for index, (name, opts) in enumerate(read_sections(text)[1:]):
        if name not in ("yolo",):
            continue
        anchors = np.array([float(v) for v in opts["anchors"].split(",")], dtype=np.float64).reshape(-1, 2)
        num = int(opts.get("num", len(anchors)))
        mask = [int(v) for v in opts["mask"].split(",")] if "mask" in opts else list(range(num))
        specs.append(
            dict(
                index=index,
                anchors=anchors[mask],
                classes=int(opts.get("classes", 20)),
                scale_x_y=float(opts.get("scale_x_y", 1.0)),
                new_coords=int(opts.get("new_coords", 0)),
                thresh=float(opts.get("thresh", 0.2)),
            )
        )
    return specs


# ------------------------------------------------------------------------------------------------
# Darknet's yolo forward and OpenCV's row format, in float64 numpy
# ------------------------------------------------------------------------------------------------


def darknet_yolo_forward(blob, spec):
    """What Darknet's yolo layer holds after forward, given its input blob (N, A*(5+C), h, w)."""
    n, ch, h, w = blob.shape
    a, c = len(spec["anchors"]), spec["classes"]
    y = blob.astype(np.float64).reshape(n, a, 5 + c, h, w).copy()
    if not spec["new_coords"]:
        y[:, :, 0:2] = _sigmoid(y[:, :, 0:2])
        y[:, :, 4:] = _sigmoid(y[:, :, 4:])
    s = spec["scale_x_y"]
    y[:, :, 0:2] = y[:, :, 0:2] * s - 0.5 * (s - 1.0)
    return y.reshape(n, ch, h, w)


def opencv_rows(out, spec, net_w, net_h, threshold=True):
    """Darknet-layout yolo output -> OpenCV's rows, shape (N, h*w*A, 5+C) (float64)."""
    n, ch, h, w = out.shape
    a, c = len(spec["anchors"]), spec["classes"]
    y = out.astype(np.float64).reshape(n, a, 5 + c, h, w)
    gx = np.arange(w, dtype=np.float64)[None, None, None, :]
    gy = np.arange(h, dtype=np.float64)[None, None, :, None]
    aw = spec["anchors"][:, 0][None, :, None, None]
    ah = spec["anchors"][:, 1][None, :, None, None]
    bx = (gx + y[:, :, 0]) / w
    by = (gy + y[:, :, 1]) / h
    if spec["new_coords"]:
        bw = y[:, :, 2] ** 2 * 4.0 * aw / net_w
        bh = y[:, :, 3] ** 2 * 4.0 * ah / net_h
    else:
        bw = np.exp(y[:, :, 2]) * aw / net_w
        bh = np.exp(y[:, :, 3]) * ah / net_h
    obj = y[:, :, 4]
    prob = obj[:, :, None] * y[:, :, 5:]
    if threshold:
        prob = np.where(prob > spec["thresh"], prob, 0.0)
    rows = np.concatenate([np.stack([bx, by, bw, bh, obj], axis=2), prob], axis=2)  # N, A, 5+C, h, w
    return rows.transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, 5 + c)


def decoded_diff(ours_out, ref_rows, spec, net_w, net_h):
    """Max abs difference between our output in OpenCV's row format and OpenCV's rows."""
    n = ours_out.shape[0]
    ref = np.asarray(ref_rows, dtype=np.float64).reshape(n, -1, 5 + spec["classes"])
    mine = opencv_rows(ours_out, spec, net_w, net_h)
    diff = np.abs(mine - ref)
    raw_prob = opencv_rows(ours_out, spec, net_w, net_h, threshold=False)[..., 5:]
    band = np.abs(raw_prob - spec["thresh"]) <= THRESH_BAND
    if band.any():
        cls_diff = diff[..., 5:]
        either = np.minimum(np.abs(raw_prob - ref[..., 5:]), np.abs(ref[..., 5:]))
        cls_diff[band] = either[band]
    return float(diff.max())


# ------------------------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------------------------


def opencv_layer_names(cv_net):
    """Darknet layer index -> name of the OpenCV blob holding that layer's final output."""
    mapping, current = {}, None
    for name in cv_net.getLayerNames():
        m = re.fullmatch(r"([A-Za-z]+)_(\d+)", name)
        if not m:
            continue
        kind, idx = m.group(1), int(m.group(2))
        if kind in OPENCV_ACTIVATIONS and current is not None and idx == current + 1:
            mapping[current] = name  # activation of layer `current`
            continue
        if kind in ("permute", "yolo"):
            continue
        current = idx
        mapping[idx] = name
    return mapping


def first_divergence(net, cv_net, x, tol=TOL):
    """Describe the first Darknet layer whose output differs from OpenCV's blob by more than tol."""
    ours = net.forward_all(x)
    mapping = opencv_layer_names(cv_net)
    indices = [i for i in sorted(mapping) if i < len(ours) and net.layers[i].type != "yolo"]
    cv_net.setInput(x)
    blobs = cv_net.forward([mapping[i] for i in indices])
    for i, blob in zip(indices, blobs):
        mine = np.asarray(ours[i], dtype=np.float64)
        ref = np.asarray(blob, dtype=np.float64)
        if ref.size != mine.size:
            return f"layer {i} ({net.layers[i].type}): shape {mine.shape} vs OpenCV {mapping[i]} {ref.shape}"
        ref = ref.reshape(mine.shape)
        d = np.abs(mine - ref)
        scale = max(1.0, float(np.abs(ref).max()))
        if not np.isfinite(d).all() or d.max() > tol * scale:
            where = tuple(int(v) for v in np.unravel_index(int(np.nanargmax(d)), d.shape))
            return (
                f"first divergence at layer {i} ({net.layers[i].type}, OpenCV blob {mapping[i]}): "
                f"max abs diff {d.max():.3g} at {where} (ours {mine[where]:.6g}, "
                f"OpenCV {ref[where]:.6g}, |OpenCV| max {np.abs(ref).max():.3g})"
            )
    return "no single layer differs by more than the tolerance"


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
