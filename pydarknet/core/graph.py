"""From cfg sections to a validated network description.

This is the single description of a network that every other part uses: the layer types with their options
and Darknet's defaults, each layer's input/output shape, the parameter tensors in `.weights` file order, and the
cost in BFLOPs. The C++ engine receives it ready-made and only executes it; all validation of untrusted input
happens here, where errors can name the cfg line.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

from pydarknet.core.cfg import read_cfg
from pydarknet.errors import CfgError, CfgWarning
from pydarknet.utils.files import short

# Order matters: the index is the activation code shared with the C++ engine (csrc/math/activations.h).
ACTIVATIONS = [
    "linear",
    "logistic",
    "loggy",
    "relu",
    "elu",
    "selu",
    "gelu",
    "relie",
    "ramp",
    "leaky",
    "tanh",
    "plse",
    "stair",
    "hardtan",
    "lhtan",
    "swish",
    "mish",
    "hard_mish",
    "relu6",
    "revleaky",
    "normalize_channels",
    "normalize_channels_softmax",
    "normalize_channels_softmax_maxval",
]
# Activations that look at all channels of a pixel at once rather than one value.
CHANNEL_ACTIVATIONS = {"normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"}

SECTION_ALIASES = {
    "network": "net",
    "conv": "convolutional",
    "conn": "connected",
    "max": "maxpool",
    "avg": "avgpool",
    "local_avg": "local_avgpool",
    "soft": "softmax",
    "silence": "empty",
}

# Keys read for every layer (Darknet parser.c, parse_network_cfg_custom); training uses them.
COMMON_KEYS = {
    "clip": 0.0,
    "onlyforward": 0,
    "dont_update": 0,
    "burnin_update": 0,
    "stopbackward": 0,
    "train_only_bn": 0,
    "dontload": 0,
    "dontloadscales": 0,
    "learning_rate": 1.0,
}

# [net] keys and Darknet's defaults (parse_net_options). Values are parsed as numbers unless listed in NET_STR.
NET_DEFAULTS = {
    "batch": 1,
    "subdivisions": 1,
    "width": 0,
    "height": 0,
    "channels": 0,
    "inputs": 0,
    "learning_rate": 0.001,
    "momentum": 0.9,
    "decay": 0.0001,
    "burn_in": 0,
    "power": 4.0,
    "max_batches": 0,
    "adam": 0,
    "B1": 0.9,
    "B2": 0.999,
    "eps": 1e-6,
    "angle": 0.0,
    "aspect": 1.0,
    "saturation": 1.0,
    "exposure": 1.0,
    "hue": 0.0,
    "flip": 1,
    "mosaic": 0,
    "cutmix": 0,
    "mixup": 0,
    "mosaic_bound": 0,
    "letter_box": 0,
    "blur": 0,
    "gaussian_noise": 0,
    "ema_alpha": 0.0,
    "label_smooth_eps": 0.0,
    "track": 0,
    "time_steps": 1,
    "augment_speed": 2,
    "sequential_subdivisions": 0,
    "try_fix_nan": 0,
    "optimized_memory": 0,
    "workspace_size_limit_MB": 1024.0,
    "use_cuda_graph": 0,
    "loss_scale": 1.0,
    "dynamic_minibatch": 0,
    "max_crop": 0,
    "min_crop": 0,
    "resize_step": 32,
    "weights_reject_freq": 0,
    "equidistant_point": 0,
    "badlabels_rejection_percentage": 0.0,
    "num_sigmas_reject_badlabels": 0.0,
    "contrastive": 0,
    "contrastive_jit_flip": 0,
    "contrastive_color": 0,
    "unsupervised": 0,
    "attention": 0,
    "adversarial_lr": 0.0,
    "max_chart_loss": 20.0,
    "step": 1,
    "scale": 1.0,
    "gamma": 1.0,
    "sgdr_cycle": 0,
    "sgdr_mult": 2,
    "learning_rate_min": 0.00001,
    "center": 0,
    "max_epochs": 0,
}
NET_STR = {"policy": "constant"}
NET_LISTS = {"steps": int, "scales": float, "seq_scales": float}

# Limits that keep a hostile or mistyped cfg from asking for absurd memory.
MAX_DIM = 1 << 16
MAX_ACTIVATION_BYTES = 8 << 30
MAX_PARAM_COUNT = 1 << 30


@dataclass
class Tensor:
    """One parameter tensor of a layer, at `offset` floats into the network's flat buffer."""

    name: str
    shape: tuple
    offset: int = 0
    in_file: bool = True

    @property
    def size(self):
        return math.prod(self.shape)


