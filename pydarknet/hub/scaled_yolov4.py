"""Scaled-YOLOv4 large models (P5, P6, P7) as their PyTorch code builds them, and the same networks as Darknet cfgs.

The authors' PyTorch code (WongKinYiu/ScaledYOLOv4, branch yolov4-large) describes each model as a list of modules
``(from, repeats, module, args)`` scaled by a width and a depth multiple; Darknet has P5 and P6 cfgs only. This module
holds our own description of the three networks (:data:`SPECS`), follows the same construction rules (channels =
``args[0] * width`` rounded up to a multiple of 8, repeats = ``round(n * depth)``), and derives from a description:

* :func:`state_dict_shapes` - every tensor of the PyTorch model with its name (``model.<i>.cv1.conv.weight``...),
* :func:`layout` - the Darknet layers that compute exactly the same function, each with the checkpoint tensors that
  fill it (how a checkpoint is converted: :mod:`pydarknet.hub.convert`),
* :func:`cfg_text` - that layout written as a Darknet cfg (``cfg/yolov4-p7.cfg`` is its output for P7),
* :func:`pytorch_counts` - the PyTorch model's learnable parameters and FLOPs computed from the modules themselves.

Module semantics (models/common.py): ``Conv`` = conv (no bias) + BatchNorm + Mish. ``BottleneckCSP`` (c2, n):
``c_ = c2/2``; ``y1 = cv3(m(cv1(x)))`` with cv3 a bare 1x1 conv, ``y2 = cv2(x)`` a bare 1x1 conv, output
``cv4(mish(bn(cat(y1, y2))))``, m = n residual bottlenecks (1x1 Conv, 3x3 Conv, add). ``BottleneckCSP2`` (c2, n):
``c_ = c2``; ``x1 = cv1(x)``, ``y1 = m(x1)`` (n bottlenecks without the residual add), ``y2 = cv2(x1)`` bare,
output ``cv3(mish(bn(cat(y1, y2))))``. ``SPPCSP`` (c2): ``x1 = cv4(cv3(cv1(x)))`` (1x1, 3x3, 1x1 Convs),
``y1 = cv6(cv5(cat(x1, mp5(x1), mp9(x1), mp13(x1))))``, ``y2 = cv2(x)`` bare, output ``cv7(mish(bn(cat(y1, y2))))``.
``Detect``: one 1x1 conv with bias per level, decoded as Darknet's ``new_coords=1, scale_x_y=2``.

Darknet form. A batch-norm over a concatenation is per channel, so it splits into the two halves. Where a half
follows a bare conv (CSP's cv2 and cv3, CSP2's and SPPCSP's cv2) the conv becomes a Darknet ``[convolutional]``
with ``batch_normalize=1, activation=mish``. Where it follows a complete Conv (CSP2's last bottleneck, SPPCSP's
cv6) the PyTorch model normalises and activates a second time; Darknet has no layer for batch-norm + Mish without a
convolution, so the cfg spells it as ``[batchnorm]`` holding half the scale and shift, then ``[shortcut] from=-1
activation=mish`` (``mish(x + x)`` = ``mish(2 x)``: doubling is exact in floating point). Both carry no weights beyond
the batch-norm's, so the cfg's parameter count is the PyTorch one. (Darknet's own yolov4-p5/p6 cfgs leave this second
normalisation out; they are not the same function as the released ``.pt`` models.) The layer order follows those
cfgs: a CSP block starts with its bypass conv, SPPCSP concatenates the pools as ``mp13, mp9, mp5, x1`` (the converter
permutes cv5's input channels) and the 3x3 head convs come at the end, each before its detector conv and ``[yolo]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from pydarknet.errors import ModelError

__all__ = [
    "SPECS",
    "Node",
    "DLayer",
    "Source",
    "build_nodes",
    "state_dict_shapes",
    "layout",
    "cfg_text",
    "pytorch_counts",
    "spec_from_yaml",
]

_P3_P5 = [
    (-1, 1, "Conv", [32, 3, 1]),  # 0
    (-1, 1, "Conv", [64, 3, 2]),  # 1  P1/2
    (-1, 1, "BottleneckCSP", [64]),
    (-1, 1, "Conv", [128, 3, 2]),  # 3  P2/4
    (-1, 3, "BottleneckCSP", [128]),
    (-1, 1, "Conv", [256, 3, 2]),  # 5  P3/8
    (-1, 15, "BottleneckCSP", [256]),
    (-1, 1, "Conv", [512, 3, 2]),  # 7  P4/16
    (-1, 15, "BottleneckCSP", [512]),
    (-1, 1, "Conv", [1024, 3, 2]),  # 9  P5/32
    (-1, 7, "BottleneckCSP", [1024]),
]
_P6 = [(-1, 1, "Conv", [1024, 3, 2]), (-1, 7, "BottleneckCSP", [1024])]  # P6/64
_P7 = [(-1, 1, "Conv", [1024, 3, 2]), (-1, 7, "BottleneckCSP", [1024])]  # P7/128


def _top_down(levels: Sequence[Tuple[int, int]], first: int) -> list:
    """The FPN path from the SPPCSP down: per level (backbone CSP index, channels) a 1x1 Conv, upsample, a 1x1 Conv
    of the backbone feature, concat and a CSP2. ``first`` is the index the SPPCSP will have."""
    rows = []
    index = first + 1
    for backbone, channels in levels:
        rows += [
            (-1, 1, "Conv", [channels, 1, 1]),
            (-1, 1, "Upsample", [None, 2, "nearest"]),
            (backbone - (index + 2), 1, "Conv", [channels, 1, 1]),
            ([-1, -2], 1, "Concat", [1]),
            (-1, 3, "BottleneckCSP2", [channels]),
        ]
        index += 5
    return rows


def _spec(name, width, anchors, backbone, levels, pan):
    """levels: the FPN levels top-down (backbone CSP index, channels); pan: per upward PAN stage
    (channels of the down-sampling conv and CSP2, channels of the head conv)."""
    first = len(backbone)
    head = [(-1, 1, "SPPCSP", [512])] + _top_down(levels, first)
    # The P3 output of the FPN feeds the first head conv; then each PAN stage goes one level up.
    csp2 = [first] + [first + 5 * (k + 1) for k in range(len(levels))]  # SPPCSP and the FPN CSP2s, top-down
    head_outputs = []
    head.append((-1, 1, "Conv", [256, 3, 1]))
    head_outputs.append(first + len(head) - 1)
    for k, (channels, head_channels) in enumerate(pan):
        target = csp2[-(k + 2)]  # the FPN output at this level
        head += [
            (-2, 1, "Conv", [channels, 3, 2]),
            ([-1, target], 1, "Concat", [1]),
            (-1, 3, "BottleneckCSP2", [channels]),
            (-1, 1, "Conv", [head_channels, 3, 1]),
        ]
        head_outputs.append(first + len(head) - 1)
    head.append((head_outputs, 1, "Detect", ["nc", "anchors"]))
    return {
        "name": name,
        "nc": 80,
        "depth_multiple": 1.0,
        "width_multiple": width,
        "anchors": anchors,
        "backbone": backbone,
        "head": head,
    }


SPECS: Dict[str, dict] = {
    "p5": _spec(
        "yolov4-p5",
        1.0,
        [
            [13, 17, 31, 25, 24, 51, 61, 45],
            [48, 102, 119, 96, 97, 189, 217, 184],
            [171, 384, 324, 451, 616, 618, 800, 800],
        ],
        _P3_P5,
        [(8, 256), (6, 128)],
        [(256, 512), (512, 1024)],
    ),
    "p6": _spec(
        "yolov4-p6",
        1.0,
        [
            [13, 17, 31, 25, 24, 51, 61, 45],
            [61, 45, 48, 102, 119, 96, 97, 189],
            [97, 189, 217, 184, 171, 384, 324, 451],
            [324, 451, 545, 357, 616, 618, 1024, 1024],
        ],
        _P3_P5 + _P6,
        [(10, 512), (8, 256), (6, 128)],
        [(256, 512), (512, 1024), (512, 1024)],
    ),
    "p7": _spec(
        "yolov4-p7",
        1.25,
        [
            [13, 17, 22, 25, 27, 66, 55, 41],
            [57, 88, 112, 69, 69, 177, 136, 138],
            [136, 138, 287, 114, 134, 275, 268, 248],
            [268, 248, 232, 504, 445, 416, 640, 640],
            [812, 393, 477, 808, 1070, 908, 1408, 1408],
        ],
        _P3_P5 + _P6 + _P7,
        [(12, 512), (10, 512), (8, 256), (6, 128)],
        [(256, 512), (512, 1024), (512, 1024), (512, 1024)],
    ),
}
NATIVE_SIZE = {"p5": 896, "p6": 1280, "p7": 1536}


# ----- the PyTorch module graph ----------------------------------------------------------------------------
@dataclass
class Node:
    """One entry of the model list after scaling: ``model.<index>``."""

    index: int
    module: str
    inputs: List[int]  # absolute indices (-1 = the image)
    c1: int
    c2: int
    n: int = 1
    kernel: int = 1
    stride: int = 1
    scale: int = 1  # input size / output size


def _divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def spec_from_yaml(yaml: dict, where: str = "checkpoint") -> dict:
    """A description in :data:`SPECS` form from the ``yaml`` dict a ScaledYOLOv4 Model object carries."""
    try:
        rows = list(yaml["backbone"]) + list(yaml["head"])
        spec = {
            "name": str(yaml.get("name", "scaled-yolov4")),
            "nc": int(yaml["nc"]),
            "depth_multiple": float(yaml["depth_multiple"]),
            "width_multiple": float(yaml["width_multiple"]),
            "anchors": [list(a) for a in yaml["anchors"]],
            "backbone": [],
            "head": [],
        }
        for f, n, m, args in rows:
            m = str(m).split(".")[-1]
            (spec["backbone"] if len(spec["backbone"]) < len(yaml["backbone"]) else spec["head"]).append(
                (f, int(n), m, list(args))
            )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{where}: the model description (yaml) is not a ScaledYOLOv4 one: {e!r}") from None
    return spec


def build_nodes(spec: dict) -> List[Node]:
    """Scale the description as the PyTorch code's parse_model does and resolve the inputs of every module."""
    gw, gd = spec["width_multiple"], spec["depth_multiple"]
    na = len(spec["anchors"][0]) // 2
    nodes: List[Node] = []
    channels: List[int] = []
    scales: List[int] = []
    for i, (f, n, m, args) in enumerate(spec["backbone"] + spec["head"]):
        refs = [f] if isinstance(f, int) else list(f)
        inputs = [r if r >= 0 else i + r for r in refs]
        if any(r >= i for r in inputs) or any(r < -1 for r in inputs):
            raise ModelError(f"module {i} ({m}) reads from {f}, which is not an earlier module")
        c_in = [3 if r == -1 else channels[r] for r in inputs]
        s_in = [1 if r == -1 else scales[r] for r in inputs]
        n = max(round(n * gd), 1) if n > 1 else n
        node = Node(i, m, inputs, c_in[0], c_in[0], n=n, scale=s_in[0])
        if m in ("Conv", "BottleneckCSP", "BottleneckCSP2", "SPPCSP"):
            node.c2 = _divisible(args[0] * gw)
            if m == "Conv":
                node.kernel = int(args[1]) if len(args) > 1 else 1
                node.stride = int(args[2]) if len(args) > 2 else 1
                node.scale *= node.stride
        elif m == "Upsample":
            node.scale //= int(args[1])
        elif m == "Concat":
            if len(set(s_in)) != 1:
                raise ModelError(f"module {i} concatenates features of different sizes")
            node.c2 = sum(c_in)
        elif m == "Detect":
            node.c2 = na * (spec["nc"] + 5)
        else:
            raise ModelError(f"module {i}: {m} is not a module of the ScaledYOLOv4 large models")
        nodes.append(node)
        channels.append(node.c2)
        scales.append(node.scale)
    if nodes[-1].module != "Detect":
        raise ModelError("the last module is not Detect")
    return nodes


