"""Converting ScaledYOLOv4 PyTorch checkpoints into Darknet ``.weights`` for a given cfg.

Two checkpoint families exist. The yolov4-large branch (P5, P6, P7) saves a ``models.yolo.Model`` built from a yaml
list of modules, tensors named ``model.<i>.<part>``; the model object carries the yaml, from which
:func:`pydarknet.hub.scaled_yolov4.layout` derives which Darknet layer each tensor fills (a bare state dict is matched
against the built-in P5/P6/P7 descriptions). The yolov4-csp branch builds its model from a Darknet cfg
(``models.models.Darknet``), tensors named ``module_list.<layer>.Conv2d.weight``..., so layer i fills layer i.

Batch-norm. PyTorch computes ``(x - mean) / sqrt(var + eps) * weight + bias`` with the eps of each BatchNorm2d (read
from the checkpoint: 1e-3 in the large models, 1e-4 in the csp branch); Darknet uses 1e-5 at inference. The converter
stores ``var + eps - 1e-5`` as the rolling variance, so Darknet's ``sqrt(var' + 1e-5)`` is PyTorch's denominator and
the scales stay the trained weights. Half-precision checkpoints are widened to float32.

The cfg is checked against the checkpoint layer by layer (type, filters, kernel, stride, routes, anchors) and tensor
by tensor (shape); the first difference is reported naming the checkpoint tensor and the cfg line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from pydarknet.core import graph
from pydarknet.core import weights as weights_io
from pydarknet.errors import CfgError, ModelError, WeightsError
from pydarknet.hub import scaled_yolov4 as sy
from pydarknet.hub.torch_checkpoint import Module, read_checkpoint, state_dict

__all__ = ["DARKNET_BN_EPS", "ConversionReport", "convert", "convert_arrays"]

DARKNET_BN_EPS = 1e-5
_DEFAULT_EPS = {"yaml": 1e-3, "cfg": 1e-4}  # the two branches' BatchNorm2d settings
_IGNORED = ("num_batches_tracked", "anchors", "anchor_grid")


@dataclass
class ConversionReport:
    checkpoint: str
    cfg: str
    out: str
    family: str  # "yaml" (yolov4-large) or "cfg" (yolov4-csp)
    model: str
    tensors: int
    layers: int
    eps: List[float] = field(default_factory=list)
    params: int = 0

    def __str__(self):
        eps = ", ".join(f"{e:g}" for e in sorted(set(self.eps))) or "none"
        return (
            f"{self.checkpoint} ({self.model}, {self.tensors} tensors) -> {self.out}: {self.layers} layers of "
            f"{self.cfg}, {self.params:,} floats; PyTorch batch-norm eps {eps} folded for Darknet's {DARKNET_BN_EPS:g}"
        )


def _mismatch(cfg_path, layer, problem, tensor=None):
    what = f"checkpoint tensor {tensor}: " if tensor else ""
    return CfgError(f"{what}{problem} (layer {layer.index} [{layer.type}])", cfg_path, layer.line)


def _first_tensor(plan, start) -> Optional[str]:
    for dl in plan[start:]:
        if dl.source is not None:
            return dl.source.weight or (dl.source.bn and f"{dl.source.bn}.weight")
    return None


def _check_structure(plan: List[sy.DLayer], desc, cfg_path):
    for i, (dl, layer) in enumerate(zip(plan, desc.layers)):
        tensor = _first_tensor(plan, i)
        if dl.section != layer.type:
            raise _mismatch(cfg_path, layer, f"the checkpoint needs a [{dl.section}] here", tensor)
        o = layer.options
        want: Dict[str, object] = {}
        have: Dict[str, object] = {}
        if dl.section == "convolutional":
            want = {k: dl.options.get(k, 0) for k in ("filters", "size", "batch_normalize", "activation")}
            want["stride"], want["groups"] = dl.options["stride"], 1
            have = {k: o[k] for k in ("filters", "size", "batch_normalize", "activation", "groups")}
            have["stride"] = o["stride_x"] if o["stride_x"] == o["stride_y"] else (o["stride_x"], o["stride_y"])
        elif dl.section in ("route", "shortcut"):
            key = "layers" if dl.section == "route" else "from"
            want, have = {key: dl.refs[key]}, {key: o[key]}
            if dl.section == "shortcut":
                want["activation"], have["activation"] = dl.options["activation"], o["activation"]
                want["weights_type"], have["weights_type"] = "none", o["weights_type"]
            else:
                want["groups"], have["groups"] = 1, o["groups"]
        elif dl.section == "maxpool":
            want = {"size": dl.options["size"], "stride": 1}
            have = {"size": o["size"], "stride": o["stride_x"]}
        elif dl.section == "upsample":
            want, have = {"stride": dl.options["stride"]}, {"stride": o.get("stride")}
        elif dl.section == "yolo":
            want = {"classes": dl.options["classes"], "mask": [int(v) for v in str(dl.options["mask"]).split(",")]}
            have = {"classes": o["classes"], "mask": list(o["mask"])}
        for key in want:
            if want[key] != have[key]:
                raise _mismatch(
                    cfg_path, layer, f"{key} is {have[key]} in the cfg but the checkpoint needs {want[key]}", tensor
                )
    if len(plan) > len(desc.layers):
        raise _mismatch(
            cfg_path,
            desc.layers[-1],
            f"the cfg ends after {len(desc.layers)} layers; the checkpoint's network has {len(plan)}",
            _first_tensor(plan, len(desc.layers)),
        )
    if len(plan) < len(desc.layers):
        raise _mismatch(
            cfg_path,
            desc.layers[len(plan)],
            f"the checkpoint's network ends after {len(plan)} layers; the cfg has {len(desc.layers)}",
        )


def _yaml_plan(tensors, model: Optional[Module], where) -> Tuple[List[sy.DLayer], str, dict]:
    yaml = getattr(model, "yaml", None) if model is not None else None
    if isinstance(yaml, dict):
        spec = sy.spec_from_yaml(yaml, where)
        return sy.layout(spec), str(yaml.get("name") or _guess_name(spec)), spec
    # A bare state dict: the built-in description whose tensors it has, with the class count it has.
    for key, spec in sy.SPECS.items():
        detect = len(sy.build_nodes(spec)) - 1
        bias = tensors.get(f"model.{detect}.m.0.bias")
        if bias is None:
            continue
        na = len(spec["anchors"][0]) // 2
        spec = dict(spec, nc=bias.shape[0] // na - 5)
        shapes = sy.state_dict_shapes(spec)
        if all(k in tensors and tuple(tensors[k].shape) == s for k, s in shapes.items()):
            return sy.layout(spec), spec["name"], spec
    raise WeightsError(
        "the checkpoint holds a state dict without its model description, and it is not the P5, P6 or P7 of "
        "ScaledYOLOv4 (save the whole model, as the authors' train.py does)",
        where,
    )


def _guess_name(spec):
    return f"scaled-yolov4 ({len(spec['anchors'])} levels)"


def _cfg_plan(desc) -> List[sy.DLayer]:
    """yolov4-csp branch: the checkpoint's module_list follows the cfg, layer i in module_list.i."""
    plan = []
    for layer in desc.layers:
        o = layer.options
        dl = sy.DLayer(layer.type)
        p = f"module_list.{layer.index}"
        if layer.type == "convolutional":
            dl.options = {k: o[k] for k in ("filters", "size", "batch_normalize", "activation")}
            dl.options["stride"] = o["stride_x"]
            bn = o["batch_normalize"]
            dl.source = sy.Source(
                weight=f"{p}.Conv2d.weight",
                bn=f"{p}.BatchNorm2d" if bn else None,
                bias=None if bn else f"{p}.Conv2d.bias",
            )
        elif layer.type == "batchnorm":
            dl.source = sy.Source(bn=p)
        elif layer.type in ("route", "shortcut"):
            key = "layers" if layer.type == "route" else "from"
            dl.refs = {key: list(o[key])}
            dl.options = {"activation": o.get("activation")}
        elif layer.type == "maxpool":
            dl.options = {"size": o["size"]}
        elif layer.type == "upsample":
            dl.options = {"stride": o.get("stride")}
        elif layer.type == "yolo":
            dl.options = {"classes": o["classes"], "mask": ",".join(map(str, o["mask"]))}
        elif layer.tensors:
            raise CfgError(
                f"layer {layer.index} [{layer.type}] has parameters the csp-branch converter cannot fill",
                desc.path,
                layer.line,
            )
        plan.append(dl)
    return plan