@dataclass
class Layer:
    index: int
    type: str
    line: int
    options: dict
    in_shape: tuple
    out_shape: tuple
    inputs: list = field(default_factory=list)  # indices of other layers this layer reads
    tensors: list = field(default_factory=list)
    bflops: float = 0.0

    @property
    def out_size(self):
        return math.prod(self.out_shape)

    @property
    def kind(self) -> "LayerType":
        """This layer's type description (:data:`LAYER_TYPES`)."""
        return LAYER_TYPES[self.type]

    def tensor(self, name):
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass
class NetworkDesc:
    path: str
    net: dict
    layers: list
    param_count: int

    @property
    def input_shape(self):
        return (self.net["channels"], self.net["height"], self.net["width"])

    @property
    def yolo_layers(self):
        return [l.index for l in self.layers if l.type == "yolo"]


def _activation(sec, lenient, default):
    name = sec.str("activation", default)
    if name not in ACTIVATIONS:
        if not lenient:
            raise sec.error(f"unknown activation '{short(name)}'", "activation")
        warnings.warn(
            f"{sec.path}:{sec.items['activation'][1]}: unknown activation '{short(name)}', using relu as Darknet does",
            CfgWarning,
        )
        name = "relu"
    return name


def _layer_ref(sec, key, value, index):
    """Resolve a layer reference (negative = relative to the current layer) and check its range."""
    ref = index + value if value < 0 else value
    if ref < 0 or ref >= index:
        raise sec.error(
            f"'{key}' refers to layer {value} (absolute {ref}), which is not an earlier layer (this is layer {index})",
            key,
        )
    return ref


# Options whose value defaults to another key's: an error about them points at the key actually written.
_DEFAULTS_FROM = {"stride_x": "stride", "stride_y": "stride", "size": "stride"}


def _check_positive(sec, **values):
    for name, value in values.items():
        if value <= 0 or value > MAX_DIM:
            key = name
            if not sec.has(key) and sec.has(_DEFAULTS_FROM.get(key, "")):
                key = _DEFAULTS_FROM[key]
            raise sec.error(f"'{key}={value}' is out of range (1..{MAX_DIM})", key if sec.has(key) else None)


def _reject_if_set(sec, keys, why="is not supported by pydarknet"):
    for key in keys:
        if sec.has(key) and sec.float(key, 0) != 0:
            raise sec.error(f"'{key}' {why}", key)


