// Softmax with temperature over one slice, written once for the CPU and the CUDA kernels:
// exp(x / t - max / t) / sum, the maximum subtracted first (as Darknet's softmax) so large logits cannot overflow.
#pragma once

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "../core/common.h"

namespace pd {

// `load(i)` returns element i of the slice as a float; `store(i, v)` writes element i of the result.
template <typename Load, typename Store>
PD_HD void softmax_slice(const Load& load, const Store& store, size_t n, float temperature) {
    float largest = -FLT_MAX, sum = 0.f;
    for (size_t i = 0; i < n; ++i) largest = fmaxf(largest, load(i));
    for (size_t i = 0; i < n; ++i) sum += expf(load(i) / temperature - largest / temperature);
    for (size_t i = 0; i < n; ++i) store(i, expf(load(i) / temperature - largest / temperature) / sum);
}

// Its backward over one slice: in_grad[i] += y_i (g_i - sum_j g_j y_j) / temperature, the dot product in double.
PD_HD void softmax_slice_gradient(const float* y, const float* grad, float* in_grad, size_t n, double temperature) {
    double dot = 0.0;
    for (size_t i = 0; i < n; ++i) dot += (double)grad[i] * y[i];
    for (size_t i = 0; i < n; ++i) in_grad[i] += (float)(y[i] * (grad[i] - dot) / temperature);
}

}  // namespace pd
