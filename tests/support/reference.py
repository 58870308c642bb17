"""Naive float64 numpy references for Darknet's inference-time layers and activations.

Written to be obviously correct rather than fast: plain loops over kernel windows, pools and anchors, and
flat-index formulas where Darknet's own semantics are defined on the flat NCHW buffer (route, shortcut,
softmax, reorg3d, scale_channels). Every function takes and returns float64 ``(N, C, H, W)`` arrays
(connected/softmax/avgpool return ``(N, C, 1, 1)``).

Semantics follow AlexeyAB/darknet (`src/activations.[ch]`, `activation_kernels.cu`, `blas.c`,
`convolutional_layer.c`, `maxpool_layer.c`, `route_layer.c`, `shortcut_layer.c`, `upsample_layer.c`,
`yolo_layer.c`, `connected_layer.c`, `softmax_layer.c`, `sam_layer.c`, `scale_channels_layer.c`,
`reorg_layer.c`).
"""

import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
MISH_SOFTPLUS_THRESHOLD = 20.0
NORMALIZE_CHANNELS_EPS = 1e-4
SHORTCUT_WEIGHTS_EPS = 1e-4
BN_EPSILON = 1e-5


def _f64(x):
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# Activations (element-wise). Each takes a float64 array and returns a new one.
# ----------------------------------------------------------------------------------------------------------


def _sigmoid(x):
    # 1 / (1 + e^-x), written to avoid overflow warnings for very negative x
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def act_linear(x):
    return x.copy()


def act_leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def act_relu(x):
    return np.where(x > 0, x, 0.0)


def act_relu6(x):
    # min(max(x, 0), 6) -- the GPU kernel and activations.h. (AlexeyAB's CPU `activate()` switch has no RELU6
    # case and returns 0; that is a Darknet bug, the intended function is the clamp.)
    return np.minimum(np.maximum(x, 0.0), 6.0)


def act_relie(x):
    return np.where(x > 0, x, 0.01 * x)


def act_ramp(x):
    return x * (x > 0) + 0.1 * x


def act_logistic(x):
    return _sigmoid(x)


def act_loggy(x):
    return 2.0 * _sigmoid(x) - 1.0


def act_tanh(x):
    # Darknet writes 2/(1+e^-2x) - 1, which is tanh
    return np.tanh(x)


def act_elu(x):
    return np.where(x >= 0, x, np.expm1(np.minimum(x, 0.0)))


def act_selu(x):
    return np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * np.expm1(np.minimum(x, 0.0)))


def act_gelu(x):
    # tanh approximation with Darknet's rounded constants (0.797885 ~ sqrt(2/pi), 0.035677 ~ 0.044715*sqrt(2/pi))
    return 0.5 * x * (1.0 + np.tanh(0.797885 * x + 0.035677 * x**3))


def act_plse(x):
    return np.where(x < -4, 0.01 * (x + 4), np.where(x > 4, 0.01 * (x - 4) + 1.0, 0.125 * x + 0.5))


def act_hardtan(x):
    return np.clip(x, -1.0, 1.0)


def act_lhtan(x):
    return np.where(x < 0, 0.001 * x, np.where(x > 1, 0.001 * (x - 1) + 1.0, x))


def act_stair(x):
    out = np.empty_like(x)
    flat_in = x.reshape(-1)
    flat_out = out.reshape(-1)
    for i, v in enumerate(flat_in):
        n = math.floor(v)
        if n % 2 == 0:
            flat_out[i] = math.floor(v / 2.0)
        else:
            flat_out[i] = (v - n) + math.floor(v / 2.0)
    return out


def act_swish(x):
    return x * _sigmoid(x)


def softplus(x, threshold=MISH_SOFTPLUS_THRESHOLD):
    # Darknet: x above threshold, e^x below -threshold, log(1 + e^x) in between
    mid = np.log1p(np.exp(np.clip(x, -threshold, threshold)))
    return np.where(x > threshold, x, np.where(x < -threshold, np.exp(np.minimum(x, 0.0)), mid))