def _conv_tensors(prefix, c1, c2, k, bn=True) -> List[Tuple[str, tuple]]:
    rows = [(f"{prefix}.weight" if not bn else f"{prefix}.conv.weight", (c2, c1, k, k))]
    if bn:
        rows += [(f"{prefix}.bn.{t}", (c2,)) for t in ("weight", "bias", "running_mean", "running_var")]
    return rows


def _bn_tensors(prefix, c) -> List[Tuple[str, tuple]]:
    return [(f"{prefix}.{t}", (c,)) for t in ("weight", "bias", "running_mean", "running_var")]


def state_dict_shapes(spec: dict) -> Dict[str, tuple]:
    """Name -> shape of every parameter and batch-norm statistic of the PyTorch model (its state_dict without
    ``num_batches_tracked`` and the Detect anchor buffers)."""
    out: Dict[str, tuple] = {}
    nodes = build_nodes(spec)
    for node in nodes:
        p, c1, c2 = f"model.{node.index}", node.c1, node.c2
        rows: List[Tuple[str, tuple]] = []
        if node.module == "Conv":
            rows = _conv_tensors(p, c1, c2, node.kernel)
        elif node.module in ("BottleneckCSP", "BottleneckCSP2"):
            c_ = c2 // 2 if node.module == "BottleneckCSP" else c2
            rows += _conv_tensors(f"{p}.cv1", c1, c_, 1)
            if node.module == "BottleneckCSP":
                rows += _conv_tensors(f"{p}.cv2", c1, c_, 1, bn=False)
                rows += _conv_tensors(f"{p}.cv3", c_, c_, 1, bn=False)
                rows += _conv_tensors(f"{p}.cv4", 2 * c_, c2, 1)
            else:
                rows += _conv_tensors(f"{p}.cv2", c_, c_, 1, bn=False)
                rows += _conv_tensors(f"{p}.cv3", 2 * c_, c2, 1)
            rows += _bn_tensors(f"{p}.bn", 2 * c_)
            for j in range(node.n):
                rows += _conv_tensors(f"{p}.m.{j}.cv1", c_, c_, 1) + _conv_tensors(f"{p}.m.{j}.cv2", c_, c_, 3)
        elif node.module == "SPPCSP":
            c_ = c2
            rows += _conv_tensors(f"{p}.cv1", c1, c_, 1) + _conv_tensors(f"{p}.cv2", c1, c_, 1, bn=False)
            rows += _conv_tensors(f"{p}.cv3", c_, c_, 3) + _conv_tensors(f"{p}.cv4", c_, c_, 1)
            rows += _conv_tensors(f"{p}.cv5", 4 * c_, c_, 1) + _conv_tensors(f"{p}.cv6", c_, c_, 3)
            rows += _bn_tensors(f"{p}.bn", 2 * c_) + _conv_tensors(f"{p}.cv7", 2 * c_, c2, 1)
        elif node.module == "Detect":
            for k, r in enumerate(node.inputs):
                rows += [(f"{p}.m.{k}.weight", (node.c2, nodes[r].c2, 1, 1)), (f"{p}.m.{k}.bias", (node.c2,))]
        out.update(rows)
    return out


