"""Random parameters that keep a whole network's activations of order one, for whole-network comparisons.

``randomize`` draws every parameter; ``calibrate`` then sets batch-norm statistics (and head scales) from a
float32 numpy forward of the cfg on the test input, as a trained network's would be. Without it, random
residual networks overflow and CSP networks decay to constants, and float32 rounding differences alone grow
by orders of magnitude with depth, which would make any comparison between two engines meaningless. Used by
the OpenCV parity tests, the CUDA tests and the benchmarks (the numpy forward is independent of the engine).
"""

import numpy as np


def read_sections(text):
    """[(section name, {key: value})] in file order, the first being [net]."""
    sections = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append((line.strip("[]").strip(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


def with_input_size(text, width, height):
    """The cfg text with width/height of the [net] section replaced."""
    out, in_net = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_net = stripped.strip("[]").strip() in ("net", "network")
        elif in_net:
            key = stripped.split("=", 1)[0].strip()
            if key == "width":
                line = f"width={width}"
            elif key == "height":
                line = f"height={height}"
        out.append(line)
    return "\n".join(out) + "\n"


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def randomize(net, rng):
    for layer in net.layers:
        p = layer.params
        if layer.type == "convolutional":
            w = p["weights"]
            fan_in = int(np.prod(w.shape[1:]))
            bound = np.sqrt(6.0 / fan_in)  # variance 2/fan_in
            w[...] = rng.uniform(-bound, bound, w.shape)
            p["biases"][...] = rng.uniform(-1.0, 1.0, p["biases"].shape)
            if "scales" in p:
                p["scales"][...] = rng.uniform(0.1, 0.3, p["scales"].shape)
                p["rolling_mean"][...] = 0.0
                p["rolling_variance"][...] = 1.0
        else:
            for name, arr in p.items():
                if name == "weights" and layer.type == "shortcut":
                    arr[...] = rng.uniform(0.5, 1.5, arr.shape)
                elif "variance" in name or name == "scales":
                    arr[...] = rng.uniform(0.5, 1.5, arr.shape)
                elif name == "weights":
                    fan_in = int(np.prod(arr.shape[1:]))
                    bound = np.sqrt(6.0 / fan_in)
                    arr[...] = rng.uniform(-bound, bound, arr.shape)
                else:
                    arr[...] = rng.uniform(-0.1, 0.1, arr.shape)


def _activate(y, name):
    if name == "linear":
        return y
    if name == "leaky":
        return np.where(y > 0, y, np.float32(0.1) * y)
    if name == "logistic":
        return sigmoid(y).astype(np.float32)
    if name == "swish":
        return (y * sigmoid(y)).astype(np.float32)
    if name == "mish":
        softplus = np.where(y > 20, y, np.log1p(np.exp(np.minimum(y, 20))))
        return (y * np.tanh(softplus)).astype(np.float32)
    raise NotImplementedError(f"activation {name} in the calibration forward")


def _conv2d(x, w, stride, pad, groups):
    """Plain convolution (no bias), float32, one matrix product per kernel tap."""
    n, _, height, width = x.shape
    out_c, cg, k, _ = w.shape
    oh = (height + 2 * pad - k) // stride + 1
    ow = (width + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, out_c, oh * ow), dtype=np.float32)
    og = out_c // groups
    for g in range(groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        for dy in range(k):
            for dx in range(k):
                patch = xg[:, :, dy : dy + stride * (oh - 1) + 1 : stride, dx : dx + stride * (ow - 1) + 1 : stride]
                out[:, g * og : (g + 1) * og] += np.matmul(
                    w[g * og : (g + 1) * og, :, dy, dx], patch.reshape(n, cg, oh * ow)
                )
    return out.reshape(n, out_c, oh, ow)


def _maxpool(x, size, stride):
    """Darknet maxpool with its default padding (size - 1, offset -padding/2)."""
    n, c, height, width = x.shape
    padding = size - 1
    oh = (height + padding - size) // stride + 1
    ow = (width + padding - size) // stride + 1
    off = padding // 2
    xp = np.full((n, c, height + padding + stride, width + padding + stride), -np.inf, dtype=np.float32)
    xp[:, :, off : off + height, off : off + width] = x
    out = np.full((n, c, oh, ow), -np.inf, dtype=np.float32)
    for dy in range(size):
        for dx in range(size):
            np.maximum(
                out,
                xp[:, :, dy : dy + stride * (oh - 1) + 1 : stride, dx : dx + stride * (ow - 1) + 1 : stride],
                out=out,
            )
    return out


def calibrate(net, text, x, rng, bn_eps=1e-6):
    """Choose batch-norm statistics and head scales from the activations of ``x``.

    One sequential float32 numpy forward of the cfg (conv, maxpool, route, shortcut, upsample,
    yolo, avgpool, softmax): each convolution's bare output is measured *before* its own
    parameters are applied, so every layer sees calibrated inputs.  Only the random parameters are
    chosen here; nothing is compared.
    """
    sections = read_sections(text)[1:]
    layers = {layer.index: layer for layer in net.layers}
    last_use = {}
    for i, (kind, o) in enumerate(sections):
        refs = [i - 1]
        if kind == "route":
            refs = [int(v) for v in o["layers"].split(",")]
        elif kind == "shortcut":
            refs = [i - 1, int(o["from"])]
        for r in refs:
            last_use[r if r >= 0 else i + r] = i
    outs = {}
    for i, (kind, o) in enumerate(sections):
        prev = outs[i - 1] if i > 0 else x.astype(np.float32)
        if kind == "convolutional":
            p = layers[i].params
            size = int(o.get("size", 1))
            pad = size // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            y = _conv2d(
                prev, np.asarray(p["weights"], dtype=np.float32), int(o.get("stride", 1)), pad, int(o.get("groups", 1))
            )
            n = y.shape[1]
            mean = y.mean(axis=(0, 2, 3), dtype=np.float64)
            var = y.var(axis=(0, 2, 3), dtype=np.float64)
            if "scales" in p:
                var = np.maximum(var, 0.01 * var.mean() + 1e-6)  # few samples in deep, small maps
                p["rolling_mean"][...] = mean + rng.uniform(-0.1, 0.1, n) * np.sqrt(var)
                p["rolling_variance"][...] = var * np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))
                rm = np.asarray(p["rolling_mean"], dtype=np.float32)[None, :, None, None]
                rv = np.asarray(p["rolling_variance"], dtype=np.float32)[None, :, None, None]
                sc = np.asarray(p["scales"], dtype=np.float32)[None, :, None, None]
                y = (y - rm) / np.sqrt(rv + np.float32(bn_eps)) * sc
            else:
                nxt = sections[i + 1][0] if i + 1 < len(sections) else None
                target = 2.0 if nxt == "softmax" else 1.0
                # one gain per layer from the overall rms: per-channel statistics can rest on very
                # few samples (a 1x1 map after avgpool), and a huge gain with a cancelling bias
                # would only measure float32 cancellation
                gain = target / max(float(np.sqrt(np.mean(var + mean**2))), 1e-6)
                p["weights"][...] *= np.float32(gain)
                p["biases"][...] = -mean * gain + rng.uniform(-0.5, 0.5, n) * target
                y = y * np.float32(gain)
            y = y + np.asarray(p["biases"], dtype=np.float32)[None, :, None, None]
            y = _activate(y.astype(np.float32), o.get("activation", "logistic"))
        elif kind == "maxpool":
            size = int(o.get("size", 1))
            y = _maxpool(prev, size, int(o.get("stride", size)))
        elif kind == "route":
            parts = []
            groups, gid = int(o.get("groups", 1)), int(o.get("group_id", 0))
            for r in (int(v) for v in o["layers"].split(",")):
                t = outs[r if r >= 0 else i + r]
                cg = t.shape[1] // groups
                parts.append(t[:, gid * cg : (gid + 1) * cg])
            y = np.concatenate(parts, axis=1)
        elif kind == "shortcut":
            r = int(o["from"])
            y = _activate(prev + outs[r if r >= 0 else i + r], o.get("activation", "linear"))
        elif kind == "upsample":
            s = int(o.get("stride", 2))
            y = prev.repeat(s, axis=2).repeat(s, axis=3)
        elif kind == "avgpool":
            y = prev.mean(axis=(2, 3), keepdims=True)
        elif kind in ("yolo", "softmax", "dropout"):
            y = prev
        else:
            raise NotImplementedError(f"[{kind}] in the calibration forward")
        outs[i] = y
        for r in [r for r in outs if last_use.get(r, -1) <= i and r != i]:
            del outs[r]
