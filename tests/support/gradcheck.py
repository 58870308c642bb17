"""Finite-difference gradient checking of the engine's backward pass (used by test_gradients.py).

The truth is the float64 training-mode forward built from tests/reference.py: `reference_forward` runs a
network's layers on a flat float64 copy of its parameters. With the scalar loss L = sum over the chosen layers
of (output * R) for fixed random R, dL/doutput = R is what the engine's backward receives, and central
differences of L in float64 give every input and parameter derivative independently of the engine.

Error measure: err_i = |engine_i - fd_i| / max(|fd_i|, FLOOR * max|fd of the tensor|, NET_FLOOR * max|fd of all
checked tensors|). Entries of at least 1% of their tensor's largest are compared relatively. Smaller ones are
usually the result of cancellation, where float32 round-off of the large terms dominates, so they are compared
absolutely at 1% of the tensor's scale. A tensor whose true gradient vanishes (a bias right before batch-norm,
which removes any per-channel constant) has only round-off left: float32 values of the size of the network's
largest gradient, summed over n terms, leave ~1.2e-7 * sqrt(n) of it (measured: 2e-8 to 3e-7), hence the
network-wide floor of 1e-3, which with RTOL allows 1e-6 of the largest gradient there.

Tolerance (RTOL): float32 products summed over at most a few thousand terms in double or float, from float32
activations, carry relative errors of ~1e-7 per term and at worst ~1e-4 in total on well-conditioned entries
(measured: 1e-6 to 2e-5); central differences in float64 with a step of 1e-6 are exact to ~1e-9. 1e-3 keeps a
margin of 50x over what is measured while any real mistake shows: a missing term, a wrong index, or batch-norm's
N instead of N - 1 in the variance (1/N = 1% to 7% with these sizes) all give errors of 1e-2 or more.
"""

import numpy as np

from support import reference as ref

FLOOR = 0.01
NET_FLOOR = 1e-3
RTOL = 1e-3


def layer_params(net, flat, layer):
    return {t.name: flat[t.offset : t.offset + t.size].reshape(t.shape) for t in net.desc.layers[layer].tensors}


def reference_forward(net, flat, x, keep_masks=None):
    """Every layer's float64 training-mode output. [yolo] layers output their input: the engine's backward
    treats the gradient given for a yolo layer as the gradient of its input (Darknet's yolo delta)."""
    outs = []
    for layer in net.desc.layers:
        i, o = layer.index, layer.options
        prev = x if i == 0 else outs[-1]
        p = layer_params(net, flat, i)
        kind = layer.type
        if kind == "convolutional":
            y = ref.convolutional_train(
                prev,
                p["weights"],
                p["biases"],
                stride_x=o["stride_x"],
                stride_y=o["stride_y"],
                padding=o["padding"],
                dilation=o["dilation"],
                groups=o["groups"],
                batch_normalize=bool(o["batch_normalize"]),
                scales=p.get("scales"),
                activation=o["activation"],
            )
        elif kind == "connected":
            y = ref.connected_train(
                prev,
                p["weights"],
                p["biases"],
                batch_normalize=bool(o["batch_normalize"]),
                scales=p.get("scales"),
                activation=o["activation"],
            )
        elif kind == "maxpool":
            if o["maxpool_depth"]:
                y = ref.maxpool_depth(prev, out_channels=o["out_channels"])
            else:
                y = ref.maxpool(
                    prev, size=o["size"], stride_x=o["stride_x"], stride_y=o["stride_y"], padding=o["padding"]
                )
        elif kind == "local_avgpool":
            y = ref.local_avgpool(
                prev, size=o["size"], stride_x=o["stride_x"], stride_y=o["stride_y"], padding=o["padding"]
            )
        elif kind == "avgpool":
            y = ref.avgpool(prev)
        elif kind == "route":
            y = ref.route([outs[r] for r in o["layers"]], groups=o["groups"], group_id=o["group_id"])
        elif kind == "shortcut":
            y = ref.shortcut(
                prev,
                [outs[r] for r in o["from"]],
                activation=o["activation"],
                weights=p.get("weights"),
                weights_type=o["weights_type"],
                weights_normalization=o["weights_normalization"],
            )
        elif kind == "upsample":
            stride = -o["stride"] if o["reverse"] else o["stride"]
            y = ref.upsample(prev, stride=stride, scale=o["scale"])
        elif kind == "yolo":
            y = prev.copy()
        elif kind == "softmax":
            y = ref.softmax(prev, groups=o["groups"], temperature=o["temperature"]).reshape(prev.shape)
        elif kind == "dropout":
            y = ref.dropout_train(prev, keep_masks[i], o["probability"])
        elif kind == "batchnorm":
            y = ref.batchnorm_train(prev, p["scales"], p["biases"])[0]
        elif kind == "sam":
            y = ref.sam(prev, outs[o["from"]], activation=o["activation"])
        elif kind == "scale_channels":
            y = ref.scale_channels(prev, outs[o["from"]], scale_wh=o["scale_wh"], activation=o["activation"])
        elif kind == "reorg3d":
            y = (ref.reorg3d_reverse if o["reverse"] else ref.reorg3d)(prev, stride=o["stride"])
        elif kind in ("cost", "empty"):
            y = prev.copy()
        else:
            raise AssertionError(f"no reference for {kind}")
        assert y.shape[1:] == tuple(layer.out_shape), f"layer {i} ({kind}) reference shape {y.shape}"
        outs.append(y)
    return outs