def pytorch_counts(spec: dict, size: int) -> Tuple[int, float]:
    """(learnable parameters, FLOPs) of the PyTorch model at a ``size`` x ``size`` input, from its modules: every
    weight, bias and batch-norm weight and bias (``sum(p.numel() for p in model.parameters())``), and FLOPs counted
    as Darknet counts them (2 per multiply-add of each convolution, k*k per output of each max-pool)."""
    nodes = build_nodes(spec)
    params = sum(
        math.prod(shape)
        for name, shape in state_dict_shapes(spec).items()
        if not name.endswith(("running_mean", "running_var"))
    )
    flops = 0.0

    def conv(c1, c2, k, hw):
        return 2.0 * c1 * c2 * k * k * hw

    for node in nodes:
        hw = (size // node.scale) ** 2
        c1, c2 = node.c1, node.c2
        if node.module == "Conv":
            flops += conv(c1, c2, node.kernel, hw)
        elif node.module == "BottleneckCSP":
            c_ = c2 // 2
            flops += conv(c1, c_, 1, hw) * 2 + conv(c_, c_, 1, hw) + conv(2 * c_, c2, 1, hw)
            flops += node.n * (conv(c_, c_, 1, hw) + conv(c_, c_, 3, hw))
        elif node.module == "BottleneckCSP2":
            c_ = c2
            flops += conv(c1, c_, 1, hw) + conv(c_, c_, 1, hw) + conv(2 * c_, c2, 1, hw)
            flops += node.n * (conv(c_, c_, 1, hw) + conv(c_, c_, 3, hw))
        elif node.module == "SPPCSP":
            c_ = c2
            flops += conv(c1, c_, 1, hw) * 2 + conv(c_, c_, 3, hw) * 2 + conv(c_, c_, 1, hw)
            flops += conv(4 * c_, c_, 1, hw) + conv(2 * c_, c2, 1, hw)
            flops += sum(k * k * c_ * hw for k in (5, 9, 13))
        elif node.module == "Detect":
            for r in node.inputs:
                flops += conv(nodes[r].c2, c2, 1, (size // nodes[r].scale) ** 2)
    return params, flops


# ----- the Darknet layout ----------------------------------------------------------------------------------
@dataclass
class Source:
    """Where a Darknet layer's parameters come from in the checkpoint.

    ``weight``: the conv weight tensor; ``in_blocks``: a permutation of equal input-channel blocks (Darknet block k
    holds PyTorch block ``in_blocks[k]``); ``bias``: the conv bias (a layer without batch-norm); ``bn``: the prefix of
    the batch-norm (``<bn>.weight`` ...) with the channel range this layer takes and a factor on its scale and shift.
    """

    weight: Optional[str] = None
    in_blocks: Optional[List[int]] = None
    bias: Optional[str] = None
    bn: Optional[str] = None
    bn_range: Optional[Tuple[int, int]] = None
    bn_factor: float = 1.0


@dataclass
class DLayer:
    section: str
    options: Dict[str, object] = field(default_factory=dict)
    refs: Dict[str, List[int]] = field(default_factory=dict)  # key -> absolute layer indices (route/shortcut)
    source: Optional[Source] = None
    comment: str = ""


class _Builder:
    def __init__(self):
        self.layers: List[DLayer] = []

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def add(self, section, source=None, refs=None, comment="", **options) -> int:
        self.layers.append(DLayer(section, dict(options), dict(refs or {}), source, comment))
        return self.last

    def conv(self, filters, size, source, stride=1, comment="", bn=True, activation="mish"):
        options = {"batch_normalize": 1} if bn else {}
        options.update(filters=filters, size=size, stride=stride, pad=1, activation=activation)
        return self.add("convolutional", source, comment=comment, **options)

    def route(self, *refs, comment=""):
        return self.add("route", refs={"layers": list(refs)}, comment=comment)

    def read(self, index):
        """Make ``index`` the current input (a route unless it already is the last layer)."""
        if index != self.last:
            self.route(index)


def _conv_src(prefix):
    return Source(weight=f"{prefix}.conv.weight", bn=f"{prefix}.bn")


def layout(spec: dict) -> List[DLayer]:
    """The Darknet layers of the model, in cfg order, each with the checkpoint tensors that fill it."""
    nodes = build_nodes(spec)
    consumers: Dict[int, List[int]] = {}
    for node in nodes:
        for r in node.inputs:
            consumers.setdefault(r, []).append(node.index)
    detect = nodes[-1]
    deferred = {r for r in detect.inputs if consumers.get(r) == [detect.index] and nodes[r].module == "Conv"}
    b = _Builder()
    out: Dict[int, int] = {-1: -1}

    def emit(node: Node):
        p, c2 = f"model.{node.index}", node.c2
        if node.module != "Concat":
            b.read(out[node.inputs[0]]) if out[node.inputs[0]] >= 0 else None
        x = b.last
        if node.module == "Conv":
            b.conv(c2, node.kernel, _conv_src(p), stride=node.stride, comment=f"{p} Conv")
        elif node.module == "Upsample":
            b.add("upsample", comment=f"{p} Upsample", stride=2)
        elif node.module == "Concat":
            b.route(*[out[r] for r in node.inputs], comment=f"{p} Concat")
        elif node.module == "BottleneckCSP":
            c_ = c2 // 2
            bypass = b.conv(
                c_,
                1,
                Source(weight=f"{p}.cv2.weight", bn=f"{p}.bn", bn_range=(c_, 2 * c_)),
                comment=f"{p} BottleneckCSP: cv2 + bn[{c_}:]",
            )
            b.route(x)
            b.conv(c_, 1, _conv_src(f"{p}.cv1"))
            for j in range(node.n):
                start = b.last
                b.conv(c_, 1, _conv_src(f"{p}.m.{j}.cv1"))
                b.conv(c_, 3, _conv_src(f"{p}.m.{j}.cv2"))
                b.add("shortcut", refs={"from": [start]}, activation="linear")
            b.conv(c_, 1, Source(weight=f"{p}.cv3.weight", bn=f"{p}.bn", bn_range=(0, c_)), comment=f"cv3 + bn[:{c_}]")
            b.route(b.last, bypass)
            b.conv(c2, 1, _conv_src(f"{p}.cv4"))
        elif node.module == "BottleneckCSP2":
            c_ = c2
            x1 = b.conv(c_, 1, _conv_src(f"{p}.cv1"), comment=f"{p} BottleneckCSP2: cv1")
            bypass = b.conv(
                c_, 1, Source(weight=f"{p}.cv2.weight", bn=f"{p}.bn", bn_range=(c_, 2 * c_)), comment=f"cv2 + bn[{c_}:]"
            )
            b.route(x1)
            for j in range(node.n):
                b.conv(c_, 1, _conv_src(f"{p}.m.{j}.cv1"))
                b.conv(c_, 3, _conv_src(f"{p}.m.{j}.cv2"))
            _bn_mish(b, f"{p}.bn", c_)
            b.route(b.last, bypass)
            b.conv(c2, 1, _conv_src(f"{p}.cv3"))
        elif node.module == "SPPCSP":
            c_ = c2
            bypass = b.conv(
                c_,
                1,
                Source(weight=f"{p}.cv2.weight", bn=f"{p}.bn", bn_range=(c_, 2 * c_)),
                comment=f"{p} SPPCSP: cv2 + bn[{c_}:]",
            )
            b.route(x)
            b.conv(c_, 1, _conv_src(f"{p}.cv1"))
            b.conv(c_, 3, _conv_src(f"{p}.cv3"))
            x1 = b.conv(c_, 1, _conv_src(f"{p}.cv4"))
            pools = []
            for k in (5, 9, 13):
                b.read(x1)
                pools.append(b.add("maxpool", size=k, stride=1))
            b.route(pools[2], pools[1], pools[0], x1, comment="mp13, mp9, mp5, x1 (Darknet's order)")
            b.conv(
                c_,
                1,
                Source(weight=f"{p}.cv5.conv.weight", bn=f"{p}.cv5.bn", in_blocks=[3, 2, 1, 0]),
                comment="cv5 (input channels permuted to PyTorch's x1, mp5, mp9, mp13)",
            )
            b.conv(c_, 3, _conv_src(f"{p}.cv6"))
            _bn_mish(b, f"{p}.bn", c_)
            b.route(b.last, bypass)
            b.conv(c2, 1, _conv_src(f"{p}.cv7"))
        out[node.index] = b.last

    for node in nodes[:-1]:
        if node.index not in deferred:
            emit(node)
    na = len(spec["anchors"][0]) // 2
    anchors = [v for level in spec["anchors"] for v in level]
    for k, r in enumerate(detect.inputs):
        emit(nodes[r])
        b.conv(
            detect.c2,
            1,
            Source(weight=f"model.{detect.index}.m.{k}.weight", bias=f"model.{detect.index}.m.{k}.bias"),
            bn=False,
            activation="logistic",
            comment=f"model.{detect.index}.m.{k} (Detect, level P{3 + k})",
        )
        b.add(
            "yolo",
            mask=",".join(str(na * k + a) for a in range(na)),
            anchors=",".join(str(int(v)) if float(v).is_integer() else str(v) for v in anchors),
            classes=spec["nc"],
            num=len(anchors) // 2,
            **_YOLO_TRAINING,
        )
    return b.layers


def _bn_mish(b: _Builder, prefix: str, c_: int):
    b.add("batchnorm", Source(bn=prefix, bn_range=(0, c_), bn_factor=0.5), comment=f"{prefix}[:{c_}] / 2, then")
    b.add("shortcut", refs={"from": [b.last]}, activation="mish", comment="mish(x + x): the second bn + mish")


# Darknet's [yolo] keys of its yolov4-p5/p6 cfgs; the decode keys (scale_x_y=2, new_coords=1) are the PyTorch
# Detect's; the rest are Darknet training settings.
_YOLO_TRAINING = {
    "jitter": ".1",
    "scale_x_y": "2.0",
    "objectness_smooth": 1,
    "ignore_thresh": ".7",
    "truth_thresh": 1,
    "resize": "1.5",
    "iou_thresh": "0.2",
    "iou_normalizer": "0.05",
    "cls_normalizer": "0.5",
    "obj_normalizer": "1.0",
    "iou_loss": "ciou",
    "nms_kind": "diounms",
    "beta_nms": "0.6",
    "new_coords": 1,
    "max_delta": 2,
}

_NET = """[net]
batch=64
subdivisions=8
width={size}
height={size}
channels=3
momentum=0.949
decay=0.0005
angle=0
saturation=1.5
exposure=1.5
hue=.1
learning_rate=0.001
burn_in=1000
max_batches=500500
policy=steps
steps=400000,450000
scales=.1,.1
mosaic=1
letter_box=1
ema_alpha=0.9998
"""


def cfg_text(spec: dict, size: int, header: str = "") -> str:
    """The Darknet cfg of :func:`layout`. Routes and shortcuts inside a block are written relative (-n), to other
    blocks absolute, as Darknet's own cfgs do."""
    layers = layout(spec)
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] if header else []
    lines += ["", _NET.format(size=size).rstrip()]
    for i, layer in enumerate(layers):
        lines.append("")
        if layer.comment:
            lines.append(f"# {layer.comment}")
        lines.append(f"[{layer.section}]")
        for key, refs in layer.refs.items():
            lines.append(f"{key}=" + ",".join(str(r - i) if i - r <= 16 else str(r) for r in refs))
        for key, value in layer.options.items():
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"
