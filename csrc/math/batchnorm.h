// Batch normalisation in training mode for one channel, written once for the CUDA kernels of every layer that
// has it ([convolutional], [connected], [batchnorm]): the same formulas as the CPU's BatchNormTrainer
// (csrc/cpu/train_ops.h), which runs them as vectorised spans (its sums in double too, in eight lanes: the two
// differ only in the order of double additions). x of channel c in image b is x[(b * channels + c) * spatial + i].
#pragma once

#include <math.h>
#include <stddef.h>

#include "../core/common.h"
#include "activations.h"

namespace pd {

// Normalises channel c over the batch: mean and variance (Bessel's correction, clamped at 0) summed in double,
// xhat = (x - mean) / sqrt(variance + eps) stored, x <- activation(scale * xhat + bias) with the value before the
// element-wise activation kept in `pre` (when not null), and the rolling statistics moved by .99 / .01.
// Returns 1 / sqrt(variance + eps), which the backward needs.
PD_HD double batchnorm_train_channel(float* x, float* xhat, float* pre, int batch, int channels, size_t spatial, int c,
                                     float scale, float bias, float* rolling_mean, float* rolling_variance,
                                     float epsilon, int activation) {
    const size_t count = spatial * batch;
    double sum = 0.0, squares = 0.0;
    for (int b = 0; b < batch; ++b) {
        const float* v = x + ((size_t)b * channels + c) * spatial;
        for (size_t i = 0; i < spatial; ++i) {
            sum += v[i];
            squares += (double)v[i] * v[i];
        }
    }
    const double mean = sum / (double)count;
    const double raw = (squares - sum * mean) / (double)(count - 1), variance = raw > 0.0 ? raw : 0.0;
    const double inv_std = 1.0 / sqrt(variance + (double)epsilon);
    for (int b = 0; b < batch; ++b) {
        const size_t base = ((size_t)b * channels + c) * spatial;
        for (size_t i = base; i < base + spatial; ++i) {
            const float h = (float)(((double)x[i] - mean) * inv_std);
            xhat[i] = h;
            const float y = scale * h + bias;
            if (pre) pre[i] = y;
            x[i] = activate(y, activation);
        }
    }
    *rolling_mean = .99f * *rolling_mean + .01f * (float)mean;
    *rolling_variance = .99f * *rolling_variance + .01f * (float)variance;
    return inv_std;
}

// Its exact derivative for channel c: the element-wise activation's gradient first (from output, and pre when the
// activation needs its input), then dscale += sum(g * xhat), dbias += sum(g) and
// dx = scale * inv_std * (g - mean(g) - xhat * sum(g * xhat) / (N - 1)) in place of grad.
PD_HD void batchnorm_backward_channel(float* grad, const float* output, const float* pre, const float* xhat,
                                      double inv_std, int batch, int channels, size_t spatial, int c, float scale,
                                      float* grad_scale, float* grad_bias, int activation) {
    const size_t count = spatial * batch;
    double sum_g = 0.0, sum_gx = 0.0;
    for (int b = 0; b < batch; ++b) {
        const size_t base = ((size_t)b * channels + c) * spatial;
        for (size_t i = base; i < base + spatial; ++i) {
            float g = grad[i];
            if (activation != LINEAR) g *= gradient(output[i], pre ? pre[i] : output[i], activation);
            grad[i] = g;
            sum_g += g;
            sum_gx += (double)g * xhat[i];
        }
    }
    *grad_bias += (float)sum_g;
    *grad_scale += (float)sum_gx;
    const double factor = scale * inv_std;
    const double mean_g = sum_g / (double)count, proj = sum_gx / (double)(count - 1);
    for (int b = 0; b < batch; ++b) {
        const size_t base = ((size_t)b * channels + c) * spatial;
        for (size_t i = base; i < base + spatial; ++i)
            grad[i] = (float)(factor * ((double)grad[i] - mean_g - (double)xhat[i] * proj));
    }
}

}  // namespace pd
