"""Scaled-YOLOv4 checkpoints made in the tests, and the PyTorch model's function computed independently.

* :func:`random_tensors` - a state dict of the PyTorch model a description builds (names and shapes from
  pydarknet.hub.scaled_yolov4.state_dict_shapes), random but well-conditioned.
* :func:`reference_forward` - the PyTorch model's forward (models/common.py semantics: BatchNorm over each
  concatenation with its own eps, Mish, max-pools padded with -inf, nearest upsampling, concatenations in PyTorch's
  order) in float64 numpy, written from the module definitions and not from the Darknet layout.
* :func:`write_checkpoint` - a torch.save-format file (zip, data.pkl + raw storages; optionally half precision)
  holding ``{'model': <models.yolo.Model>, ...}`` as the authors' training saves it, written without torch.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np

from pydarknet.hub import scaled_yolov4 as sy


def small_spec(name="p7", width=0.125, depth=0.2, nc=2):
    return dict(sy.SPECS[name], width_multiple=width, depth_multiple=depth, nc=nc)


def random_tensors(spec, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    detect = f"model.{len(sy.build_nodes(spec)) - 1}."
    for name, shape in sy.state_dict_shapes(spec).items():
        # Small variances make the batch-norm eps matter (eps 1e-3 is 5-50% of them), so a conversion that ignored
        # it would fail; convs before a batch-norm are scaled to match, the detector convs are not.
        if name.endswith("running_var"):
            v = rng.uniform(0.002, 0.02, shape)
        elif name.endswith("running_mean"):
            v = rng.normal(0, 0.2, shape)
        elif name.endswith(".bn.weight") or (name.endswith(".weight") and len(shape) == 1):
            v = rng.uniform(0.6, 1.2, shape)
        elif name.endswith("bias"):
            v = rng.normal(0, 0.2, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0, (0.3 if name.startswith(detect) else 0.1) / np.sqrt(fan_in), shape)
        out[name] = v.astype(np.float32)
    nodes = sy.build_nodes(spec)
    detect = nodes[-1]
    na = len(spec["anchors"][0]) // 2
    grid = np.array(spec["anchors"], dtype=np.float32).reshape(len(spec["anchors"]), 1, na, 1, 1, 2)
    out[f"model.{detect.index}.anchor_grid"] = grid
    strides = np.array([nodes[r].scale for r in detect.inputs], dtype=np.float32)
    out[f"model.{detect.index}.anchors"] = grid.reshape(len(strides), na, 2) / strides[:, None, None]
    return out


# ----- the PyTorch model's function -------------------------------------------------------------------------
def _conv(x, w, stride=1):
    c, h, wd = x.shape
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True)


def _mish(x):
    return x * np.tanh(np.logaddexp(0.0, x))


def _maxpool(x, k):
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2)).max(axis=(-1, -2))


def reference_forward(spec, t, x, eps=1e-3):
    """Detect's raw outputs (one (na*(nc+5), h, w) array per level) for one CHW image, in float64."""
    t = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}

    def bn(y, p):
        return (y - t[f"{p}.running_mean"][:, None, None]) / np.sqrt(t[f"{p}.running_var"][:, None, None] + eps) * t[
            f"{p}.weight"
        ][:, None, None] + t[f"{p}.bias"][:, None, None]

    def conv(p, y, stride=1):  # models.common.Conv
        return _mish(bn(_conv(y, t[f"{p}.conv.weight"], stride), f"{p}.bn"))

    def bottlenecks(p, y, n, add):
        for j in range(n):
            z = conv(f"{p}.m.{j}.cv2", conv(f"{p}.m.{j}.cv1", y))
            y = y + z if add else z
        return y

    nodes = sy.build_nodes(spec)
    outs = {}
    for node in nodes:
        p = f"model.{node.index}"
        xs = [x if r == -1 else outs[r] for r in node.inputs]
        y = xs[0]
        if node.module == "Conv":
            y = conv(p, y, node.stride)
        elif node.module == "Upsample":
            y = y.repeat(2, axis=1).repeat(2, axis=2)
        elif node.module == "Concat":
            y = np.concatenate(xs, axis=0)
        elif node.module == "BottleneckCSP":
            y1 = _conv(bottlenecks(p, conv(f"{p}.cv1", y), node.n, True), t[f"{p}.cv3.weight"])
            y2 = _conv(y, t[f"{p}.cv2.weight"])
            y = conv(f"{p}.cv4", _mish(bn(np.concatenate([y1, y2]), f"{p}.bn")))
        elif node.module == "BottleneckCSP2":
            x1 = conv(f"{p}.cv1", y)
            y1 = bottlenecks(p, x1, node.n, False)
            y2 = _conv(x1, t[f"{p}.cv2.weight"])
            y = conv(f"{p}.cv3", _mish(bn(np.concatenate([y1, y2]), f"{p}.bn")))
        elif node.module == "SPPCSP":
            x1 = conv(f"{p}.cv4", conv(f"{p}.cv3", conv(f"{p}.cv1", y)))
            pooled = np.concatenate([x1] + [_maxpool(x1, k) for k in (5, 9, 13)])
            y1 = conv(f"{p}.cv6", conv(f"{p}.cv5", pooled))
            y2 = _conv(y, t[f"{p}.cv2.weight"])
            y = conv(f"{p}.cv7", _mish(bn(np.concatenate([y1, y2]), f"{p}.bn")))
        elif node.module == "Detect":
            y = [_conv(xi, t[f"{p}.m.{k}.weight"]) + t[f"{p}.m.{k}.bias"][:, None, None] for k, xi in enumerate(xs)]
        outs[node.index] = y
    return outs[nodes[-1].index]