def _check_anchors(tensors, spec, desc, cfg_path):
    """The cfg's anchors must be the ones the checkpoint was trained with (Detect's anchor_grid, in pixels)."""
    detect = len(sy.build_nodes(spec)) - 1
    grid = tensors.get(f"model.{detect}.anchor_grid")
    if grid is None:
        return
    grid = np.asarray(grid, dtype=np.float64).reshape(len(spec["anchors"]), -1, 2)
    for level, index in enumerate(desc.yolo_layers):
        layer = desc.layers[index]
        anchors = np.asarray(layer.options["anchors"], dtype=np.float64).reshape(-1, 2)[layer.options["mask"]]
        if anchors.shape != grid[level].shape or not np.allclose(anchors, grid[level], rtol=1e-3, atol=0.5):
            raise _mismatch(
                cfg_path,
                layer,
                f"the cfg's anchors {anchors.reshape(-1).tolist()} are not the checkpoint's "
                f"{np.round(grid[level].reshape(-1), 2).tolist()}",
                f"model.{detect}.anchor_grid",
            )


def _get(tensors, name, shape, layer, cfg_path, used):
    if name not in tensors:
        raise _mismatch(cfg_path, layer, "the checkpoint has no such tensor", name)
    value = tensors[name]
    if tuple(value.shape) != tuple(shape):
        raise _mismatch(
            cfg_path,
            layer,
            f"shape {'x'.join(map(str, value.shape))} does not fit the cfg, which needs {'x'.join(map(str, shape))}",
            name,
        )
    used.add(name)
    return np.asarray(value, dtype=np.float64)


