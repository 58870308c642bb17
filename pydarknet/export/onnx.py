"""A network as an ONNX model, built with the ``onnx`` package from the network description (``net.desc``) and
the parameters (``net.params``), computing what the engine computes (csrc/layers/*.cpp, csrc/math/*.h).

What each layer becomes:

* ``[convolutional]`` / ``[connected]``: ``Conv`` / ``Gemm`` with batch-norm folded into the weights and bias in
  float64, as the engine folds them (padding ``padding * dilation``, as Darknet's im2col); ``[batchnorm]``:
  ``Mul`` + ``Add`` with the same folded factors.
* activations: their formulas in ONNX operators (mish ``x * tanh(softplus(x))``, swish ``x * sigmoid(x)``, leaky
  ``LeakyRelu(0.1)``, ... and the three ``normalize_channels`` forms over the channel axis).
* ``[maxpool]``: ``MaxPool`` with Darknet's window placement (``padding // 2`` before, the rest after, padding
  never wins), ``maxpool_depth`` a ``ReduceMax`` over channel groups; ``[local_avgpool]``: ``AveragePool``
  without the padding in the count; ``[avgpool]``: ``GlobalAveragePool``.
* ``[route]``: ``Slice`` of the ``group_id``-th channel group, ``Concat``; ``[shortcut]``: ``Add`` (weighted by the
  relu- or softmax-normalised weights, per layer or per channel; a source of another size adds its flat prefix);
  ``[upsample]``: nearest ``Resize`` (times ``scale``), a negative stride a summing depthwise ``Conv``.
* ``[sam]`` / ``[scale_channels]``: broadcast ``Mul``; ``[reorg3d]``: ``SpaceToDepth`` (``reverse=1``: the
  engine's permutation as a ``Gather``); ``[softmax]``: ``Softmax`` per group with the temperature;
  ``[dropout]``, ``[cost]``, ``[empty]``: nothing (identity at inference).
* ``[yolo]``: the logistic on x, y, objectness and classes (not with ``new_coords=1``), then ``scale_x_y``.

Outputs (``outputs=``):

* ``"raw"``: what ``net.forward`` returns: one ``yolo_<layer>`` tensor per ``[yolo]`` layer, ``(N, A*(5+C), H, W)``
  (a network without ``[yolo]`` layers: its last layer as ``output``).
* ``"decoded"``: ``boxes`` ``(N, K, 4)`` as ``x1, y1, x2, y2`` in network-input pixels and ``scores`` ``(N, K, C)``,
  Darknet's class probabilities ``objectness * class`` (``get_yolo_box``, exp or ``new_coords``), the K candidates
  in Darknet's order (heads in cfg order, cells row-major, anchors in mask order). Darknet keeps a score when it is
  ``> thresh`` (which implies ``objectness > thresh``).
* ``"nms"``: ``detections`` ``(M, 7)`` = ``batch, x1, y1, x2, y2, score, class`` after ONNX ``NonMaxSuppression``
  per class with Darknet's thresholds (``score > thresh``, suppress at ``IoU > nms``): the file alone gives the final
  detections. ONNX's NMS measures IoU, i.e. Darknet's ``nms_kind=default``; a cfg asking for ``greedynms`` or
  ``diounms`` (DIoU) gets IoU NMS in the file, with a warning.

Boxes stay relative to the network input: undo a letterbox with the image size (``correct_boxes``).

Options: ``opset`` 13 to 21; ``batch`` an int (fixed) or None (dynamic); ``dynamic_size`` for a symbolic height
and width (networks whose layers do not fix the size: no ``[connected]``, no reverse reorg, no shortcut between
layers of different sizes); ``fp16`` stores the convolution and connected weights and biases as float16 (half the
file; the graph casts them back and computes in float32).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np

from pydarknet.errors import ExportError

__all__ = ["to_onnx", "OPSET_MIN", "OPSET_MAX", "DEFAULT_OPSET", "OUTPUTS"]

OPSET_MIN, OPSET_MAX, DEFAULT_OPSET = 13, 21, 17
OUTPUTS = ("raw", "decoded", "nms")
_F32 = np.float32


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the extra is missing
        raise ExportError("exporting to ONNX needs the onnx package: pip install 'pydarknet[export]'") from None
    return onnx


class _Graph:
    """Nodes and initializers of the graph being built, with fresh names."""

    def __init__(self, onnx, opset: int, fp16: bool):
        self.onnx = onnx
        self.h = onnx.helper
        self.opset = opset
        self.fp16 = fp16
        self.nodes = []
        self.inits = []
        self._n = 0
        self.layer = None  # the layer being converted, for node names and errors

    def name(self, hint):
        self._n += 1
        prefix = f"l{self.layer.index}_" if self.layer is not None else ""
        return f"{prefix}{hint}_{self._n}"

    def const(self, value, dtype=_F32, hint="c"):
        name = self.name(hint)
        array = np.asarray(value, dtype=dtype)  # (np.ascontiguousarray would turn a scalar into shape (1,))
        self.inits.append((name, array if array.flags.c_contiguous else array.copy(order="C")))
        return name

    def ints(self, values, hint="i"):
        return self.const(np.asarray(values, np.int64), np.int64, hint)

    def param(self, value, hint):
        """A learned tensor (weights, biases): float16 in the file when asked, cast back to float32 in the graph."""
        if not self.fp16:
            return self.const(value, _F32, hint)
        stored = self.const(np.asarray(value, _F32).astype(np.float16), np.float16, hint + "_fp16")
        return self.op("Cast", [stored], to=self.onnx.TensorProto.FLOAT)

    def op(self, op_type, inputs, outputs=1, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(self.h.make_node(op_type, list(inputs), names, name=names[0] + "_n", **attrs))
        return names[0] if len(names) == 1 else names

    def scalar(self, value):
        return self.const(np.asarray(value, _F32))

    # operators whose form changed between opsets
    def reduce(self, op_type, x, axes, keepdims=1):
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", [x, self.ints(axes)])

    def clip(self, x, lo, hi):
        return self.op("Clip", [x, self.scalar(lo), self.scalar(hi)])

    def where(self, cond, a, b):
        return self.op("Where", [cond, a, b])

    def dim(self, x, axis):
        """Dimension ``axis`` of ``x`` as an int64 tensor of shape (1,)."""
        return self.op("Gather", [self.op("Shape", [x]), self.ints([axis])], axis=0)


# ----- activations -------------------------------------------------------------------------------------------
def _activate(g: _Graph, x: str, name: str) -> str:
    s = g.scalar
    if name == "linear":
        return x
    if name == "logistic":
        return g.op("Sigmoid", [x])
    if name == "loggy":
        return g.op("Sub", [g.op("Mul", [g.op("Sigmoid", [x]), s(2.0)]), s(1.0)])
    if name == "relu":
        return g.op("Relu", [x])
    if name == "elu":
        return g.op("Elu", [x], alpha=1.0)
    if name == "selu":
        return g.op("Selu", [x], alpha=1.6732, gamma=1.0507)
    if name == "gelu":
        cube = g.op("Mul", [g.op("Mul", [g.op("Mul", [x, x]), x]), s(0.035677)])
        inner = g.op("Add", [g.op("Mul", [x, s(0.797885)]), cube])
        return g.op("Mul", [g.op("Mul", [x, s(0.5)]), g.op("Add", [s(1.0), g.op("Tanh", [inner])])])
    if name == "relie":
        return g.op("LeakyRelu", [x], alpha=0.01)
    if name == "ramp":
        return g.op("Add", [g.op("Relu", [x]), g.op("Mul", [x, s(0.1)])])
    if name in ("leaky", "revleaky"):
        return g.op("LeakyRelu", [x], alpha=0.1)
    if name == "tanh":
        return g.op("Tanh", [x])
    if name == "plse":
        low = g.op("Mul", [g.op("Add", [x, s(4.0)]), s(0.01)])
        high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, s(4.0)]), s(0.01)]), s(1.0)])
        mid = g.op("Add", [g.op("Mul", [x, s(0.125)]), s(0.5)])
        return g.where(g.op("Less", [x, s(-4.0)]), low, g.where(g.op("Greater", [x, s(4.0)]), high, mid))
    if name == "stair":
        n = g.op("Floor", [x])
        half = g.op("Floor", [g.op("Div", [x, s(2.0)])])
        odd = g.op("Equal", [g.op("Abs", [g.op("Mod", [n, s(2.0)], fmod=1)]), s(1.0)])
        return g.where(odd, g.op("Add", [g.op("Sub", [x, n]), half]), half)
    if name == "hardtan":
        return g.clip(x, -1.0, 1.0)
    if name == "lhtan":
        low = g.op("Mul", [x, s(0.001)])
        high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, s(1.0)]), s(0.001)]), s(1.0)])
        return g.where(g.op("Less", [x, s(0.0)]), low, g.where(g.op("Greater", [x, s(1.0)]), high, x))
    if name == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "mish":
        # Darknet's softplus threshold (softplus(x) = x above 20) changes nothing in float32: tanh(>20) is 1.
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])
    if name == "hard_mish":
        quad = g.op("Add", [g.op("Mul", [g.op("Mul", [x, x]), s(0.5)]), x])
        zero = g.op("Mul", [x, s(0.0)])
        return g.where(g.op("Greater", [x, s(0.0)]), x, g.where(g.op("Greater", [x, s(-2.0)]), quad, zero))
    if name == "relu6":
        return g.clip(x, 0.0, 6.0)
    if name == "normalize_channels":
        pos = g.op("Relu", [x])
        total = g.op("Add", [g.reduce("ReduceSum", pos, [1]), s(0.0001)])
        return g.op("Div", [pos, total])
    if name in ("normalize_channels_softmax", "normalize_channels_softmax_maxval"):
        shifted = x
        if name.endswith("maxval"):
            shifted = g.op("Sub", [x, g.reduce("ReduceMax", x, [1])])
        e = g.op("Exp", [shifted])
        return g.op("Div", [e, g.op("Add", [g.reduce("ReduceSum", e, [1]), s(0.0001)])])
    raise ExportError(f"activation '{name}' has no ONNX form")


# ----- layers ------------------------------------------------------------------------------------------------
def _fold_bn(params, eps, n):
    """Batch-norm folded as the engine folds it (batchnorm_factors, in float64): (factor (n,), folded bias (n,))."""
    eps = float(_F32(eps))
    factor = params["scales"].astype(np.float64) / np.sqrt(params["rolling_variance"].astype(np.float64) + eps)
    bias = (params["biases"].astype(np.float64) - params["rolling_mean"].astype(np.float64) * factor).astype(_F32)
    return factor, bias


def _conv(g, l, x, params, eps, ctx):
    o = l.options
    w = params["weights"]
    b = params["biases"].astype(_F32)
    if o["batch_normalize"]:
        factor, b = _fold_bn(params, eps, o["filters"])
        w = (w.astype(_F32) * factor[:, None, None, None]).astype(_F32)
    pad = o["padding"] * o["dilation"]
    y = g.op(
        "Conv",
        [x, g.param(w, "w"), g.param(b, "b")],
        kernel_shape=[o["size"], o["size"]],
        strides=[o["stride_y"], o["stride_x"]],
        pads=[pad, pad, pad, pad],
        dilations=[o["dilation"], o["dilation"]],
        group=o["groups"],
    )
    return _activate(g, y, o["activation"])


def _connected(g, l, x, params, eps, ctx):
    o = l.options
    ctx.fixed_size(l, "its weights depend on the input size")
    w = params["weights"].astype(_F32)
    b = params["biases"].astype(_F32)
    if o["batch_normalize"]:
        factor, b = _fold_bn(params, eps, o["output"])
        w = (w * factor[:, None]).astype(_F32)
    flat = g.op("Flatten", [x], axis=1)
    y = g.op("Gemm", [flat, g.param(w, "w"), g.param(b, "b")], transB=1)
    y = g.op("Reshape", [y, g.ints([0, o["output"], 1, 1])])
    return _activate(g, y, o["activation"])


def _pool_pads(o):
    before = o["padding"] // 2
    return [before, before, o["padding"] - before, o["padding"] - before]


def _maxpool(g, l, x, params, eps, ctx):
    o = l.options
    if o["maxpool_depth"]:
        in_c, out_c = l.in_shape[0], o["out_channels"]
        if in_c % out_c:
            raise ctx.error(l, f"maxpool_depth with out_channels={out_c} not dividing the {in_c} input channels")
        grouped = g.op("Reshape", [x, g.ints([0, in_c // out_c, out_c, -1])])
        reduced = g.reduce("ReduceMax", grouped, [1], keepdims=0)
        return _reshape_spatial(g, reduced, x, out_c)
    return g.op(
        "MaxPool",
        [x],
        kernel_shape=[o["size"], o["size"]],
        strides=[o["stride_y"], o["stride_x"]],
        pads=_pool_pads(o),
    )


def _local_avgpool(g, l, x, params, eps, ctx):
    o = l.options
    return g.op(
        "AveragePool",
        [x],
        kernel_shape=[o["size"], o["size"]],
        strides=[o["stride_y"], o["stride_x"]],
        pads=_pool_pads(o),
        count_include_pad=0,
    )


def _avgpool(g, l, x, params, eps, ctx):
    return g.op("GlobalAveragePool", [x])


def _reshape_spatial(g, y, like, channels):
    """``y`` reshaped to (N, channels, H, W) with N, H, W those of ``like`` (works for symbolic sizes)."""
    shape = g.op("Concat", [g.dim(like, 0), g.ints([channels]), g.dim(like, 2), g.dim(like, 3)], axis=0)
    return g.op("Reshape", [y, shape])


def _route(g, l, x, params, eps, ctx):
    o = l.options
    parts = []
    for ref in o["layers"]:
        src = ctx.outputs[ref]
        if o["groups"] > 1:
            part = ctx.desc.layers[ref].out_shape[0] // o["groups"]
            src = g.op(
                "Slice",
                [src, g.ints([o["group_id"] * part]), g.ints([(o["group_id"] + 1) * part]), g.ints([1])],
            )
        parts.append(src)
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)


def _shortcut_weights(l, params):
    """The normalised weights (n+1, channels or 1) of a weighted shortcut, in float32 as math/shortcut.h."""
    o = l.options
    sources = len(o["from"]) + 1
    w = params["weights"].astype(_F32).reshape(sources, -1)
    norm = o["weights_normalization"]
    if norm in ("relu", "avg_relu"):
        total = _F32(0.0001) + np.maximum(w, _F32(0)).sum(axis=0, dtype=_F32)
        return (np.maximum(w, _F32(0)) / total).astype(_F32)
    if norm == "softmax":
        e = np.exp(w - w.max(axis=0)).astype(_F32)
        return (e / (_F32(0.0001) + e.sum(axis=0, dtype=_F32))).astype(_F32)
    return w


def _shortcut(g, l, x, params, eps, ctx):
    o = l.options
    weights = _shortcut_weights(l, params) if "weights" in params else None
    c = l.out_shape[0]

    def weighted(t, k):
        if weights is None:
            return t
        wk = weights[k]
        return g.op("Mul", [t, g.const(wk.reshape(1, -1, 1, 1) if wk.size > 1 else wk.reshape(()))])

    y = weighted(x, 0)
    out_size = math.prod(l.out_shape)
    for k, ref in enumerate(o["from"]):
        src = ctx.outputs[ref]
        src_shape = ctx.desc.layers[ref].out_shape
        if tuple(src_shape) != tuple(l.out_shape):
            # Darknet adds the overlapping flat prefix of a source of another size (zero beyond it).
            ctx.fixed_size(l, f"it adds layer {ref} of another size")
            size = math.prod(src_shape)
            flat = g.op("Reshape", [src, g.ints([0, -1])])
            if size > out_size:
                flat = g.op("Slice", [flat, g.ints([0]), g.ints([out_size]), g.ints([1])])
            elif size < out_size:
                flat = g.op("Pad", [flat, g.ints([0, 0, 0, out_size - size])])
            src = g.op("Reshape", [flat, g.ints([0, c, l.out_shape[1], l.out_shape[2]])])
        y = g.op("Add", [y, weighted(src, k + 1)])
    return _activate(g, y, o["activation"])


def _upsample(g, l, x, params, eps, ctx):
    o = l.options
    s, scale = o["stride"], o["scale"]
    if o["reverse"]:
        c = l.in_shape[0]
        kernel = np.full((c, 1, s, s), scale, _F32)
        return g.op("Conv", [x, g.const(kernel)], kernel_shape=[s, s], strides=[s, s], group=c)
    y = g.op(
        "Resize",
        [x, "", g.const(np.array([1, 1, s, s], _F32))],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    return y if scale == 1.0 else g.op("Mul", [y, g.scalar(scale)])


def _yolo(g, l, x, params, eps, ctx):
    o = l.options
    per = 5 + o["classes"]
    entry = np.arange(len(o["mask"]) * per) % per
    y = x
    if not o["new_coords"]:
        logistic = ((entry < 2) | (entry >= 4)).reshape(1, -1, 1, 1)
        y = g.where(g.const(logistic, np.bool_), g.op("Sigmoid", [x]), x)
    s = o["scale_x_y"]
    if s != 1.0:
        xy = (entry < 2).reshape(1, -1, 1, 1)
        y = g.op("Mul", [y, g.const(np.where(xy, _F32(s), _F32(1)))])
        y = g.op("Sub", [y, g.const(np.where(xy, _F32(0.5) * (_F32(s) - _F32(1)), _F32(0)))])
    return y


def _softmax(g, l, x, params, eps, ctx):
    o = l.options
    t = o["temperature"]
    scaled = x if t == 1.0 else g.op("Div", [x, g.scalar(t)])
    grouped = g.op("Reshape", [scaled, g.ints([0, o["groups"], -1])])
    out = g.op("Softmax", [grouped], axis=2)
    return g.op("Reshape", [out, g.op("Shape", [x])])


def _identity(g, l, x, params, eps, ctx):
    return x


def _sam(g, l, x, params, eps, ctx):
    return _activate(g, g.op("Mul", [x, ctx.outputs[l.options["from"]]]), l.options["activation"])


def _scale_channels(g, l, x, params, eps, ctx):
    o = l.options
    fc, fh, fw = l.out_shape
    want = (1, fh, fw) if o["scale_wh"] else (fc, 1, 1)
    factors = x
    if tuple(l.in_shape) != want:
        ctx.fixed_size(l, "its input must be reshaped to the scaled layer's size")
        factors = g.op("Reshape", [x, g.ints([0, *want])])
    return _activate(g, g.op("Mul", [ctx.outputs[o["from"]], factors]), o["activation"])


def _reorg3d(g, l, x, params, eps, ctx):
    o = l.options
    s = o["stride"]
    if not o["reverse"]:
        return g.op("SpaceToDepth", [x], blocksize=s)
    # The engine's reverse reorg (Darknet's reorg with the output sizes): a fixed permutation of each image.
    ctx.fixed_size(l, "reverse=1 is a permutation fixed by the input size")
    c, h, w = l.out_shape
    groups = c // (s * s)
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    src = i + w * (j + h * k)
    dst = (i * s + (k // groups) % s) + w * s * ((j * s + (k // groups) // s) + h * s * (k % groups))
    index = np.empty(c * h * w, np.int64)
    index[dst.ravel()] = src.ravel()
    flat = g.op("Reshape", [x, g.ints([0, -1])])
    moved = g.op("Gather", [flat, g.ints(index)], axis=1)
    return g.op("Reshape", [moved, g.ints([0, c, h, w])])


def _batchnorm(g, l, x, params, eps, ctx):
    factor, shift = _fold_bn(params, eps, l.out_shape[0])
    y = g.op("Mul", [x, g.const(factor.astype(_F32).reshape(1, -1, 1, 1))])
    return g.op("Add", [y, g.const(shift.reshape(1, -1, 1, 1))])


_CONVERTERS = {
    "convolutional": _conv,
    "connected": _connected,
    "maxpool": _maxpool,
    "local_avgpool": _local_avgpool,
    "avgpool": _avgpool,
    "route": _route,
    "shortcut": _shortcut,
    "upsample": _upsample,
    "yolo": _yolo,
    "softmax": _softmax,
    "dropout": _identity,
    "cost": _identity,
    "empty": _identity,
    "sam": _sam,
    "scale_channels": _scale_channels,
    "reorg3d": _reorg3d,
    "batchnorm": _batchnorm,
}


class _Context:
    def __init__(self, desc, dynamic_size):
        self.desc = desc
        self.dynamic_size = dynamic_size
        self.outputs = []

    def error(self, l, problem):
        return ExportError(f"{self.desc.path}:{l.line}: layer {l.index} [{l.type}]: {problem}")

    def fixed_size(self, l, why):
        if self.dynamic_size:
            raise self.error(l, f"cannot be exported with a dynamic input size: {why}; export with a fixed size")


# ----- decoding and NMS --------------------------------------------------------------------------------------
def _decode_head(g, y, opts, net_w, net_h):
    """One [yolo] output (N, A*(5+C), H, W) -> boxes (N, H*W*A, 4) xyxy in input pixels, scores (N, H*W*A, C)."""
    a, per = len(opts["mask"]), 5 + opts["classes"]
    r = g.op("Transpose", [g.op("Reshape", [y, g.ints([0, a, per, -1])])], perm=[0, 3, 1, 2])  # (N, HW, A, 5+C)

    def entries(start, end):
        return g.op("Slice", [r, g.ints([start]), g.ints([end]), g.ints([3])])

    tx, ty, tw, th, obj, cls = (
        entries(0, 1),
        entries(1, 2),
        entries(2, 3),
        entries(3, 4),
        entries(4, 5),
        entries(5, per),
    )
    shape = g.op("Shape", [y])
    h = g.op("Gather", [shape, g.ints(2)], axis=0)  # scalars
    w = g.op("Gather", [shape, g.ints(3)], axis=0)
    cells = g.op("Range", [g.ints(0), g.op("Mul", [h, w]), g.ints(1)])
    col = g.op("Cast", [g.op("Mod", [cells, w])], to=g.onnx.TensorProto.FLOAT)
    row = g.op("Cast", [g.op("Div", [cells, w])], to=g.onnx.TensorProto.FLOAT)
    col, row = g.unsqueeze(col, [0, 2, 3]), g.unsqueeze(row, [0, 2, 3])  # (1, HW, 1, 1)
    wf = g.op("Cast", [w], to=g.onnx.TensorProto.FLOAT)
    hf = g.op("Cast", [h], to=g.onnx.TensorProto.FLOAT)
    bx = g.op("Div", [g.op("Add", [col, tx]), wf])
    by = g.op("Div", [g.op("Add", [row, ty]), hf])
    anchors = opts["anchors"]
    aw = g.const(np.array([anchors[2 * m] for m in opts["mask"]], _F32).reshape(1, 1, a, 1))
    ah = g.const(np.array([anchors[2 * m + 1] for m in opts["mask"]], _F32).reshape(1, 1, a, 1))
    if opts["new_coords"]:
        bw = g.op("Mul", [g.op("Mul", [g.op("Mul", [tw, tw]), g.scalar(4.0)]), aw])
        bh = g.op("Mul", [g.op("Mul", [g.op("Mul", [th, th]), g.scalar(4.0)]), ah])
    else:
        bw = g.op("Mul", [g.op("Exp", [tw]), aw])
        bh = g.op("Mul", [g.op("Exp", [th]), ah])
    # (bx, by) relative to the grid; bw, bh already in input pixels
    cx, cy = g.op("Mul", [bx, net_w]), g.op("Mul", [by, net_h])
    half_w, half_h = g.op("Mul", [bw, g.scalar(0.5)]), g.op("Mul", [bh, g.scalar(0.5)])
    box = g.op(
        "Concat",
        [
            g.op("Sub", [cx, half_w]),
            g.op("Sub", [cy, half_h]),
            g.op("Add", [cx, half_w]),
            g.op("Add", [cy, half_h]),
        ],
        axis=3,
    )
    scores = g.op("Mul", [obj, cls])
    return g.op("Reshape", [box, g.ints([0, -1, 4])]), g.op("Reshape", [scores, g.ints([0, -1, opts["classes"]])])


def _decode(g, heads, desc, image):
    net_w = g.op("Cast", [g.dim(image, 3)], to=g.onnx.TensorProto.FLOAT)
    net_h = g.op("Cast", [g.dim(image, 2)], to=g.onnx.TensorProto.FLOAT)
    boxes, scores = [], []
    for index, y in heads:
        b, s = _decode_head(g, y, desc.layers[index].options, net_w, net_h)
        boxes.append(b)
        scores.append(s)
    if len(boxes) == 1:
        return boxes[0], scores[0]
    return g.op("Concat", boxes, axis=1), g.op("Concat", scores, axis=1)


def _nms(g, boxes, scores, thresh, nms, max_per_class):
    selected = g.op(
        "NonMaxSuppression",
        [
            boxes,
            g.op("Transpose", [scores], perm=[0, 2, 1]),
            g.ints([max_per_class]),
            g.const(np.array([nms], _F32)),
            g.const(np.array([thresh], _F32)),
        ],
        center_point_box=0,
    )  # (M, 3): batch, class, box
    batch = g.op("Slice", [selected, g.ints([0]), g.ints([1]), g.ints([1])])
    cls = g.op("Slice", [selected, g.ints([1]), g.ints([2]), g.ints([1])])
    box = g.op("Slice", [selected, g.ints([2]), g.ints([3]), g.ints([1])])
    picked = g.op("GatherND", [boxes, g.op("Concat", [batch, box], axis=1)])  # (M, 4)
    score = g.op("GatherND", [scores, g.op("Concat", [batch, box, cls], axis=1)])  # (M,)
    flt = g.onnx.TensorProto.FLOAT
    return g.op(
        "Concat",
        [g.op("Cast", [batch], to=flt), picked, g.unsqueeze(score, [1]), g.op("Cast", [cls], to=flt)],
        axis=1,
        outputs=["detections"],
    )


# ----- the model ---------------------------------------------------------------------------------------------
def _check_options(opset, batch, outputs, thresh, nms):
    if not isinstance(opset, int) or not OPSET_MIN <= opset <= OPSET_MAX:
        raise ExportError(f"opset {opset!r} is not supported; use {OPSET_MIN} to {OPSET_MAX} (default {DEFAULT_OPSET})")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be a positive int (fixed) or None (dynamic); got {batch!r}")
    if outputs not in OUTPUTS:
        raise ExportError(f"outputs must be one of {', '.join(OUTPUTS)}; got {outputs!r}")
    for name, value in (("thresh", thresh), ("nms", nms)):
        if not 0 <= value <= 1:
            raise ExportError(f"{name} must be in [0, 1]; got {value}")


def build_model(
    net,
    *,
    opset: int = DEFAULT_OPSET,
    batch: Optional[int] = 1,
    dynamic_size: bool = False,
    fp16: bool = False,
    outputs: str = "raw",
    thresh: float = 0.25,
    nms: float = 0.45,
    max_per_class: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    layer_outputs: bool = False,
):
    """The ONNX ModelProto of ``net`` (see the module doc for the options) and its serialized bytes, checked with
    ``onnx.checker`` (full check, strict shape inference) and the inferred output shapes. ``layer_outputs`` adds
    every layer's output as ``layer_<index>`` after the regular outputs (to compare with ``net.forward_all``)."""
    onnx = _onnx()
    _check_options(opset, batch, outputs, thresh, nms)
    desc = net.desc
    if outputs != "raw" and not desc.yolo_layers:
        raise ExportError(f"{desc.path}: outputs={outputs!r} needs [yolo] layers; this network has none (use 'raw')")
    g = _Graph(onnx, opset, fp16)
    ctx = _Context(desc, dynamic_size)
    c, h, w = desc.input_shape
    dims = [batch if batch is not None else "batch", c, "height" if dynamic_size else h, "width" if dynamic_size else w]
    image = "images"
    flat = np.asarray(net.params)
    eps = net.bn_epsilon
    x = image
    for l in desc.layers:
        g.layer = l
        if l.type not in _CONVERTERS:
            raise ctx.error(l, "this layer type has no ONNX form")
        params = {t.name: flat[t.offset : t.offset + t.size].reshape(t.shape) for t in l.tensors}
        try:
            x = _CONVERTERS[l.type](g, l, x, params, eps, ctx)
        except ExportError as e:
            if str(e).startswith(desc.path):
                raise
            raise ctx.error(l, str(e)) from None
        ctx.outputs.append(x)
    g.layer = None

    out_infos = []
    heads = [(i, ctx.outputs[i]) for i in desc.yolo_layers]
    batch_dim = batch if batch is not None else "batch"
    if outputs == "raw":
        chosen = heads or [(len(desc.layers) - 1, ctx.outputs[-1])]
        for i, t in chosen:
            name = f"yolo_{i}" if heads else "output"
            g.op("Identity", [t], outputs=[name])
            oc, oh, ow = desc.layers[i].out_shape
            shape = [batch_dim, oc, f"h{i}" if dynamic_size else oh, f"w{i}" if dynamic_size else ow]
            out_infos.append(g.h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    else:
        boxes, scores = _decode(g, heads, desc, image)
        classes = desc.layers[heads[0][0]].options["classes"]
        k = None if dynamic_size else sum(desc.layers[i].out_size // (5 + classes) for i, _ in heads)
        if outputs == "decoded":
            g.op("Identity", [boxes], outputs=["boxes"])
            g.op("Identity", [scores], outputs=["scores"])
            out_infos.append(g.h.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, [batch_dim, k or "K", 4]))
            out_infos.append(
                g.h.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [batch_dim, k or "K", classes])
            )
        else:
            kind = desc.layers[heads[-1][0]].options.get("nms_kind", "default")
            if kind not in ("default", "cornersnms"):
                warnings.warn(
                    f"{desc.path}: the cfg asks for nms_kind={kind} (DIoU); ONNX NonMaxSuppression in the exported "
                    f"file measures plain IoU (Darknet's nms_kind=default), so a few overlapping boxes may differ",
                    stacklevel=3,
                )
            per_class = max_per_class if max_per_class is not None else (k or 10000)
            _nms(g, boxes, scores, thresh, nms, int(per_class))
            out_infos.append(g.h.make_tensor_value_info("detections", onnx.TensorProto.FLOAT, ["M", 7]))

    if layer_outputs:  # every layer's output too, for checking an export layer by layer against net.forward_all
        for l, t in zip(desc.layers, ctx.outputs):
            g.op("Identity", [t], outputs=[f"layer_{l.index}"])
            c_i, h_i, w_i = l.out_shape
            shape = [batch_dim, c_i] + ([f"h{l.index}", f"w{l.index}"] if dynamic_size else [h_i, w_i])
            out_infos.append(g.h.make_tensor_value_info(f"layer_{l.index}", onnx.TensorProto.FLOAT, shape))
    inputs = [g.h.make_tensor_value_info(image, onnx.TensorProto.FLOAT, dims)]
    model = _make_model(g, inputs, out_infos)
    # The same graph with the initializers declared as typed inputs instead: shape inference on it gives the
    # output shapes without copying the weights again.
    skeleton = _make_model(
        g, inputs + [g.h.make_tensor_value_info(n, _dtype(onnx, a), a.shape) for n, a in g.inits], out_infos
    )
    for name, array in g.inits:  # written straight into the model: no intermediate TensorProto copies
        t = model.graph.initializer.add()
        t.name = name
        t.data_type = _dtype(onnx, array)
        t.dims.extend(array.shape)
        t.raw_data = array.tobytes()
    model.doc_string = f"{desc.path} exported by pydarknet: input 'images' (N, {c}, H, W) float32 RGB in [0, 1]"
    meta = {
        "cfg": str(desc.path),
        "outputs": outputs,
        "letter_box": str(int(desc.net.get("letter_box", 0))),
        "input_width": str(w),
        "input_height": str(h),
    }
    if outputs == "nms":
        meta.update(thresh=f"{thresh:g}", nms=f"{nms:g}")
    if names is not None:
        meta["names"] = "\n".join(str(n) for n in names)
    onnx.helper.set_model_props(model, meta)
    data = model.SerializeToString()
    _check(onnx, model, skeleton, data, desc)
    return model, data


