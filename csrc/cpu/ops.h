// CPU building blocks shared by several layers: activations over whole arrays, pooling, batch-norm folding.
#pragma once

#include <cstddef>

#include "../math/pooling.h"

namespace pd {

// Applies an activation in place to `batch` blocks of `channels` x `spatial` values. The element-wise ones ignore
// the layout; the normalize_channels family normalises across channels per pixel.
void activate_array(float* x, int batch, int channels, size_t spatial, int activation);

// Max or average over windows placed as Darknet places them (math/pooling.h); positions outside the image are
// skipped (never the max, not counted in the average).
void pool2d(const float* in, float* out, long long planes, int in_h, int in_w, int out_h, int out_w,
            const PoolWindow& window, bool average);

// Darknet's fuse_conv_batchnorm for n outputs, in double: factor = scale / sqrt(var + eps),
// folded_bias = bias - mean * factor.
void batchnorm_factors(const float* bias, const float* scales, const float* mean, const float* var, float eps, int n,
                       double* factor, float* folded_bias);

// x[i] = activate(x[i] + bias) for an element-wise activation, vectorised for the CPU it runs on.
void activate_span(float* x, size_t n, int activation, float bias = 0.f);

// Applies X(code) to every element-wise activation code, e.g. to build a switch whose cases are loops with the
// activation fixed at compile time (which the compiler vectorises).
// clang-format off: the codes in rows
#define PD_FOR_EACH_ELEMENTWISE_ACTIVATION(X)                                                                 \
    X(LINEAR) X(LOGISTIC) X(LOGGY) X(RELU) X(ELU) X(SELU) X(GELU) X(RELIE) X(RAMP) X(LEAKY) X(TANH) X(PLSE) \
    X(STAIR) X(HARDTAN) X(LHTAN) X(SWISH) X(MISH) X(HARD_MISH) X(RELU6) X(REVLEAKY)
// clang-format on

}  // namespace pd
