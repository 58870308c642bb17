"""A Darknet cfg as a PyTorch module, for the GPU benchmarks (bench_gpu.py: inference, bench_gpu_train.py: training).

One builder for both so that the two benchmarks time the same graph: convolutions (groups, strides, dilation),
Darknet's activations, maxpool with Darknet's padding (SPP included), route (with groups), shortcut, upsample and
the [yolo] layers' transform, from a loaded pydarknet Network's description and parameters.

``fold_batchnorm=True`` (inference) folds batch norm into the convolution exactly as pydarknet folds it.
``fold_batchnorm=False`` (training) keeps a real ``nn.BatchNorm2d`` after each batch-normalized convolution, with
Darknet's epsilon and momentum .01 (Darknet's rolling update is .99 rolling + .01 batch, which is PyTorch's
momentum=0.01), initialised from the network's scales, biases and rolling statistics, so that PyTorch does the
same work per step as Darknet's training forward/backward. One difference that does not change the work: in
training mode PyTorch normalizes with the biased batch variance, Darknet with Bessel's; in eval mode both use the
rolling statistics, and the module then computes what pydarknet's ``forward`` computes.
"""

from __future__ import annotations

import numpy as np

# Darknet's rolling statistics: rolling = .99 rolling + .01 batch (PyTorch's momentum is the batch's weight).
DARKNET_BN_MOMENTUM = 0.01


def folded_conv(layer, bn_epsilon):
    """A convolution's weights and bias with batch norm folded in as pydarknet folds it (float64, then float32)."""
    p = {k: np.asarray(v) for k, v in layer.params.items()}
    w = p["weights"].astype(np.float64)
    b = p["biases"].astype(np.float64)
    if layer.options["batch_normalize"]:
        factor = p["scales"].astype(np.float64) / np.sqrt(p["rolling_variance"].astype(np.float64) + bn_epsilon)
        w = w * factor[:, None, None, None]
        b = b - p["rolling_mean"].astype(np.float64) * factor
    return w.astype(np.float32), b.astype(np.float32)