def _dtype(onnx, array):
    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def _make_model(g, inputs, outputs):
    model = g.h.make_model(
        g.h.make_graph(g.nodes, "pydarknet", inputs, outputs),
        opset_imports=[g.h.make_opsetid("", g.opset)],
        producer_name="pydarknet",
        producer_version=_version(),
    )
    # The IR version of the opset, so that runtimes that predate the newest onnx package still load the file.
    model.ir_version = min(g.onnx.IR_VERSION, _ir_version(g.onnx, g.opset))
    return model


def _version():
    from pydarknet import __version__

    return __version__


def _ir_version(onnx, opset):
    for _, ir, op, *_ in onnx.helper.VERSION_TABLE:
        if op == opset:
            return ir
    return onnx.IR_VERSION


def _check(onnx, model, skeleton, data, desc):
    """onnx.checker with full_check (strict shape inference) on the serialized model, then the inferred output
    shapes against the ones declared from the network description."""
    if len(data) >= (2 << 30) - (1 << 20):
        raise ExportError(f"{desc.path}: the model is over 2 GB, more than one ONNX protobuf file can hold")
    try:
        onnx.checker.check_model(data, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{desc.path}: the exported graph does not pass onnx.checker: {e}") from None
    for declared, got in zip(model.graph.output, inferred.graph.output):
        want = [d.dim_value or d.dim_param for d in declared.type.tensor_type.shape.dim]
        have = [d.dim_value or d.dim_param for d in got.type.tensor_type.shape.dim]
        if len(want) != len(have) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(want, have)
        ):
            raise ExportError(f"{desc.path}: output {declared.name}: shape inference gives {have}, the network {want}")