def central_differences(f, v, indices, step):
    """d f / d v at the given flat indices of v (modified in place and restored)."""
    flat = v.reshape(-1)
    out = np.empty(len(indices))
    for n, i in enumerate(indices):
        keep = flat[i]
        h = step * max(1.0, abs(keep))
        flat[i] = keep + h
        up = f()
        flat[i] = keep - h
        down = f()
        flat[i] = keep
        out[n] = (up - down) / (2 * h)
    return out


def relative_errors(got, want, net_scale=0.0):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return np.abs(got - want) / np.maximum(np.abs(want), max(FLOOR * scale, NET_FLOOR * net_scale, 1e-30))


class GradCheck:
    """One engine backward pass and its finite-difference reference, tensor by tensor."""

    def __init__(self, net, x, seeds, *, seed=0, iteration=0, keep_masks=None, step=1e-6):
        self.net, self.step = net, step
        self.x = np.asarray(x, dtype=np.float32)
        self.x64 = self.x.astype(np.float64)
        self.flat = np.array(net.params, dtype=np.float64)  # the parameters the training forward reads
        self.outputs = net.forward_train(self.x, seed=seed, iteration=iteration)
        self.train_outputs = [net.train_output(i) for i in range(len(net.layers))]
        self.keep_masks = keep_masks
        if keep_masks is None:
            self.keep_masks = {
                l.index: self.train_outputs[l.index] != 0 for l in net.desc.layers if l.type == "dropout"
            }
        self.seeds = seeds
        net.zero_grads()
        self.input_grad = net.backward(seeds, input_grad=True)
        self.grads = np.array(net.grads, dtype=np.float64)

    def loss(self, flat=None, x=None):
        outs = reference_forward(
            self.net, self.flat if flat is None else flat, self.x64 if x is None else x, self.keep_masks
        )
        return sum(float(np.sum(outs[i] * np.asarray(r, dtype=np.float64))) for i, r in self.seeds.items())

    def reference_outputs(self):
        return reference_forward(self.net, self.flat, self.x64, self.keep_masks)

    def _indices(self, size, limit, rng):
        if limit is None or size <= limit:
            return np.arange(size)
        return np.sort(rng.choice(size, limit, replace=False))

    def input_fd(self, limit=None, rng=None):
        """(engine, finite differences) of the input gradient, at all entries or `limit` random ones."""
        idx = self._indices(self.x64.size, limit, rng)
        x = self.x64.copy()
        fd = central_differences(lambda: self.loss(x=x), x, idx, self.step)
        return self.input_grad.reshape(-1)[idx], fd

    def tensor_fd(self, layer, name, limit=None, rng=None):
        """(engine, finite differences) of one parameter tensor's gradient."""
        t = self.net.desc.layers[layer].tensor(name)
        idx = self._indices(t.size, limit, rng)
        flat = self.flat.copy()
        view = flat[t.offset : t.offset + t.size]
        fd = central_differences(lambda: self.loss(flat=flat), view, idx, self.step)
        return self.grads[t.offset + idx], fd

    def check_all(self, limit=None, rng=None, layers=None):
        """Compare the input gradient and every trainable tensor of `layers` (all by default) with finite
        differences; rolling statistics must get exactly 0. Returns {name: max error}; asserts err <= RTOL."""
        pairs = {"input": self.input_fd(limit, rng)}
        for layer in self.net.desc.layers:
            if layers is not None and layer.index not in layers:
                continue
            for t in layer.tensors:
                if t.name.startswith("rolling_"):
                    assert np.all(self.grads[t.offset : t.offset + t.size] == 0), (
                        f"layer {layer.index} {t.name}: rolling statistics must get no gradient"
                    )
                    continue
                pairs[f"{layer.index}.{layer.type}.{t.name}"] = self.tensor_fd(layer.index, t.name, limit, rng)
        net_scale = max(float(np.max(np.abs(fd))) for _, fd in pairs.values() if fd.size)
        assert net_scale > 0, "the loss does not depend on anything checked"
        errors = {}
        for name, (got, fd) in pairs.items():
            assert np.all(np.isfinite(got)), f"{name}: non-finite gradient"
            err = relative_errors(got, fd, net_scale)
            errors[name] = float(err.max()) if err.size else 0.0
            if errors[name] > RTOL:
                worst = int(np.argmax(err))
                raise AssertionError(
                    f"{name}: gradient off by {errors[name]:.3g} (relative) at entry {worst}: "
                    f"engine {got[worst]!r}, finite differences {fd[worst]!r}; "
                    f"all errors: {errors}"
                )
        return errors