def build_torch_model(net, *, fold_batchnorm: bool = True):
    """A torch.nn.Module computing what pydarknet's forward() returns (the [yolo] layers' outputs, as a list).

    Raises NotImplementedError for a layer kind or option the PyTorch graph does not have."""
    import torch
    import torch.nn.functional as F

    activations = {
        "linear": lambda y: y,
        "leaky": lambda y: F.leaky_relu(y, 0.1),
        "mish": F.mish,
        "swish": F.silu,
        "logistic": torch.sigmoid,
        "relu": F.relu,
        "tanh": torch.tanh,
    }

    def activation(name):
        if name not in activations:
            raise NotImplementedError(f"activation {name} in the PyTorch graph")
        return activations[name]

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    class TorchDarknet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.desc = net.desc.layers
            self.convs = torch.nn.ModuleDict()
            self.norms = torch.nn.ModuleDict()
            for layer in self.desc:
                o = layer.options
                if layer.type == "convolutional":
                    self._add_conv(layer)
                elif layer.type == "maxpool" and o["maxpool_depth"]:
                    raise NotImplementedError("maxpool_depth in the PyTorch graph")
                elif layer.type == "shortcut" and (o["weights_type"] != "none" or len(layer.inputs) != 1):
                    raise NotImplementedError("weighted or multi-input shortcut in the PyTorch graph")
                elif layer.type not in ("convolutional", "maxpool", "route", "shortcut", "upsample", "yolo"):
                    raise NotImplementedError(f"[{layer.type}] in the PyTorch graph")
            last = {}
            for layer in self.desc:
                for r in ([layer.index - 1] if layer.type != "route" else []) + list(layer.inputs):
                    last[r] = layer.index
            self.last_use = last
            self.heads = [l.index for l in self.desc if l.type == "yolo"] or [len(self.desc) - 1]

        def _add_conv(self, layer):
            o = layer.options
            bn = bool(o["batch_normalize"])
            separate_bn = bn and not fold_batchnorm
            conv = torch.nn.Conv2d(
                layer.in_shape[0],
                o["filters"],
                o["size"],
                stride=(o["stride_y"], o["stride_x"]),
                padding=o["padding"] * o["dilation"],
                dilation=o["dilation"],
                groups=o["groups"],
                bias=not separate_bn,
            )
            p = {k: np.asarray(v) for k, v in net.layers[layer.index].params.items()}
            with torch.no_grad():
                if separate_bn:
                    conv.weight.copy_(tensor(p["weights"]))
                    norm = torch.nn.BatchNorm2d(o["filters"], eps=net.bn_epsilon, momentum=DARKNET_BN_MOMENTUM)
                    norm.weight.copy_(tensor(p["scales"]))
                    norm.bias.copy_(tensor(p["biases"]))
                    norm.running_mean.copy_(tensor(p["rolling_mean"]))
                    norm.running_var.copy_(tensor(p["rolling_variance"]))
                    self.norms[str(layer.index)] = norm
                else:
                    w, b = folded_conv(net.layers[layer.index], net.bn_epsilon)
                    conv.weight.copy_(torch.from_numpy(w))
                    conv.bias.copy_(torch.from_numpy(b))
            self.convs[str(layer.index)] = conv

        def forward(self, x):
            outs = {}
            prev = x
            for layer in self.desc:
                o, i = layer.options, layer.index
                if layer.type == "convolutional":
                    y = self.convs[str(i)](prev)
                    if str(i) in self.norms:
                        y = self.norms[str(i)](y)
                    y = activation(o["activation"])(y)
                elif layer.type == "maxpool":
                    size, sx, sy, padding = o["size"], o["stride_x"], o["stride_y"], o["padding"]
                    _, oh, ow = layer.out_shape
                    before = padding // 2
                    h, w = prev.shape[2], prev.shape[3]
                    right = max(0, (ow - 1) * sx + size - before - w)
                    bottom = max(0, (oh - 1) * sy + size - before - h)
                    y = F.pad(prev, (before, right, before, bottom), value=float("-inf"))
                    y = F.max_pool2d(y, size, (sy, sx))[:, :, :oh, :ow]
                elif layer.type == "route":
                    parts = []
                    for r in layer.inputs:
                        t = outs[r]
                        share = t.shape[1] // o["groups"]
                        parts.append(t[:, share * o["group_id"] : share * (o["group_id"] + 1)])
                    y = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
                elif layer.type == "shortcut":
                    y = activation(o["activation"])(prev + outs[layer.inputs[0]])
                elif layer.type == "upsample":
                    if o["reverse"]:
                        raise NotImplementedError("downsampling [upsample] in the PyTorch graph")
                    y = F.interpolate(prev, scale_factor=o["stride"], mode="nearest")
                    if o["scale"] != 1.0:
                        y = y * o["scale"]
                else:  # yolo
                    n, c, h, w = prev.shape
                    a = len(o["mask"])
                    t = prev.reshape(n, a, 5 + o["classes"], h, w)
                    if not o["new_coords"]:
                        t = torch.cat([torch.sigmoid(t[:, :, 0:2]), t[:, :, 2:4], torch.sigmoid(t[:, :, 4:])], 2)
                    s = o["scale_x_y"]
                    if s != 1.0:
                        t = torch.cat([t[:, :, 0:2] * s - 0.5 * (s - 1.0), t[:, :, 2:]], 2)
                    y = t.reshape(n, c, h, w)
                outs[i] = y
                prev = y
                # Drop outputs no later layer reads (autograd keeps what backward needs).
                for r in [r for r in outs if self.last_use.get(r, -1) <= i and r not in self.heads and r != i]:
                    del outs[r]
            return [outs[i] for i in self.heads]

    return TorchDarknet()