def _fill(plan, desc, tensors, eps_of, default_eps, cfg_path) -> Tuple[np.ndarray, List[float], set]:
    params = np.zeros(desc.param_count, dtype=np.float32)
    used: set = set()
    eps_used: List[float] = []
    for dl, layer in zip(plan, desc.layers):
        src = dl.source
        if src is None:
            if layer.tensors:
                raise _mismatch(cfg_path, layer, "the cfg gives this layer parameters the checkpoint does not have")
            continue
        views = {t.name: params[t.offset : t.offset + t.size].reshape(t.shape) for t in layer.tensors}
        n = layer.out_shape[0]
        if src.weight is not None:
            shape = views["weights"].shape
            if src.in_blocks:
                w = _get(tensors, src.weight, shape, layer, cfg_path, used)
                block = shape[1] // len(src.in_blocks)
                w = np.concatenate([w[:, b * block : (b + 1) * block] for b in src.in_blocks], axis=1)
            else:
                w = _get(tensors, src.weight, shape, layer, cfg_path, used)
            views["weights"][...] = w
        if src.bias is not None:
            views["biases"][...] = _get(tensors, src.bias, (n,), layer, cfg_path, used)
        if src.bn is not None:
            if "scales" not in views:
                raise _mismatch(
                    cfg_path, layer, "the checkpoint has a batch-norm here; set batch_normalize=1", f"{src.bn}.weight"
                )
            lo, hi = src.bn_range or (0, n)
            full = tensors.get(f"{src.bn}.weight")
            total = full.shape[0] if full is not None else hi
            part = {}
            for t in ("weight", "bias", "running_mean", "running_var"):
                part[t] = _get(tensors, f"{src.bn}.{t}", (total,), layer, cfg_path, used)[lo:hi]
            if hi - lo != n:
                raise _mismatch(cfg_path, layer, f"{hi - lo} batch-norm channels for {n} outputs", f"{src.bn}.weight")
            eps = eps_of.get(src.bn, default_eps)
            eps_used.append(eps)
            views["scales"][...] = part["weight"] * src.bn_factor
            views["biases"][...] = part["bias"] * src.bn_factor
            views["rolling_mean"][...] = part["running_mean"]
            views["rolling_variance"][...] = part["running_var"] + (eps - DARKNET_BN_EPS)
    if not np.all(np.isfinite(params)):
        raise WeightsError("the checkpoint's tensors contain NaN or infinity", None)
    return params, eps_used, used


def convert_arrays(tensors: Dict[str, np.ndarray], eps_of: Dict[str, float], model, cfg, *, bn_eps=None, where=""):
    """(desc, flat Darknet parameters, report fields) for checkpoint tensors and a cfg; see :func:`convert`."""
    cfg_path = str(cfg)
    desc = graph.load_network_desc(cfg)
    family = "cfg" if any(k.startswith("module_list.") for k in tensors) else "yaml"
    if family == "yaml":
        plan, name, spec = _yaml_plan(tensors, model, where)
    else:
        plan, name, spec = _cfg_plan(desc), "yolov4-csp branch (cfg model)", None
    _check_structure(plan, desc, cfg_path)
    if spec is not None:
        _check_anchors(tensors, spec, desc, cfg_path)
    default_eps = float(bn_eps) if bn_eps is not None else _DEFAULT_EPS[family]
    if bn_eps is not None:
        eps_of = {}
    params, eps_used, used = _fill(plan, desc, tensors, eps_of, default_eps, cfg_path)
    unused = [k for k in tensors if k not in used and not k.endswith(_IGNORED)]
    if unused:
        raise WeightsError(
            f"checkpoint tensor {unused[0]} (and {len(unused) - 1} more) has no place in {cfg_path}", where or None
        )
    return desc, params, {"family": family, "model": name, "tensors": len(used), "eps": eps_used}


def convert(checkpoint, cfg, out, *, bn_eps: Optional[float] = None) -> ConversionReport:
    """Convert a ScaledYOLOv4 ``.pt`` checkpoint into a Darknet ``.weights`` file for ``cfg`` (written atomically).

    ``bn_eps`` overrides the batch-norm eps read from the checkpoint (needed only for a bare state dict of a model
    trained with other settings). Raises WeightsError for an unreadable or unsafe checkpoint and CfgError (naming the
    first checkpoint tensor that does not fit, and the cfg line) when the cfg is not the checkpoint's network.
    """
    checkpoint, cfg, out = Path(checkpoint), Path(cfg), Path(out)
    obj = read_checkpoint(checkpoint)
    tensors, eps_of, model = state_dict(obj, checkpoint)
    try:
        desc, params, fields = convert_arrays(tensors, eps_of, model, cfg, bn_eps=bn_eps, where=str(checkpoint))
    except ModelError as e:
        raise WeightsError(str(e), checkpoint) from None
    weights_io.save_from(desc, params, out, seen=0)
    return ConversionReport(
        str(checkpoint), str(cfg), str(out), layers=len(desc.layers), params=desc.param_count, **fields
    )