def _conv(sec, index, shape, opts, lenient):
    c, h, w = shape
    n = sec.int("filters", 1)
    size = sec.int("size", 1)
    stride = sec.int("stride", 1)
    stride_x = sec.int("stride_x", -1)
    stride_y = sec.int("stride_y", -1)
    stride_x = stride if stride_x < 1 else stride_x
    stride_y = stride if stride_y < 1 else stride_y
    dilation = sec.int("dilation", 1)
    if size == 1:
        dilation = 1
    pad = sec.int("pad", 0)
    padding = sec.int("padding", 0)
    if pad:
        padding = size // 2
    groups = sec.int("groups", 1)
    bn = sec.int("batch_normalize", 0)
    if sec.int("cbn", 0):
        bn = 2
    _check_positive(sec, filters=n, size=size, stride_x=stride_x, stride_y=stride_y, dilation=dilation, groups=groups)
    if padding < 0 or padding > MAX_DIM:
        raise sec.error(f"padding {padding} is out of range", "padding")
    if c % groups or n % groups:
        raise sec.error(f"groups={groups} must divide both the input channels ({c}) and filters ({n})", "groups")
    _reject_if_set(
        sec,
        [
            "share_index",
            "antialiasing",
            "xnor",
            "binary",
            "flipped",
            "coordconv",
            "sway",
            "rotate",
            "stretch",
            "stretch_sway",
            "deform",
            "reverse",
        ],
    )
    for key in ("bin_output", "assisted_excitation", "grad_centr", "dot", "stream", "wait_stream", "angle"):
        if sec.has(key):
            sec.raw(key)
    out_w = (w + 2 * padding - size) // stride_x + 1
    out_h = (h + 2 * padding - size) // stride_y + 1
    # Darknet sizes the output without the dilation but samples with it; the two agree only for these cases.
    extent = (size - 1) * dilation + 1
    if (w + 2 * padding * dilation - extent) // stride_x + 1 != out_w or (
        h + 2 * padding * dilation - extent
    ) // stride_y + 1 != out_h:
        raise sec.error(
            f"dilation={dilation} with padding={padding} gives an output size Darknet computes "
            f"inconsistently; use pad=1",
            "dilation",
        )
    if out_w < 1 or out_h < 1:
        raise sec.error(f"the {w}x{h} input is smaller than the {size}x{size} kernel", "size")
    opts.update(
        filters=n,
        size=size,
        stride_x=stride_x,
        stride_y=stride_y,
        dilation=dilation,
        padding=padding,
        groups=groups,
        batch_normalize=bn,
        activation=_activation(sec, lenient, "logistic"),
    )
    tensors = [Tensor("biases", (n,))]
    in_file_bn = not opts["dontloadscales"]
    if bn:
        tensors += [
            Tensor("scales", (n,), in_file=in_file_bn),
            Tensor("rolling_mean", (n,), in_file=in_file_bn),
            Tensor("rolling_variance", (n,), in_file=in_file_bn),
        ]
    tensors.append(Tensor("weights", (n, c // groups, size, size)))
    bflops = 2.0 * n * (c // groups) * size * size * out_h * out_w / 1e9
    return (n, out_h, out_w), [], tensors, bflops


def _connected(sec, index, shape, opts, lenient):
    inputs = math.prod(shape)
    outputs = sec.int("output", 1)
    _check_positive(sec, output=outputs)
    bn = sec.int("batch_normalize", 0)
    opts.update(output=outputs, batch_normalize=bn, activation=_activation(sec, lenient, "logistic"))
    tensors = [Tensor("biases", (outputs,)), Tensor("weights", (outputs, inputs))]
    if bn:
        in_file = not opts["dontloadscales"]
        tensors += [
            Tensor("scales", (outputs,), in_file=in_file),
            Tensor("rolling_mean", (outputs,), in_file=in_file),
            Tensor("rolling_variance", (outputs,), in_file=in_file),
        ]
    return (outputs, 1, 1), [], tensors, 2.0 * inputs * outputs / 1e9


def _pool_geometry(sec, shape, opts):
    c, h, w = shape
    stride = sec.int("stride", 1)
    stride_x = sec.int("stride_x", stride)
    stride_y = sec.int("stride_y", stride)
    size = sec.int("size", stride)
    padding = sec.int("padding", size - 1)
    _check_positive(sec, stride_x=stride_x, stride_y=stride_y, size=size)
    if padding < 0 or padding > MAX_DIM:
        raise sec.error(f"padding {padding} is out of range", "padding")
    out_w = (w + padding - size) // stride_x + 1
    out_h = (h + padding - size) // stride_y + 1
    if out_w < 1 or out_h < 1:
        raise sec.error(f"the {w}x{h} input is too small for a {size}x{size} window", "size")
    opts.update(size=size, stride_x=stride_x, stride_y=stride_y, padding=padding)
    return out_h, out_w


def _maxpool(sec, index, shape, opts, lenient):
    c, h, w = shape
    _reject_if_set(sec, ["antialiasing", "maxpool_zero_nonmax"])
    depth = sec.int("maxpool_depth", 0)
    out_channels = sec.int("out_channels", 1)
    opts.update(maxpool_depth=depth, out_channels=out_channels)
    if depth:
        _check_positive(sec, out_channels=out_channels)
        opts.update(size=1, stride_x=1, stride_y=1, padding=0)
        return (out_channels, h, w), [], [], 0.0
    out_h, out_w = _pool_geometry(sec, shape, opts)
    return (c, out_h, out_w), [], [], opts["size"] ** 2 * c * out_h * out_w / 1e9


def _local_avgpool(sec, index, shape, opts, lenient):
    out_h, out_w = _pool_geometry(sec, shape, opts)
    return (shape[0], out_h, out_w), [], [], 0.0


def _avgpool(sec, index, shape, opts, lenient):
    return (shape[0], 1, 1), [], [], 0.0


def _route(sec, index, shape, opts, lenient, layers):
    refs = [_layer_ref(sec, "layers", v, index) for v in sec.int_list("layers")]
    if not refs:
        raise sec.error("'layers' is empty", "layers")
    groups = sec.int("groups", 1)
    group_id = sec.int("group_id", 0)
    _check_positive(sec, groups=groups)
    if not 0 <= group_id < groups:
        raise sec.error(f"group_id={group_id} must be in 0..groups-1 ({groups - 1})", "group_id")
    _, h, w = layers[refs[0]].out_shape
    out_c = 0
    for ref in refs:
        rc, rh, rw = layers[ref].out_shape
        if (rh, rw) != (h, w):
            raise sec.error(
                f"layer {ref} is {rw}x{rh} but layer {refs[0]} is {w}x{h}; routed layers must share width and height",
                "layers",
            )
        if rc % groups:
            raise sec.error(f"groups={groups} does not divide the {rc} channels of layer {ref}", "groups")
        out_c += rc // groups
    for key in ("stream", "wait_stream"):
        if sec.has(key):
            sec.raw(key)
    opts.update(layers=refs, groups=groups, group_id=group_id)
    return (out_c, h, w), refs, [], 0.0


WEIGHTS_TYPES = ["none", "per_feature", "per_layer", "per_channel"]
WEIGHTS_NORMALIZATIONS = ["none", "relu", "avg_relu", "softmax"]


def _shortcut(sec, index, shape, opts, lenient, layers):
    refs = [_layer_ref(sec, "from", v, index) for v in sec.int_list("from")]
    if not refs:
        raise sec.error("'from' is empty", "from")
    wtype = sec.str("weights_type", "none")
    wnorm = sec.str("weights_normalization", "none")
    if wtype not in WEIGHTS_TYPES:
        raise sec.error(f"unknown weights_type '{short(wtype)}'", "weights_type")
    if wnorm not in WEIGHTS_NORMALIZATIONS:
        raise sec.error(f"unknown weights_normalization '{short(wnorm)}'", "weights_normalization")
    if wtype == "per_layer":
        wtype = "per_feature"
    c = shape[0]
    tensors = []
    if wtype == "per_feature":
        tensors = [Tensor("weights", (len(refs) + 1,))]
    elif wtype == "per_channel":
        tensors = [Tensor("weights", ((len(refs) + 1) * c,))]
    opts.update(
        {
            "from": refs,
            "weights_type": wtype,
            "weights_normalization": wnorm,
            "activation": _activation(sec, lenient, "linear"),
        }
    )
    return tuple(shape), refs, tensors, 0.0


def _upsample(sec, index, shape, opts, lenient):
    c, h, w = shape
    stride = sec.int("stride", 2)
    scale = sec.float("scale", 1.0)
    if stride == 0 or abs(stride) > 1024:
        raise sec.error(f"stride={stride} is out of range", "stride")
    opts.update(stride=abs(stride), scale=scale, reverse=int(stride < 0))
    if stride < 0:
        out = (c, h // -stride, w // -stride)
        if out[1] < 1 or out[2] < 1:
            raise sec.error(f"downsampling {w}x{h} by {-stride} leaves nothing", "stride")
        return out, [], [], 0.0
    return (c, h * stride, w * stride), [], [], 0.0


YOLO_FLOATS = {
    "jitter": 0.2,
    "resize": 1.0,
    "random": 0.0,
    "ignore_thresh": 0.5,
    "truth_thresh": 1.0,
    "iou_thresh": 1.0,
    "iou_normalizer": 0.75,
    "obj_normalizer": 1.0,
    "cls_normalizer": 1.0,
    "delta_normalizer": 1.0,
    "scale_x_y": 1.0,
    "objectness_smooth": 0.0,
    "max_delta": 3.4028234663852886e38,
    "label_smooth_eps": 0.0,
    "beta_nms": 0.6,
    "sim_thresh": 0.8,
    "track_ciou_norm": 0.01,
    "thresh": 0.2,
}
YOLO_INTS = {
    "max": 200,
    "new_coords": 0,
    "focal_loss": 0,
    "show_details": 1,
    "embedding_layer": 999999,
    "track_history_size": 5,
    "dets_for_track": 1,
    "dets_for_show": 1,
}
YOLO_STRS = {"iou_loss": "mse", "iou_thresh_kind": "iou", "nms_kind": "default", "map": "", "counters_per_class": ""}
IOU_KINDS = ["mse", "iou", "giou", "diou", "ciou"]
NMS_KINDS = ["default", "greedynms", "diounms", "cornersnms"]
# Keys that appear in shipped cfgs but that Darknet's [yolo] parser never reads (it prints "Unused field").
YOLO_IGNORED = {"beta1", "uc_normalizer"}


def _yolo(sec, index, shape, opts, lenient):
    c, h, w = shape
    classes = sec.int("classes", 20)
    total = sec.int("num", 1)
    if classes < 1 or classes > 100000:
        raise sec.error(f"classes={classes} is out of range", "classes")
    if total < 1 or total > 1000:
        raise sec.error(f"num={total} is out of range", "num")
    mask = sec.int_list("mask", list(range(total)))
    for m in mask:
        if not 0 <= m < total:
            raise sec.error(f"mask entry {m} is not an anchor index (num={total})", "mask")
    anchors = sec.float_list("anchors", [0.5] * (2 * total))
    if len(anchors) < 2 * total:
        raise sec.error(f"num={total} needs {2 * total} anchor values, found {len(anchors)}", "anchors")
    anchors = anchors[: 2 * total]
    expected = len(mask) * (classes + 5)
    if c != expected:
        raise sec.error(
            f"the layer before [yolo] outputs {c} channels but mask has {len(mask)} anchors and "
            f"classes={classes}, which need {len(mask)}*({classes}+5) = {expected} (set filters={expected}"
            f" in the [convolutional] before it)",
            "mask",
        )
    opts.update(classes=classes, num=total, mask=mask, anchors=anchors)
    for key, default in YOLO_FLOATS.items():
        opts[key] = sec.float(key, default)
    for key, default in YOLO_INTS.items():
        opts[key] = sec.int(key, default)
    for key, default in YOLO_STRS.items():
        opts[key] = sec.str(key, default)
    if not opts["scale_x_y"] > 0:
        # x = (logistic * scale_x_y - (scale_x_y - 1) / 2 + col) / w: a scale <= 0 ignores or inverts the output.
        raise sec.error(
            f"scale_x_y={opts['scale_x_y']:g} must be greater than 0 (1 is the plain YOLOv3 decoding)", "scale_x_y"
        )
    if opts["iou_loss"] not in IOU_KINDS:
        opts["iou_loss"] = "iou"
    if opts["iou_thresh_kind"] not in IOU_KINDS[1:]:
        raise sec.error(f"unknown iou_thresh_kind '{short(opts['iou_thresh_kind'])}'", "iou_thresh_kind")
    if opts["nms_kind"] not in NMS_KINDS:
        raise sec.error(f"unknown nms_kind '{short(opts['nms_kind'])}'", "nms_kind")
    for key in YOLO_IGNORED:
        if sec.has(key):
            sec.raw(key)
    return tuple(shape), [], [], 0.0


def _softmax(sec, index, shape, opts, lenient):
    groups = sec.int("groups", 1)
    _check_positive(sec, groups=groups)
    inputs = math.prod(shape)
    if inputs % groups:
        raise sec.error(f"groups={groups} does not divide the {inputs} inputs", "groups")
    _reject_if_set(sec, ["tree", "spatial"])
    sec.int("noloss", 0)
    temperature = sec.float("temperature", 1.0)
    if not temperature > 0:
        # Darknet divides the inputs by it: 0 gives inf/NaN, a negative one turns the softmax upside down.
        raise sec.error(f"temperature={temperature:g} must be greater than 0", "temperature")
    opts.update(groups=groups, temperature=temperature)
    return tuple(shape), [], [], 0.0


def _dropout(sec, index, shape, opts, lenient):
    probability = sec.float("probability", 0.2)
    if not 0 <= probability < 1:
        # Darknet scales the kept values by 1/(1-probability): 1 divides by zero.
        raise sec.error(f"probability={probability:g} must be in [0, 1)", "probability")
    opts.update(
        probability=probability,
        dropblock=sec.int("dropblock", 0),
        dropblock_size_rel=sec.float("dropblock_size_rel", 0.0),
        dropblock_size_abs=sec.int("dropblock_size_abs", 7),
    )
    return tuple(shape), [], [], 0.0


def _sam(sec, index, shape, opts, lenient, layers):
    ref = _layer_ref(sec, "from", sec.int("from"), index)
    if layers[ref].out_shape != tuple(shape):
        raise sec.error(
            f"layer {ref} has shape {layers[ref].out_shape}, but [sam] needs the same shape as its "
            f"input {tuple(shape)}",
            "from",
        )
    opts.update({"from": ref, "activation": _activation(sec, lenient, "linear")})
    return tuple(shape), [ref], [], 0.0


def _scale_channels(sec, index, shape, opts, lenient, layers):
    ref = _layer_ref(sec, "from", sec.int("from"), index)
    scale_wh = sec.int("scale_wh", 0)
    target = layers[ref].out_shape
    fc, fh, fw = target
    want = (1, fh, fw) if scale_wh else (fc, 1, 1)
    if math.prod(shape) != math.prod(want):
        raise sec.error(
            f"[scale_channels] needs an input of shape {want} to scale layer {ref} {target}, got {tuple(shape)}", "from"
        )
    opts.update({"from": ref, "scale_wh": scale_wh, "activation": _activation(sec, lenient, "linear")})
    return tuple(target), [ref], [], 0.0


def _reorg3d(sec, index, shape, opts, lenient):
    c, h, w = shape
    stride = sec.int("stride", 1)
    reverse = sec.int("reverse", 0)
    _check_positive(sec, stride=stride)
    opts.update(stride=stride, reverse=reverse)
    if reverse:
        # Darknet's reverse reorg indexes C / stride^4 channel groups (and divides by zero when there are none).
        if c % stride**4:
            raise sec.error(f"reverse reorg by {stride} needs channels divisible by {stride**4} (got {c})", "stride")
        return (c // (stride * stride), h * stride, w * stride), [], [], 0.0
    if h % stride or w % stride:
        raise sec.error(f"reorg by {stride} needs width and height divisible by it (got {w}x{h})", "stride")
    return (c * stride * stride, h // stride, w // stride), [], [], 0.0


def _batchnorm(sec, index, shape, opts, lenient):
    c = shape[0]
    tensors = [Tensor(n, (c,)) for n in ("biases", "scales", "rolling_mean", "rolling_variance")]
    return tuple(shape), [], tensors, 0.0


def _identity(sec, index, shape, opts, lenient):
    if sec.name == "cost":
        opts.update(type=sec.str("type", "sse"), scale=sec.float("scale", 1.0), ratio=sec.float("ratio", 0.0))
    return tuple(shape), [], [], 0.0


# ----- one description per layer type -------------------------------------------------------------------------
def _shapes(l):
    (ic, ih, iw), (oc, oh, ow) = l.in_shape, l.out_shape
    return f"{iw:4d} x{ih:4d} x{ic:4d} -> {ow:4d} x{oh:4d} x{oc:4d}"


def _summary_conv(l):
    o, oc = l.options, l.out_shape[0]
    dil = f"({o['dilation']})" if o["dilation"] > 1 else "   "
    groups = f"{o['groups']:4d}/" if o["groups"] > 1 else "     "
    return (
        f"conv  {groups}{oc:4d}      {o['size']} x{o['size']:2d}/{o['stride_x']:2d}{dil} {_shapes(l)} {l.bflops:.3f} BF"
    )


def _summary_pool(l):
    o = l.options
    kind = "max" if l.type == "maxpool" else "avg"
    return f"{kind}               {o['size']:2d}x{o['size']:2d}/{o['stride_x']:2d}    {_shapes(l)} {l.bflops:.3f} BF"


def _summary_route(l):
    o = l.options
    groups = f" (group {o['group_id']} of {o['groups']})" if o["groups"] > 1 else ""
    return "route  " + " ".join(str(i) for i in o["layers"]) + groups + f"  -> {l.out_shape[0]} ch"


def _summary_shortcut(l):
    return f"shortcut from {', '.join(str(i) for i in l.options['from'])}  {_shapes(l)}"


def _summary_yolo(l):
    o = l.options
    return (
        f"yolo  classes {o['classes']}, anchors {len(o['mask'])}/{o['num']}, "
        f"scale_x_y {o['scale_x_y']:g}{', new_coords' if o['new_coords'] else ''}"
    )


def _summary_connected(l):
    c, h, w = l.in_shape
    return f"connected            {c * h * w:6d} -> {l.out_shape[0]:6d}  {l.bflops:.3f} BF"


def _summary_plain(l):
    return f"{l.type:<18s}          {_shapes(l)}"


def _untrainable_bn(l):
    if l.options.get("batch_normalize") == 2:
        return "cross-iteration batch normalisation (cbn=1) is not supported in training"
    return None


def _untrainable_dropout(l):
    o = l.options
    if o.get("dropblock"):
        return "dropblock is not supported in training"
    if not 0 <= o.get("probability", 0) < 1:
        return f"dropout probability {o['probability']} must be in [0, 1) for training"
    return None


@dataclass(frozen=True)
class LayerType:
    """Everything the Python side knows about one layer type, in one place.

    The engine's side of the same type is ``csrc/layers/<name>.cpp`` (CPU) and ``cuda/<name>_kernels.cu`` (CUDA);
    see docs/architecture.md for adding a type.
    """

    name: str
    build: Callable  # (section, index, input shape, options, lenient[, layers]) -> (out shape, inputs, tensors, BFLOPs)
    reads_layers: bool = False  # the builder is also given the earlier layers (it refers to them by index)
    weight_init: str = "zeros"  # the "weights" tensor at initialisation: "fan_in" (uniform +-sqrt(2/fan_in)) or "ones"
    trains_with: str = "sgd"  # the optimizer's rule: "sgd" (decayed weights), "sgd+adam" (may use Adam), "shortcut"
    clips: bool = False  # honours the layer's `clip` option (Darknet clips convolutional weights only)
    ema: bool = False  # its weights, biases and scales take part in Darknet's EMA (ema_alpha)
    transposed_in_v1_files: bool = False  # weights stored transposed in files with major/minor > 1000
    summary: Callable = _summary_plain  # one line of Network.summary()
    untrainable: Callable = lambda layer: None  # why training cannot run this layer's options, or None


LAYER_TYPES = {
    t.name: t
    for t in (
        LayerType(
            "convolutional",
            _conv,
            weight_init="fan_in",
            trains_with="sgd+adam",
            clips=True,
            ema=True,
            summary=_summary_conv,
            untrainable=_untrainable_bn,
        ),
        LayerType(
            "connected",
            _connected,
            weight_init="fan_in",
            transposed_in_v1_files=True,
            summary=_summary_connected,
            untrainable=_untrainable_bn,
        ),
        LayerType("maxpool", _maxpool, summary=_summary_pool),
        LayerType("local_avgpool", _local_avgpool, summary=_summary_pool),
        LayerType("avgpool", _avgpool),
        LayerType("route", _route, reads_layers=True, summary=_summary_route),
        LayerType(
            "shortcut",
            _shortcut,
            reads_layers=True,
            weight_init="ones",
            trains_with="shortcut",
            summary=_summary_shortcut,
        ),
        LayerType("upsample", _upsample),
        LayerType("yolo", _yolo, summary=_summary_yolo),
        LayerType("softmax", _softmax),
        LayerType("dropout", _dropout, untrainable=_untrainable_dropout),
        LayerType("sam", _sam, reads_layers=True),
        LayerType("scale_channels", _scale_channels, reads_layers=True),
        LayerType("reorg3d", _reorg3d),
        LayerType("batchnorm", _batchnorm),
        LayerType("cost", _identity),
        LayerType("empty", _identity),
    )
}
NOT_SUPPORTED = {
    "region",
    "reorg",
    "Gaussian_yolo",
    "detection",
    "local",
    "crnn",
    "rnn",
    "lstm",
    "gru",
    "conv_lstm",
    "history",
    "crop",
    "contrastive",
    "implicit",
    "activation",
    "lrn",
    "normalization",
}


def _parse_net(sec, lenient, width, height):
    net = {}
    for key, default in NET_DEFAULTS.items():
        if isinstance(default, int):
            net[key] = sec.int(key, default)
        else:
            net[key] = sec.float(key, default)
    for key, default in NET_STR.items():
        net[key] = sec.str(key, default)
    for key, kind in NET_LISTS.items():
        net[key] = (sec.int_list if kind is int else sec.float_list)(key, [])
    if width is not None:
        net["width"] = int(width)
    if height is not None:
        net["height"] = int(height)
    if net["channels"] == 0 and net["inputs"] == 0:
        raise sec.error(
            "[net] needs width, height and channels (or inputs)", "channels" if sec.has("channels") else None
        )
    if net["inputs"] and not (net["width"] and net["height"] and net["channels"]):
        net.update(width=1, height=1, channels=net["inputs"])
    for key in ("width", "height", "channels"):
        value = net[key]
        if value <= 0 or value > MAX_DIM:
            raise sec.error(f"{key}={value} is out of range (1..{MAX_DIM})", key if sec.has(key) else None)
    return net


def _report_unused(sec, lenient, ignored=()):
    for key in sec.unused():
        if key in ignored:
            continue
        problem = f"[{short(sec.name)}] unknown key '{short(key)}'"
        if not lenient:
            raise CfgError(problem, sec.path, sec.items[key][1])
        warnings.warn(f"{sec.path}:{sec.items[key][1]}: {problem} (ignored)", CfgWarning)


def build_network(sections, path=None, lenient=False, width=None, height=None):
    """Turn parsed cfg sections into a NetworkDesc, validating everything a forward pass relies on."""
    net = _parse_net(sections[0], lenient, width, height)
    _report_unused(sections[0], lenient)
    shape = (net["channels"], net["height"], net["width"])
    layers = []
    offset = 0
    activation_floats = 0
    for sec in sections[1:]:
        kind = SECTION_ALIASES.get(sec.name, sec.name)
        index = len(layers)
        if kind == "net":
            raise sec.error("a second [net] section")
        if kind in NOT_SUPPORTED:
            raise sec.error(
                f"layer type [{short(sec.name)}] is not supported by pydarknet (YOLOv3 and later need only "
                f"{', '.join(sorted(LAYER_TYPES))})"
            )
        if kind not in LAYER_TYPES:
            if not lenient:
                raise sec.error(f"unknown section [{short(sec.name)}]")
            warnings.warn(
                f"{sec.path}:{sec.line}: unknown section [{short(sec.name)}] treated as an empty layer", CfgWarning
            )
            kind = "empty"
            sec.used.update(sec.items)
        opts = {}
        for key, default in COMMON_KEYS.items():
            opts[key] = sec.float(key, default) if isinstance(default, float) else sec.int(key, default)
        layer_type = LAYER_TYPES[kind]
        if layer_type.reads_layers:
            out_shape, inputs, tensors, bflops = layer_type.build(sec, index, shape, opts, lenient, layers)
        else:
            out_shape, inputs, tensors, bflops = layer_type.build(sec, index, shape, opts, lenient)
        _report_unused(sec, lenient)
        for t in tensors:
            t.offset = offset
            offset += t.size
            if opts["dontload"]:
                t.in_file = False
        if offset > MAX_PARAM_COUNT:
            raise sec.error(f"the network would need more than {MAX_PARAM_COUNT} parameters")
        for d in out_shape:
            if d < 1 or d > MAX_DIM:
                raise sec.error(f"this layer's output shape {out_shape} is out of range")
        layer = Layer(index, kind, sec.line, opts, tuple(shape), tuple(out_shape), inputs, tensors, bflops)
        activation_floats += layer.out_size
        if activation_floats * 4 > MAX_ACTIVATION_BYTES:
            raise sec.error(
                f"the network would need more than {MAX_ACTIVATION_BYTES >> 30} GiB of activations "
                f"per image; is the input size ({net['width']}x{net['height']}) right?"
            )
        layers.append(layer)
        shape = layer.out_shape
    if not layers:
        raise CfgError("the cfg defines no layers after [net]", path, None)
    classes = {layers[i].options["classes"] for i in range(len(layers)) if layers[i].type == "yolo"}
    if len(classes) > 1:
        raise CfgError(f"[yolo] layers disagree on classes ({sorted(classes)})", path, None)
    return NetworkDesc(str(path) if path else "<cfg>", net, layers, offset)


def load_network_desc(path, lenient=False, width=None, height=None):
    return build_network(read_cfg(path, lenient), path, lenient, width, height)
