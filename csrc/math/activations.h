// Darknet's activation functions, written once for the CPU and the CUDA kernels (see activations.c and
// activations.h in Darknet for the formulas). The enum order is the activation code that the Python side
// sends (pydarknet/graph.py ACTIVATIONS); keep the two in sync.
#pragma once

#include <float.h>
#include <math.h>

#include "../core/common.h"

namespace pd {

// clang-format off: the codes in rows, as the Python list reads
enum Activation : int {
    LINEAR, LOGISTIC, LOGGY, RELU, ELU, SELU, GELU, RELIE, RAMP, LEAKY, TANH, PLSE, STAIR, HARDTAN, LHTAN,
    SWISH, MISH, HARD_MISH, RELU6, REVLEAKY, NORM_CHAN, NORM_CHAN_SOFTMAX, NORM_CHAN_SOFTMAX_MAXVAL,
    ACTIVATION_COUNT
};
// clang-format on

// The three normalize_channels variants mix all channels of a pixel, so they are not element-wise.
PD_HD bool is_channel_activation(int a) { return a >= NORM_CHAN; }

// e^x within about 2 ulp for x in [-87, 88] (clamped outside): a range reduction to r in [-ln2/2, ln2/2] and a
// degree-6 polynomial (the Cephes expf coefficients). Straight-line arithmetic, so loops over it vectorise; the
// activations below are built on it and are therefore as fast as their arithmetic allows on every back end.
PD_HD float exp_approx(float x) {
    // Ternaries rather than fminf/fmaxf: they vectorise, and a NaN input stays NaN.
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float k = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    return p * float_of_bits((uint32_t)(((int)k + 127) << 23));
}

PD_HD float logistic_activate(float x) { return 1.f / (1.f + exp_approx(-x)); }
PD_HD float tanh_activate(float x) { return 2.f / (1.f + exp_approx(-2.f * x)) - 1.f; }

// mish(x) = x * tanh(softplus(x)) with Darknet's softplus threshold of 20 (softplus(x) = x above it). Below the
// threshold tanh(log(1 + e^x)) = n / (n + 2) with n = e^x (e^x + 2): one exponential instead of three, equal to
// the three-step form to float rounding (also for x < -20, where both are x * e^x to float precision).
PD_HD float mish_activate(float x) {
    if (x > 20.f) return x;
    const float e = exp_approx(x);
    const float n = e * (e + 2.f);
    return x * n / (n + 2.f);
}

PD_HD float hard_mish_activate(float x) {
    if (x > 0.f) return x;
    if (x > -2.f) return x * x / 2.f + x;
    return 0.f;
}

PD_HD float stair_activate(float x) {
    int n = (int)floorf(x);
    if (n % 2 == 0) return floorf(x / 2.f);
    return (x - n) + floorf(x / 2.f);
}

PD_HD float gelu_activate(float x) { return 0.5f * x * (1.f + tanh_activate(0.797885f * x + 0.035677f * x * x * x)); }

PD_HD float activate(float x, int a) {
    switch (a) {
        case LINEAR: return x;
        case LOGISTIC: return logistic_activate(x);
        case LOGGY: return 2.f / (1.f + exp_approx(-x)) - 1.f;
        case RELU: return x * (x > 0.f);
        case ELU: return (x >= 0.f) * x + (x < 0.f) * (exp_approx(x) - 1.f);
        case SELU: return (x >= 0.f) * 1.0507f * x + (x < 0.f) * 1.0507f * 1.6732f * (exp_approx(x) - 1.f);
        case GELU: return gelu_activate(x);
        case RELIE: return x > 0.f ? x : .01f * x;
        case RAMP: return x * (x > 0.f) + .1f * x;
        case LEAKY:
        case REVLEAKY: return x > 0.f ? x : .1f * x;
        case TANH: return tanh_activate(x);
        case PLSE:
            if (x < -4.f) return .01f * (x + 4.f);
            if (x > 4.f) return .01f * (x - 4.f) + 1.f;
            return .125f * x + .5f;
        case STAIR: return stair_activate(x);
        case HARDTAN: return x < -1.f ? -1.f : (x > 1.f ? 1.f : x);
        case LHTAN:
            if (x < 0.f) return .001f * x;
            if (x > 1.f) return .001f * (x - 1.f) + 1.f;
            return x;
        case SWISH: return x * logistic_activate(x);
        case MISH: return mish_activate(x);
        case HARD_MISH: return hard_mish_activate(x);
        case RELU6: return x < 0.f ? 0.f : (x > 6.f ? 6.f : x);
        default: return x;
    }
}

// ----- gradients (training) -----------------------------------------------------------------------------------
// Darknet writes most gradients in terms of the activation's output y (gradient_array), which is all a layer
// has to keep; swish, mish and hard_mish need the pre-activation input x (Darknet keeps it for them). gelu is
// also taken at x here: Darknet evaluates its gelu formula at the output, which is not the derivative.

// Whether the gradient needs the pre-activation value x (otherwise the output y suffices).
PD_HD bool activation_needs_input(int a) {
    return a == SWISH || a == MISH || a == HARD_MISH || a == GELU || a == NORM_CHAN;
}

// d mish / dx = tanh(sp) + x (1 - tanh^2(sp)) sigmoid(x) with sp = softplus(x) (Darknet's formula), written with
// the same n = e^x (e^x + 2) as the forward: tanh(sp) = n / (n + 2), 1 - tanh^2(sp) = 4 (n + 1) / (n + 2)^2.
PD_HD float mish_gradient(float x) {
    if (x > 20.f) return 1.f;
    const float e = exp_approx(x);
    const float n = e * (e + 2.f), d = n + 2.f;
    return n / d + x * (4.f * (n + 1.f) / (d * d)) * (e / (1.f + e));
}

PD_HD float gelu_gradient(float x) {
    const float t = tanh_activate(0.797885f * x + 0.035677f * x * x * x);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * (0.797885f + 3.f * 0.035677f * x * x);
}

// dy/dx of an element-wise activation with output y = activate(x, a). The normalize_channels family is not
// element-wise; its Jacobian is applied per pixel by the layers (cpu/train_ops).
PD_HD float gradient(float y, float x, int a) {
    switch (a) {
        case LINEAR: return 1.f;
        case LOGISTIC: return y * (1.f - y);
        case LOGGY: {
            const float s = (y + 1.f) * 0.5f;
            return 2.f * (1.f - s) * s;
        }
        case RELU: return y > 0.f ? 1.f : 0.f;
        case ELU: return y >= 0.f ? 1.f : y + 1.f;
        case SELU: return y >= 0.f ? 1.0507f : y + 1.0507f * 1.6732f;
        case GELU: return gelu_gradient(x);
        case RELIE: return y > 0.f ? 1.f : .01f;
        case RAMP: return y > 0.f ? 1.1f : .1f;
        case LEAKY:
        case REVLEAKY: return y > 0.f ? 1.f : .1f;
        case TANH: return 1.f - y * y;
        case PLSE: return (y < 0.f || y > 1.f) ? .01f : .125f;
        case STAIR: return floorf(y) == y ? 0.f : 1.f;
        case HARDTAN: return (y > -1.f && y < 1.f) ? 1.f : 0.f;
        case LHTAN: return (y > 0.f && y < 1.f) ? 1.f : .001f;
        case SWISH: {
            const float s = logistic_activate(x);
            return y + s * (1.f - y);
        }
        case MISH: return mish_gradient(x);
        case HARD_MISH: return x > 0.f ? 1.f : (x > -2.f ? x + 1.f : 0.f);
        case RELU6: return (y > 0.f && y < 6.f) ? 1.f : 0.f;
        default: return 1.f;
    }
}

// The normalize_channels family on one pixel's `channels` values (get(k) reads channel k, set(k, v) writes it;
// they may be the same memory): normalize_channels divides the positive values by their sum, the softmax forms
// take exp(v - m) / sum with m = 0, or the largest value for the _maxval form; each sum starts at 0.0001.
template <typename Get, typename Set>
PD_HD void normalize_channels_pixel(int activation, int channels, const Get& get, const Set& set) {
    const float eps = 0.0001f;
    if (activation == NORM_CHAN) {
        float sum = eps;
        for (int k = 0; k < channels; ++k) sum += fmaxf(get(k), 0.f);
        for (int k = 0; k < channels; ++k) {
            const float v = get(k);
            set(k, v > 0.f ? v / sum : 0.f);
        }
        return;
    }
    float max_val = activation == NORM_CHAN_SOFTMAX_MAXVAL ? -FLT_MAX : 0.f;
    if (activation == NORM_CHAN_SOFTMAX_MAXVAL)
        for (int k = 0; k < channels; ++k) max_val = fmaxf(max_val, get(k));
    float sum = eps;
    for (int k = 0; k < channels; ++k) sum += expf(get(k) - max_val);
    for (int k = 0; k < channels; ++k) set(k, expf(get(k) - max_val) / sum);
}

// The exact gradient of the normalize_channels family at one pixel (Darknet's gradient for it is an
// approximation): g holds dLoss/dy on entry and dLoss/dx on return, y is the output, x the input (read by
// normalize_channels only); channel k is at offset k * stride. normalize_channels: y_k = x_k / S for x_k > 0
// (else 0), S = eps + sum of the positive x, so dy_k/dx_j = [x_j > 0] (d_kj - y_k) / S. The softmax forms:
// dy_k/dx_j = d_kj y_k - y_k y_j; with the maximum subtracted (_maxval) the maximum's input also moves every
// exponent, which adds -y_k (1 - sum y) to its column (eps / (eps + sum)). Sums in double.
PD_HD void normalize_channels_gradient(int activation, int channels, size_t stride, float* g, const float* y,
                                       const float* x) {
    const float eps = 0.0001f;  // the forward's (normalize_channels_pixel)
    double dot = 0.0;
    for (int k = 0; k < channels; ++k) dot += (double)g[k * stride] * y[k * stride];
    if (activation == NORM_CHAN) {
        double sum = eps;
        for (int k = 0; k < channels; ++k) sum += fmaxf(x[k * stride], 0.f);
        for (int k = 0; k < channels; ++k)
            g[k * stride] = x[k * stride] > 0.f ? (float)((g[k * stride] - dot) / sum) : 0.f;
        return;
    }
    int arg_max = 0;
    double total = 0.0;
    for (int k = 0; k < channels; ++k) {
        total += y[k * stride];
        if (y[k * stride] > y[arg_max * stride]) arg_max = k;
    }
    for (int k = 0; k < channels; ++k) g[k * stride] = (float)(y[k * stride] * (g[k * stride] - dot));
    if (activation == NORM_CHAN_SOFTMAX_MAXVAL) g[arg_max * stride] -= (float)(dot * (1.0 - total));
}

}  // namespace pd
