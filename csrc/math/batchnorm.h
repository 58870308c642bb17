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

// The sums channel c's statistics come from, over the local batch, in double: sum(x) and sum(x^2).
PD_HD void batchnorm_channel_sums(const float* x, int batch, int channels, size_t spatial, int c, double* sum,
                                  double* squares) {
    double s = 0.0, q = 0.0;
    for (int b = 0; b < batch; ++b) {
        const float* v = x + ((size_t)b * channels + c) * spatial;
        for (size_t i = 0; i < spatial; ++i) {
            s += v[i];
            q += (double)v[i] * v[i];
        }
    }
    *sum = s;
    *squares = q;
}

// Normalises channel c with the statistics of `total` values whose sums are given (the local batch's, or every
// process's under synchronized batch-norm): mean and variance (Bessel's correction, clamped at 0), xhat = (x - mean)
// / sqrt(variance + eps) stored, x <- activation(scale * xhat + bias) with the value before the element-wise
// activation kept in `pre` (when not null), and the rolling statistics moved by .99 / .01.
// Returns 1 / sqrt(variance + eps), which the backward needs.
PD_HD double batchnorm_normalize_channel(float* x, float* xhat, float* pre, int batch, int channels, size_t spatial,
                                         int c, double sum, double squares, double total, float scale, float bias,
                                         float* rolling_mean, float* rolling_variance, float epsilon, int activation) {
    const double mean = sum / total;
    const double raw = (squares - sum * mean) / (total - 1), variance = raw > 0.0 ? raw : 0.0;
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

// Both steps over the local batch.
PD_HD double batchnorm_train_channel(float* x, float* xhat, float* pre, int batch, int channels, size_t spatial, int c,
                                     float scale, float bias, float* rolling_mean, float* rolling_variance,
                                     float epsilon, int activation) {
    double sum, squares;
    batchnorm_channel_sums(x, batch, channels, spatial, c, &sum, &squares);
    return batchnorm_normalize_channel(x, xhat, pre, batch, channels, spatial, c, sum, squares, (double)spatial * batch,
                                       scale, bias, rolling_mean, rolling_variance, epsilon, activation);
}

// The backward's first step for channel c: the element-wise activation's gradient applied in place (from output,
// and pre when the activation needs its input), sum(g) and sum(g * xhat) over the local batch in double, and
// dscale += sum(g * xhat), dbias += sum(g) (local: the gradient buffer is summed over processes as a whole).
PD_HD void batchnorm_gradient_sums(float* grad, const float* output, const float* pre, const float* xhat, int batch,
                                   int channels, size_t spatial, int c, float* grad_scale, float* grad_bias,
                                   int activation, double* sum_g, double* sum_gx) {
    double s = 0.0, sx = 0.0;
    for (int b = 0; b < batch; ++b) {
        const size_t base = ((size_t)b * channels + c) * spatial;
        for (size_t i = base; i < base + spatial; ++i) {
            float g = grad[i];
            if (activation != LINEAR) g *= gradient(output[i], pre ? pre[i] : output[i], activation);
            grad[i] = g;
            s += g;
            sx += (double)g * xhat[i];
        }
    }
    *grad_bias += (float)s;
    *grad_scale += (float)sx;
    *sum_g = s;
    *sum_gx = sx;
}

// The second step: dx = scale * inv_std * (g - mean(g) - xhat * sum(g * xhat) / (N - 1)) in place of grad, with the
// sums over `total` values (local, or every process's).
PD_HD void batchnorm_input_gradient(float* grad, const float* xhat, double inv_std, int batch, int channels,
                                    size_t spatial, int c, float scale, double sum_g, double sum_gx, double total) {
    const double factor = scale * inv_std;
    const double mean_g = sum_g / total, proj = sum_gx / (total - 1);
    for (int b = 0; b < batch; ++b) {
        const size_t base = ((size_t)b * channels + c) * spatial;
        for (size_t i = base; i < base + spatial; ++i)
            grad[i] = (float)(factor * ((double)grad[i] - mean_g - (double)xhat[i] * proj));
    }
}

// Its exact derivative for channel c over the local batch: both steps.
PD_HD void batchnorm_backward_channel(float* grad, const float* output, const float* pre, const float* xhat,
                                      double inv_std, int batch, int channels, size_t spatial, int c, float scale,
                                      float* grad_scale, float* grad_bias, int activation) {
    double sum_g, sum_gx;
    batchnorm_gradient_sums(grad, output, pre, xhat, batch, channels, spatial, c, grad_scale, grad_bias, activation,
                            &sum_g, &sum_gx);
    batchnorm_input_gradient(grad, xhat, inv_std, batch, channels, spatial, c, scale, sum_g, sum_gx,
                             (double)spatial * batch);
}

}  // namespace pd
