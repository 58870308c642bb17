// [shortcut] weights, written once for the CPU and the CUDA kernels: with weights_normalization relu (or
// avg_relu) each weight becomes max(w, 0) / (0.0001 + sum of max(w_k, 0)), with softmax
// exp(w - max_k w_k) / (0.0001 + sum of exp(w_k - max_k w_k)) over the input and the `from` layers
// (shortcut_layer.c / blas.c in Darknet).
#pragma once

#include <float.h>
#include <math.h>

#include <string>

#include "../core/common.h"

namespace pd {

enum ShortcutNormalization : int { SHORTCUT_NORM_NONE, SHORTCUT_NORM_RELU, SHORTCUT_NORM_SOFTMAX };

// The cfg's weights_normalization as a ShortcutNormalization (host side).
inline int shortcut_normalization(const std::string& name) {
    if (name == "relu" || name == "avg_relu") return SHORTCUT_NORM_RELU;
    if (name == "softmax") return SHORTCUT_NORM_SOFTMAX;
    return SHORTCUT_NORM_NONE;
}

struct ShortcutNormalizer {
    float max_val = -FLT_MAX, sum = 1.f;
};

// The normaliser of the `count` weights weights[first + k * step], k = 0 (the input) .. count - 1.
PD_HD ShortcutNormalizer shortcut_normalizer(const float* weights, size_t first, size_t step, int count,
                                             int normalization) {
    ShortcutNormalizer n;
    if (normalization == SHORTCUT_NORM_NONE) return n;
    for (int k = 0; k < count; ++k) n.max_val = fmaxf(n.max_val, weights[first + k * step]);
    n.sum = 0.0001f;
    for (int k = 0; k < count; ++k) {
        const float w = weights[first + k * step];
        n.sum += normalization == SHORTCUT_NORM_RELU ? fmaxf(w, 0.f) : expf(w - n.max_val);
    }
    return n;
}

PD_HD float shortcut_weight(float w, const ShortcutNormalizer& n, int normalization) {
    if (normalization == SHORTCUT_NORM_RELU) return fmaxf(w, 0.f) / n.sum;
    if (normalization == SHORTCUT_NORM_SOFTMAX) return expf(w - n.max_val) / n.sum;
    return w;
}

// dLoss/dweights of weight group w0 (added to grad_weights[w0 + k * step]) from d[k] = dLoss/d(normalised weight
// k) and the normalised weights nw, through the normalisation: relu: nw_k = r_k / S, r = max(w, 0),
// S = eps + sum r; softmax: nw_k = e_k / S, e_k = exp(w_k - max): dnw_k/dw_j = d_kj nw_k - nw_k nw_j, and the
// maximum's weight, which shifts every exponent, gets an extra -nw_k (1 - sum nw). (Darknet's backward leaves
// the normalisation out.)
PD_HD void shortcut_weight_gradient(const double* d, const float* nw, const float* weights, size_t w0, size_t step,
                                    int count, int normalization, float* grad_weights) {
    double dot = 0.0, total = 0.0, sum = 0.0001;
    int arg_max = 0;
    for (int k = 0; k < count; ++k) {
        dot += d[k] * nw[k];
        total += nw[k];
        const float v = weights[w0 + k * step];
        sum += fmaxf(v, 0.f);
        if (v > weights[w0 + arg_max * step]) arg_max = k;
    }
    for (int k = 0; k < count; ++k) {
        const float v = weights[w0 + k * step];
        double dw = d[k];
        if (normalization == SHORTCUT_NORM_RELU) dw = v > 0.f ? (d[k] - dot) / sum : 0.0;
        if (normalization == SHORTCUT_NORM_SOFTMAX)
            dw = nw[k] * (d[k] - dot) - (k == arg_max ? dot * (1.0 - total) : 0.0);
        grad_weights[w0 + k * step] += (float)dw;
    }
}

}  // namespace pd
