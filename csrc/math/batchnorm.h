// Batch normalisation in training mode, per channel and per value, written once for the CUDA kernels of every
// layer that has it ([convolutional], [connected], [batchnorm]; cuda/batchnorm_kernels.cu adds the sums in a
// fixed parallel order): the same formulas as the CPU's BatchNormTrainer (csrc/cpu/train_ops.h), which runs them
// as vectorised spans (its sums in double too, in eight lanes: the two differ only in the order of double
// additions).
#pragma once

#include <math.h>
#include <stddef.h>

#include "../core/common.h"
#include "activations.h"

namespace pd {

// Channel statistics from the sums of `total` values (the local batch's, or every process's under synchronized
// batch-norm): mean, variance (Bessel's correction, clamped at 0) and 1 / sqrt(variance + eps), which the
// backward needs.
struct BatchnormStatistics {
    double mean, variance, inv_std;
};

PD_HD BatchnormStatistics batchnorm_statistics(double sum, double squares, double total, float epsilon) {
    BatchnormStatistics s;
    s.mean = sum / total;
    const double raw = (squares - sum * s.mean) / (total - 1);
    s.variance = raw > 0.0 ? raw : 0.0;
    s.inv_std = 1.0 / sqrt(s.variance + (double)epsilon);
    return s;
}

// The rolling statistics moved by .99 / .01 towards the batch's.
PD_HD void batchnorm_rolling_update(const BatchnormStatistics& s, float* rolling_mean, float* rolling_variance) {
    *rolling_mean = .99f * *rolling_mean + .01f * (float)s.mean;
    *rolling_variance = .99f * *rolling_variance + .01f * (float)s.variance;
}

// One value normalised: xhat = (x - mean) * inv_std (stored), and scale * xhat + bias returned (the value before
// the element-wise activation).
PD_HD float batchnorm_normalize_value(float x, double mean, double inv_std, float scale, float bias, float* xhat) {
    const float h = (float)(((double)x - mean) * inv_std);
    *xhat = h;
    return scale * h + bias;
}

// The backward: the element-wise activation's gradient first (gradient() of activations.h, in place), then
// sum(g) and sum(g * xhat) over the channel in double; dscale += sum(g * xhat), dbias += sum(g) (local sums: the
// gradient buffer is summed over processes as a whole); then for each value dx = scale * inv_std * (g - mean(g)
// - xhat * sum(g * xhat) / (N - 1)), with the sums over `total` values (local, or every process's).
PD_HD float batchnorm_input_gradient(float g, float xhat, double inv_std, float scale, double sum_g, double sum_gx,
                                     double total) {
    const double factor = scale * inv_std;
    const double mean_g = sum_g / total, proj = sum_gx / (total - 1);
    return (float)(factor * ((double)g - mean_g - (double)xhat * proj));
}

}  // namespace pd