def act_mish(x):
    return x * np.tanh(softplus(x))


def act_hard_mish(x):
    return np.where(x > 0, x, np.where(x > -2, x * x / 2.0 + x, 0.0))


def act_revleaky(x):
    # forward is leaky; only the GPU gradient differs
    return act_leaky(x)


# Note: conv and shortcut layers dispatch swish/mish/hard_mish (and the channel-wise ones) to dedicated
# functions; other layers (connected, sam, scale_channels) go through `activate_array` -> `activate()`, whose
# switch in AlexeyAB has no case for relu6/swish/mish/hard_mish and so yields 0 for them. These references apply
# the real function in every layer; that fallback is a Darknet defect, not a semantics to reproduce.
ELEMENTWISE_ACTIVATIONS = {
    "linear": act_linear,
    "leaky": act_leaky,
    "relu": act_relu,
    "relu6": act_relu6,
    "relie": act_relie,
    "ramp": act_ramp,
    "logistic": act_logistic,
    "loggy": act_loggy,
    "tanh": act_tanh,
    "elu": act_elu,
    "selu": act_selu,
    "gelu": act_gelu,
    "plse": act_plse,
    "hardtan": act_hardtan,
    "lhtan": act_lhtan,
    "stair": act_stair,
    "swish": act_swish,
    "mish": act_mish,
    "hard_mish": act_hard_mish,
    "revleaky": act_revleaky,
}


# Channel-wise activations (per batch item and pixel, over the channel axis; conv layers only in Darknet).


def normalize_channels(x):
    x = _f64(x)
    pos = np.where(x > 0, x, 0.0)
    total = NORMALIZE_CHANNELS_EPS + pos.sum(axis=1, keepdims=True)
    return np.where(x > 0, x / total, 0.0)


def normalize_channels_softmax(x, use_max_val=False):
    x = _f64(x)
    shift = x.max(axis=1, keepdims=True) if use_max_val else 0.0
    e = np.exp(x - shift)
    return e / (NORMALIZE_CHANNELS_EPS + e.sum(axis=1, keepdims=True))


CHANNEL_ACTIVATIONS = {
    "normalize_channels": normalize_channels,
    "normalize_channels_softmax": lambda x: normalize_channels_softmax(x, use_max_val=False),
    "normalize_channels_softmax_maxval": lambda x: normalize_channels_softmax(x, use_max_val=True),
}

ALL_ACTIVATIONS = list(ELEMENTWISE_ACTIVATIONS) + list(CHANNEL_ACTIVATIONS)


def activate(x, name):
    """Apply a Darknet activation. Channel-wise ones need x shaped (N, C, ...)."""
    x = _f64(x)
    if name in ELEMENTWISE_ACTIVATIONS:
        return ELEMENTWISE_ACTIVATIONS[name](x)
    if name in CHANNEL_ACTIVATIONS:
        return CHANNEL_ACTIVATIONS[name](x)
    raise KeyError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------------------------------------
# Convolutional / connected
# ----------------------------------------------------------------------------------------------------------


def conv_out_size(in_size, size, stride, padding):
    """Darknet's conv output size: (in + 2*padding - size) / stride + 1 (dilation is not part of it)."""
    return (in_size + 2 * padding - size) // stride + 1


def conv_padding(size, pad, padding):
    """`pad=1` overrides `padding` with size/2."""
    return size // 2 if pad else padding