def to_onnx(
    net,
    path: Union[str, os.PathLike, None] = None,
    *,
    opset: int = DEFAULT_OPSET,
    batch: Optional[int] = 1,
    dynamic_size: bool = False,
    fp16: bool = False,
    outputs: str = "raw",
    thresh: float = 0.25,
    nms: float = 0.45,
    max_per_class: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
):
    """Export ``net`` as ONNX (see the module doc); writes ``path`` atomically when given; returns the ModelProto.

    ``opset``: 13 to 21 (default 17). ``batch``: an int fixes the batch size, None makes it dynamic.
    ``dynamic_size``: symbolic height and width. ``fp16``: weights stored as float16. ``outputs``: ``"raw"``
    (net.forward's heads), ``"decoded"`` (boxes and scores) or ``"nms"`` (final detections, NMS in the graph with
    ``thresh`` and ``nms``; ``max_per_class`` boxes per class and image, default all). ``names``: class names stored
    in the file's metadata (default: ``net.names`` when set)."""
    if names is None:
        names = getattr(net, "names", None)
    model, data = build_model(
        net,
        opset=opset,
        batch=batch,
        dynamic_size=dynamic_size,
        fp16=fp16,
        outputs=outputs,
        thresh=thresh,
        nms=nms,
        max_per_class=max_per_class,
        names=names,
    )
    if path is not None:
        from pydarknet.utils.atomic import atomic_write

        atomic_write(path, lambda f: f.write(data))
    return model