def yolo_expected(logits, na):
    """What a [yolo] layer with new_coords=1, scale_x_y=2 holds for Detect's raw outputs: sigmoid, then
    x, y -> 2 sigmoid - 0.5."""
    s = 1.0 / (1.0 + np.exp(-logits))
    s = s.reshape(na, -1, *s.shape[1:])
    s[:, 0:2] = 2.0 * s[:, 0:2] - 0.5
    return s.reshape(logits.shape)


# ----- a torch.save file written without torch ---------------------------------------------------------------
class _Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class _Obj:
    def __init__(self, module, name, state):
        self.cls, self.state = _Global(module, name), state


class _Tensor:
    def __init__(self, key, kind, shape, param):
        self.key, self.kind, self.shape, self.param = key, kind, tuple(shape), param


class _StorageRef:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class _Writer(pickle._Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", obj.numel)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Obj):
            self.save(obj.cls)
            self.save(())
            self.write(pickle.REDUCE)
            self.save(obj.state)
            self.write(pickle.BUILD)
        elif isinstance(obj, _Tensor):
            strides = [int(np.prod(obj.shape[i + 1 :])) for i in range(len(obj.shape))]
            numel = int(np.prod(obj.shape))
            if obj.param:
                self.save(_Global("torch._utils", "_rebuild_parameter"))
                self.write(pickle.MARK)
            self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
            self.save(
                (_StorageRef(obj.key, obj.kind, numel), 0, obj.shape, tuple(strides), False, collections.OrderedDict())
            )
            self.write(pickle.REDUCE)
            if obj.param:
                self.save(True)
                self.save(collections.OrderedDict())
                self.write(pickle.TUPLE + pickle.REDUCE)
        else:
            super().save(obj, save_persistent_id)


def write_checkpoint(path, spec, tensors, *, half=False, eps=1e-3, extra_globals=()):
    """``{'epoch': -1, 'model': Model, 'optimizer': None}`` as torch.save writes it; ``extra_globals`` adds
    (module, name) references the reader must refuse."""
    kind = "HalfStorage" if half else "FloatStorage"
    dtype = np.float16 if half else np.float32
    storages = {}

    def module(cls, children, params, buffers, **attrs):
        state = {
            "training": False,
            "_parameters": collections.OrderedDict(params),
            "_buffers": collections.OrderedDict(buffers),
            "_modules": collections.OrderedDict(children),
            **attrs,
        }
        return _Obj(*cls.rsplit(".", 1), state)

    tree: dict = {}
    for name in tensors:
        parts = name.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = name

    def build(node, path):
        children, params, buffers = {}, {}, {}
        for key, value in node.items():
            if isinstance(value, dict):
                children[key] = build(value, f"{path}.{key}" if path else key)
                continue
            key_ = str(len(storages))
            array = np.ascontiguousarray(tensors[value], dtype=dtype)
            storages[key_] = array
            is_buffer = key in ("running_mean", "running_var", "anchors", "anchor_grid")
            (buffers if is_buffer else params)[key] = _Tensor(key_, kind, array.shape, not is_buffer)
        if "running_mean" in buffers:
            return module("torch.nn.modules.batchnorm.BatchNorm2d", children, params, buffers, eps=eps, momentum=0.03)
        if "weight" in params and len(params["weight"].shape) == 4:
            return module("torch.nn.modules.conv.Conv2d", children, params, buffers, stride=(1, 1))
        return module("models.common.Conv", children, params, buffers)

    model = build(tree["model"], "model")
    yaml = {
        "nc": spec["nc"],
        "depth_multiple": spec["depth_multiple"],
        "width_multiple": spec["width_multiple"],
        "anchors": spec["anchors"],
        "backbone": [list(r) for r in spec["backbone"]],
        "head": [list(r) for r in spec["head"]],
    }
    root = module("models.yolo.Model", {"model": model}, {}, {}, yaml=yaml)
    ckpt = {"epoch": -1, "model": root, "optimizer": None, "training_results": None}
    for i, (m, n) in enumerate(extra_globals):
        ckpt[f"extra{i}"] = _Obj(m, n, {})
    buffer = io.BytesIO()
    _Writer(buffer, protocol=2).dump(ckpt)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            z.writestr(f"archive/data/{key}", array.tobytes())
        z.writestr("archive/version", "3\n")
    return path