def batchnorm(x, scales, mean, variance, eps=BN_EPSILON):
    """Inference batch norm over axis 1 with rolling statistics, without the bias."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = _f64(mean).reshape(shape)
    v = _f64(variance).reshape(shape)
    s = _f64(scales).reshape(shape)
    return (x - m) / np.sqrt(v + eps) * s


def conv2d_raw(x, weights, *, stride_x=1, stride_y=1, padding=0, dilation=1, groups=1):
    """Convolution without bias, as a direct sum over the kernel window: for every kernel tap (ky, kx) the
    input samples it touches for all output pixels are multiplied by that tap's weights and accumulated.

    Darknet pads by `padding*dilation` (im2col_cpu_ext is called with l.pad*l.dilation) and sizes the output
    with `(in + 2*padding - size)/stride + 1`; out-of-image samples read 0.
    """
    x = _f64(x)
    w = _f64(weights)
    n_batch, c, h, wid = x.shape
    n_out, c_per_group, ksize, ksize2 = w.shape
    assert ksize == ksize2
    assert c % groups == 0 and n_out % groups == 0 and c_per_group == c // groups
    if ksize == 1:
        dilation = 1
    out_h = conv_out_size(h, ksize, stride_y, padding)
    out_w = conv_out_size(wid, ksize, stride_x, padding)
    pad_eff = padding * dilation
    # zero border: pad_eff before, and after as much as the last window can reach
    after_h = max(0, (out_h - 1) * stride_y + (ksize - 1) * dilation + 1 - pad_eff - h)
    after_w = max(0, (out_w - 1) * stride_x + (ksize - 1) * dilation + 1 - pad_eff - wid)
    xp = np.pad(x, ((0, 0), (0, 0), (pad_eff, after_h), (pad_eff, after_w)))
    n_per_group = n_out // groups
    out = np.zeros((n_batch, n_out, out_h, out_w))
    for ky in range(ksize):
        y0 = ky * dilation
        for kx in range(ksize):
            x0 = kx * dilation
            taps = xp[
                :, :, y0 : y0 + (out_h - 1) * stride_y + 1 : stride_y, x0 : x0 + (out_w - 1) * stride_x + 1 : stride_x
            ]
            for g in range(groups):
                xin = taps[:, g * c_per_group : (g + 1) * c_per_group]  # (N, c/g, oh, ow)
                wk = w[g * n_per_group : (g + 1) * n_per_group, :, ky, kx]  # (n/g, c/g)
                out[:, g * n_per_group : (g + 1) * n_per_group] += np.einsum("nchw,oc->nohw", xin, wk)
    return out


def conv2d_naive(x, weights, *, stride_x=1, stride_y=1, padding=0, dilation=1, groups=1):
    """The same convolution as seven nested loops over scalars (slow; for checking conv2d_raw on tiny inputs)."""
    x = _f64(x)
    w = _f64(weights)
    n_batch, c, h, wid = x.shape
    n_out, c_per_group, ksize, _ = w.shape
    if ksize == 1:
        dilation = 1
    out_h = conv_out_size(h, ksize, stride_y, padding)
    out_w = conv_out_size(wid, ksize, stride_x, padding)
    n_per_group = n_out // groups
    out = np.zeros((n_batch, n_out, out_h, out_w))
    for b in range(n_batch):
        for o in range(n_out):
            g = o // n_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    acc = 0.0
                    for ci in range(c_per_group):
                        for ky in range(ksize):
                            for kx in range(ksize):
                                iy = oy * stride_y - padding * dilation + ky * dilation
                                ix = ox * stride_x - padding * dilation + kx * dilation
                                if 0 <= iy < h and 0 <= ix < wid:
                                    acc += x[b, g * c_per_group + ci, iy, ix] * w[o, ci, ky, kx]
                    out[b, o, oy, ox] = acc
    return out


def convolutional(
    x,
    weights,
    biases,
    *,
    stride_x=1,
    stride_y=1,
    padding=0,
    dilation=1,
    groups=1,
    batch_normalize=False,
    scales=None,
    rolling_mean=None,
    rolling_variance=None,
    activation="logistic",
    bn_eps=BN_EPSILON,
):
    """Darknet [convolutional] forward at inference: conv -> (BN with rolling stats) -> +bias -> activation."""
    y = conv2d_raw(x, weights, stride_x=stride_x, stride_y=stride_y, padding=padding, dilation=dilation, groups=groups)
    if batch_normalize:
        y = batchnorm(y, scales, rolling_mean, rolling_variance, bn_eps)
    y = y + _f64(biases).reshape(1, -1, 1, 1)
    return activate(y, activation)


def connected(
    x,
    weights,
    biases,
    *,
    batch_normalize=False,
    scales=None,
    rolling_mean=None,
    rolling_variance=None,
    activation="logistic",
    bn_eps=BN_EPSILON,
):
    """Darknet [connected]: out = W . flatten(x) -> (BN) -> +bias -> activation; returns (N, out, 1, 1)."""
    x = _f64(x)
    flat = x.reshape(x.shape[0], -1)
    w = _f64(weights)
    y = np.zeros((flat.shape[0], w.shape[0]))
    for b in range(flat.shape[0]):
        for o in range(w.shape[0]):
            y[b, o] = np.dot(w[o], flat[b])
    if batch_normalize:
        y = batchnorm(y, scales, rolling_mean, rolling_variance, bn_eps)
    y = y + _f64(biases).reshape(1, -1)
    y = activate(y, activation)
    return y.reshape(y.shape[0], -1, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------------------


def pool_out_size(in_size, size, stride, padding):
    """Darknet maxpool/local_avgpool: (in + padding - size) / stride + 1 (padding is the total, not per side)."""
    return (in_size + padding - size) // stride + 1


def _pool_windows(h, w, size, stride_x, stride_y, padding):
    out_h = pool_out_size(h, size, stride_y, padding)
    out_w = pool_out_size(w, size, stride_x, padding)
    offset = -(padding // 2)
    for i in range(out_h):
        for j in range(out_w):
            rows = [offset + i * stride_y + n for n in range(size)]
            cols = [offset + j * stride_x + m for m in range(size)]
            rows = [r for r in rows if 0 <= r < h]
            cols = [c for c in cols if 0 <= c < w]
            yield i, j, rows, cols


def maxpool(x, *, size, stride_x, stride_y, padding=None):
    """Darknet [maxpool]: window offset -padding/2, out-of-image samples are -FLT_MAX."""
    x = _f64(x)
    if padding is None:
        padding = size - 1
    n, c, h, w = x.shape
    out_h = pool_out_size(h, size, stride_y, padding)
    out_w = pool_out_size(w, size, stride_x, padding)
    out = np.full((n, c, out_h, out_w), -FLT_MAX)
    for i, j, rows, cols in _pool_windows(h, w, size, stride_x, stride_y, padding):
        if rows and cols:
            window = x[:, :, rows][:, :, :, cols]
            out[:, :, i, j] = np.maximum(window.max(axis=(2, 3)), -FLT_MAX)
    return out


def maxpool_depth(x, *, out_channels=1):
    """Darknet [maxpool] maxpool_depth=1: out[g] = max over input channels g, g+out_c, g+2*out_c, ..."""
    x = _f64(x)
    n, c, h, w = x.shape
    out = np.full((n, out_channels, h, w), -FLT_MAX)
    for g in range(out_channels):
        for k in range(g, c, out_channels):
            out[:, g] = np.maximum(out[:, g], x[:, k])
    return out


def local_avgpool(x, *, size, stride_x, stride_y, padding=None):
    """Darknet [local_avgpool]: same windows as maxpool, average over the in-image samples only."""
    x = _f64(x)
    if padding is None:
        padding = size - 1
    n, c, h, w = x.shape
    out_h = pool_out_size(h, size, stride_y, padding)
    out_w = pool_out_size(w, size, stride_x, padding)
    out = np.zeros((n, c, out_h, out_w))
    for i, j, rows, cols in _pool_windows(h, w, size, stride_x, stride_y, padding):
        window = x[:, :, rows][:, :, :, cols]
        out[:, :, i, j] = window.sum(axis=(2, 3)) / (len(rows) * len(cols))
    return out


def avgpool(x):
    """Darknet [avgpool]: global average -> (N, C, 1, 1)."""
    x = _f64(x)
    n, c, h, w = x.shape
    out = np.zeros((n, c, 1, 1))
    for b in range(n):
        for k in range(c):
            out[b, k, 0, 0] = x[b, k].sum() / (h * w)
    return out


# ----------------------------------------------------------------------------------------------------------
# Routing / merging
# ----------------------------------------------------------------------------------------------------------


def route(inputs, *, groups=1, group_id=0):
    """Darknet [route]: from each input's flat per-image buffer take the part [group_id*P, (group_id+1)*P)
    with P = size/groups, and concatenate the parts (channel axis)."""
    inputs = [_f64(a) for a in inputs]
    n, _, h, w = inputs[0].shape
    parts = []
    for a in inputs:
        assert a.shape[0] == n and a.shape[2:] == (h, w), "route inputs must share N, H and W"
        flat = a.reshape(n, -1)
        part = flat.shape[1] // groups
        parts.append(flat[:, group_id * part : (group_id + 1) * part])
    out = np.concatenate(parts, axis=1)
    return out.reshape(n, -1, h, w)


def shortcut_weight_count(weights_type, n_from, channels):
    if weights_type in ("per_feature", "per_layer"):
        return n_from + 1
    if weights_type == "per_channel":
        return (n_from + 1) * channels
    return 0


def shortcut(x, froms, *, activation="linear", weights=None, weights_type="none", weights_normalization="none"):
    """Darknet [shortcut] (shortcut_multilayer_cpu).

    out = w0*in + sum_k w_k*from_k over the flat per-image buffer; a `from` with fewer elements only adds to the
    overlapping prefix. Weights: per_feature/per_layer -> one weight per input (index k), per_channel -> one per
    input and channel (index k*C + c). Normalisation over the n+1 weights of an element: relu -> relu(w)/(eps +
    sum relu(w)), softmax -> exp(w-max)/(eps + sum exp(w-max)), eps = 1e-4 (avg_relu is treated as relu).
    The activation is applied after the sum.
    """
    x = _f64(x)
    n, c, h, w = x.shape
    src_outputs = c * h * w
    n_from = len(froms)
    use_weights = weights_type not in (None, "none")
    if use_weights:
        wts = _f64(weights).reshape(-1)
        nweights = shortcut_weight_count(weights_type, n_from, c)
        assert wts.size == nweights
        layer_step = nweights // (n_from + 1)
        step = src_outputs // layer_step
    norm = weights_normalization or "none"
    if norm == "avg_relu":
        norm = "relu"

    def weight_set(src_i):
        idx = [src_i // step + k * layer_step for k in range(n_from + 1)]
        raw = wts[idx]
        if norm == "relu":
            r = np.maximum(raw, 0.0)
            return r / (SHORTCUT_WEIGHTS_EPS + r.sum())
        if norm == "softmax":
            e = np.exp(raw - raw.max())
            return e / (SHORTCUT_WEIGHTS_EPS + e.sum())
        return raw

    x_flat = x.reshape(n, -1)
    from_flats = [_f64(f).reshape(_f64(f).shape[0], -1) for f in froms]
    out = np.zeros_like(x_flat)
    for src_i in range(src_outputs):
        ws = weight_set(src_i) if use_weights else np.ones(n_from + 1)
        out[:, src_i] = x_flat[:, src_i] * ws[0]
        for k, f in enumerate(from_flats):
            if src_i < f.shape[1]:
                out[:, src_i] += f[:, src_i] * ws[k + 1]
    out = out.reshape(n, c, h, w)
    return activate(out, activation)


def sam(x, from_output, *, activation="linear"):
    """Darknet [sam]: out = input * from (element-wise), then activation."""
    return activate(_f64(x) * _f64(from_output), activation)


def scale_channels(x, from_output, *, scale_wh=0, activation="linear"):
    """Darknet [scale_channels]: the layer input holds the scales, `from` the feature map.

    scale_wh=0: out[b,c,h,w] = input_flat[b*C + c] * from[b,c,h,w]   (input is (N, C, 1, 1))
    scale_wh=1: out[b,c,h,w] = input[b, 0, h, w] * from[b,c,h,w]     (input is (N, 1, H, W))
    """
    x = _f64(x)
    f = _f64(from_output)
    n, c, h, w = f.shape
    out = np.zeros_like(f)
    flat_in = x.reshape(-1)
    for b in range(n):
        for k in range(c):
            if scale_wh:
                out[b, k] = x.reshape(n, -1)[b].reshape(h, w) * f[b, k]
            else:
                out[b, k] = flat_in[b * c + k] * f[b, k]
    return activate(out, activation)


# ----------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------


def upsample(x, *, stride=2, scale=1.0):
    """Darknet [upsample]: stride>0 -> nearest-neighbour x stride times scale;
    stride<0 -> out = scale * sum of each |stride| x |stride| block (input beyond out*|stride| is ignored)."""
    x = _f64(x)
    n, c, h, w = x.shape
    if stride > 0:
        out = np.zeros((n, c, h * stride, w * stride))
        for j in range(h * stride):
            for i in range(w * stride):
                out[:, :, j, i] = scale * x[:, :, j // stride, i // stride]
        return out
    s = -stride
    out_h, out_w = h // s, w // s
    out = np.zeros((n, c, out_h, out_w))
    for j in range(out_h * s):
        for i in range(out_w * s):
            out[:, :, j // s, i // s] += scale * x[:, :, j, i]
    return out


def reorg_cpu(x_flat, out_w, out_h, out_c, batch, stride, forward):
    """Darknet blas.c reorg_cpu on flat buffers (index maps only)."""
    x_flat = _f64(x_flat).reshape(-1)
    out = np.zeros_like(x_flat)
    in_c = out_c // (stride * stride)
    for b in range(batch):
        for k in range(out_c):
            c2 = k % in_c
            offset = k // in_c
            for j in range(out_h):
                h2 = j * stride + offset // stride
                for i in range(out_w):
                    w2 = i * stride + offset % stride
                    small = i + out_w * (j + out_h * (k + out_c * b))
                    big = w2 + out_w * stride * (h2 + out_h * stride * (c2 + in_c * b))
                    if forward:
                        out[big] = x_flat[small]
                    else:
                        out[small] = x_flat[big]
    return out


def reorg3d(x, *, stride):
    """Darknet [reorg3d] (reverse=0): space-to-depth,
    out[b, k, j, i] = in[b, k % C, j*s + (k // C) // s, i*s + (k // C) % s], out = (C*s*s, H/s, W/s)."""
    x = _f64(x)
    n, c, h, w = x.shape
    out_w, out_h, out_c = w // stride, h // stride, c * stride * stride
    assert out_w * stride == w and out_h * stride == h, "reorg3d reference needs H and W divisible by stride"
    flat = reorg_cpu(x.reshape(-1), out_w, out_h, out_c, n, stride, forward=0)
    return flat[: n * out_c * out_h * out_w].reshape(n, out_c, out_h, out_w)


def reorg3d_direct(x, *, stride):
    """The same space-to-depth written directly from the formula (used to check reorg3d)."""
    x = _f64(x)
    n, c, h, w = x.shape
    s = stride
    out = np.zeros((n, c * s * s, h // s, w // s))
    for k in range(c * s * s):
        off = k // c
        for j in range(h // s):
            for i in range(w // s):
                out[:, k, j, i] = x[:, k % c, j * s + off // s, i * s + off % s]
    return out


# ----------------------------------------------------------------------------------------------------------
# Heads and misc
# ----------------------------------------------------------------------------------------------------------


def yolo(x, *, n_anchors, classes, scale_x_y=1.0, new_coords=0):
    """Darknet [yolo] forward: per anchor (planar, 5+classes channels each) logistic on x, y, obj and the
    classes unless new_coords=1; then x, y <- x*s - 0.5*(s-1) in both cases. w, h stay raw."""
    x = _f64(x).copy()
    n, c, h, w = x.shape
    per = 5 + classes
    assert c == n_anchors * per
    out = x.copy()
    for a in range(n_anchors):
        base = a * per
        if not new_coords:
            out[:, base + 0 : base + 2] = _sigmoid(x[:, base + 0 : base + 2])
            out[:, base + 4 : base + per] = _sigmoid(x[:, base + 4 : base + per])
        out[:, base + 0 : base + 2] = out[:, base + 0 : base + 2] * scale_x_y - 0.5 * (scale_x_y - 1.0)
    return out


def softmax(x, *, groups=1, temperature=1.0):
    """Darknet [softmax] (no tree): over `groups` contiguous slices of the flat per-image input;
    e_i = exp(x_i/t - max/t). Returns (N, inputs, 1, 1)."""
    x = _f64(x)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    inputs = flat.shape[1]
    size = inputs // groups
    out = np.zeros_like(flat)
    for b in range(n):
        for g in range(groups):
            seg = flat[b, g * size : (g + 1) * size]
            e = np.exp(seg / temperature - seg.max() / temperature)
            out[b, g * size : (g + 1) * size] = e / e.sum()
    return out.reshape(n, inputs, 1, 1)


def dropout(x):
    """Darknet [dropout] at inference: identity."""
    return _f64(x).copy()


def reorg3d_reverse(x, *, stride):
    """Darknet [reorg3d] reverse=1 as AlexeyAB runs it: reorg_cpu(input, out_w=W*s, out_h=H*s, out_c=C/s^2,
    forward=1) -- note this passes the *output* dims, so the inner channel count is C/s^4 and the result is not
    the inverse of the forward reorg3d. Output shape (C/s^2, H*s, W*s)."""
    x = _f64(x)
    n, c, h, w = x.shape
    s = stride
    out_c, out_h, out_w = c // (s * s), h * s, w * s
    assert out_c % (s * s) == 0, "this reference needs C divisible by stride**4"
    flat = reorg_cpu(x.reshape(-1), out_w, out_h, out_c, n, s, forward=1)
    return flat.reshape(n, out_c, out_h, out_w)


# ----------------------------------------------------------------------------------------------------------
# Training mode (forward with batch statistics; the gradient tests differentiate these numerically)
# ----------------------------------------------------------------------------------------------------------

BN_ROLLING_MOMENTUM = 0.99


def batchnorm_train(x, scales, biases, eps=BN_EPSILON):
    """Darknet's training batch norm over axis 1 (forward_batchnorm_layer with state.train): per channel, the
    mean over batch and positions (mean_cpu) and the variance with Bessel's correction (variance_cpu divides by
    count - 1), then scale * (x - mean) / sqrt(variance + eps) + bias. Returns (y, mean, variance)."""
    x = _f64(x)
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // x.shape[1]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    variance = ((x - mean.reshape(shape)) ** 2).sum(axis=axes) / (count - 1)
    xhat = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + eps)
    y = xhat * _f64(scales).reshape(shape) + _f64(biases).reshape(shape)
    return y, mean, variance


def rolling_update(rolling, batch_stat):
    """Darknet's GPU rolling statistics (cuDNN factor .01): rolling = .99 rolling + .01 batch statistic."""
    return BN_ROLLING_MOMENTUM * _f64(rolling) + (1.0 - BN_ROLLING_MOMENTUM) * _f64(batch_stat)


def convolutional_train(
    x,
    weights,
    biases,
    *,
    stride_x=1,
    stride_y=1,
    padding=0,
    dilation=1,
    groups=1,
    batch_normalize=False,
    scales=None,
    activation="logistic",
    bn_eps=BN_EPSILON,
):
    """[convolutional] in training: conv -> (BN on batch statistics, which adds the bias) or +bias -> activation."""
    y = conv2d_raw(x, weights, stride_x=stride_x, stride_y=stride_y, padding=padding, dilation=dilation, groups=groups)
    if batch_normalize:
        y = batchnorm_train(y, scales, biases, bn_eps)[0]
    else:
        y = y + _f64(biases).reshape(1, -1, 1, 1)
    return activate(y, activation)


def connected_train(
    x, weights, biases, *, batch_normalize=False, scales=None, activation="logistic", bn_eps=BN_EPSILON
):
    """[connected] in training: W . flatten(x) -> (BN over the images) or +bias -> activation; (N, out, 1, 1)."""
    x = _f64(x)
    y = x.reshape(x.shape[0], -1) @ _f64(weights).T
    if batch_normalize:
        y = batchnorm_train(y, scales, biases, bn_eps)[0]
    else:
        y = y + _f64(biases).reshape(1, -1)
    return activate(y, activation).reshape(y.shape[0], -1, 1, 1)


def dropout_train(x, keep, probability):
    """[dropout] in training: kept values scaled by 1 / (1 - probability), the others 0."""
    return np.where(keep, _f64(x) / (1.0 - probability), 0.0)


# ----------------------------------------------------------------------------------------------------------
# Helpers shared by the tests (numpy only)
# ----------------------------------------------------------------------------------------------------------


def cfg_text(width, height, channels, *sections):
    """A cfg: [net] with the input size, then each section given as (name, {key: value}) in order."""
    lines = ["[net]", f"width={width}", f"height={height}", f"channels={channels}", ""]
    for name, keys in sections:
        lines.append(f"[{name}]")
        for key, value in keys.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            lines.append(f"{key}={value}")
        lines.append("")
    return "\n".join(lines)


def max_error(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want))) if want.size else 0.0


def assert_close(got, want, rtol=1e-4, what="output"):
    """Float32-appropriate comparison: |got - want| <= rtol*|want| + rtol*max|want| element-wise
    (max|want| floored at 1e-3), finite values, identical shapes."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values in the engine output"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-3)
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + rtol * scale
    bad = err > bound
    if np.any(bad):
        idx = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} values off; worst at {idx}: got {got[idx]!r}, "
            f"expected {want[idx]!r} (abs err {err[idx]:.3g}, bound {bound[idx]:.3g}); "
            f"max abs err {err.max():.3g}, scale {scale:.3g}"
        )


# ----------------------------------------------------------------------------------------------------------
# Engine harness (imports pydarknet lazily so the references stay usable without the engine)
# ----------------------------------------------------------------------------------------------------------


def load_cfg(tmp_path, text, name="net.cfg", **kwargs):
    import os

    import pydarknet

    path = tmp_path / name
    path.write_text(text)
    kwargs.setdefault("device", os.environ.get("PYDARKNET_TEST_DEVICE", "cpu"))
    return pydarknet.load(str(path), **kwargs)


def randomize_params(net, rng, weight_gain=1.0):
    """Fill every parameter tensor with random float32 values (BN variances and scales positive)."""
    for layer in net.layers:
        for name, view in layer.params.items():
            shape = view.shape
            if name == "rolling_variance":
                vals = rng.uniform(0.25, 2.0, shape)
            elif name == "scales":
                vals = rng.uniform(0.5, 1.5, shape)
            elif name == "rolling_mean":
                vals = rng.normal(0.0, 0.5, shape)
            elif name == "biases":
                vals = rng.normal(0.0, 0.5, shape)
            elif name == "weights" and layer.type in ("convolutional", "connected"):
                fan_in = int(np.prod(shape[1:]))
                vals = rng.normal(0.0, weight_gain / np.sqrt(fan_in), shape)
            else:
                vals = rng.normal(0.0, 1.0, shape)
            view[...] = vals.astype(np.float32)


def params64(layer):
    """A layer's parameters as float64 copies (what the engine actually holds)."""
    return {name: np.array(view, dtype=np.float64) for name, view in layer.params.items()}


def random_input(rng, n, c, h, w):
    return rng.random((n, c, h, w), dtype=np.float32)


def layer_input(outputs, x, index):
    """The input of layer `index` (the previous layer's output, or the network input)."""
    return x if index == 0 else outputs[index - 1]
