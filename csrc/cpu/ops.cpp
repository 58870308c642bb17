// Whole-array activations, pooling and batch-norm folding for the CPU path (see ops.h).
#include "ops.h"

#include <cfloat>
#include <cmath>
#include <algorithm>
#include <cstring>

#include "../math/activations.h"

namespace pd {

namespace {

// One loop per activation with the activation fixed at compile time, so the compiler can vectorise it.
template <int A>
__attribute__((always_inline)) inline void activate_loop(float* x, size_t n, float bias) {
    for (size_t i = 0; i < n; ++i) x[i] = activate(x[i] + bias, A);
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void activate_span(float* x, size_t n, int activation, float bias) {
    switch (activation) {
#define PD_ACTIVATION_CASE(A) \
    case A: activate_loop<A>(x, n, bias); break;
        PD_ACTIVATION_CASE(LINEAR) PD_ACTIVATION_CASE(LOGISTIC) PD_ACTIVATION_CASE(LOGGY) PD_ACTIVATION_CASE(RELU)
        PD_ACTIVATION_CASE(ELU) PD_ACTIVATION_CASE(SELU) PD_ACTIVATION_CASE(GELU) PD_ACTIVATION_CASE(RELIE)
        PD_ACTIVATION_CASE(RAMP) PD_ACTIVATION_CASE(LEAKY) PD_ACTIVATION_CASE(TANH) PD_ACTIVATION_CASE(PLSE)
        PD_ACTIVATION_CASE(STAIR) PD_ACTIVATION_CASE(HARDTAN) PD_ACTIVATION_CASE(LHTAN) PD_ACTIVATION_CASE(SWISH)
        PD_ACTIVATION_CASE(MISH) PD_ACTIVATION_CASE(HARD_MISH) PD_ACTIVATION_CASE(RELU6)
        PD_ACTIVATION_CASE(REVLEAKY)
#undef PD_ACTIVATION_CASE
        default: break;
    }
}

void activate_array(float* x, int batch, int channels, size_t spatial, int activation) {
    if (activation == LINEAR) return;
    const size_t n = (size_t)batch * channels * spatial;
    if (!is_channel_activation(activation)) {
        const size_t chunk = 16384;
        const long long chunks = (long long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (chunks > 4)
        for (long long c = 0; c < chunks; ++c)
            activate_span(x + c * chunk, std::min(chunk, n - (size_t)c * chunk), activation);
        return;
    }
    const float eps = 0.0001f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (long long p = 0; p < (long long)batch * (long long)spatial; ++p) {
        float* base = x + (size_t)(p / spatial) * channels * spatial + (size_t)(p % spatial);
        if (activation == NORM_CHAN) {
            float sum = eps;
            for (int k = 0; k < channels; ++k) sum += fmaxf(base[k * spatial], 0.f);
            for (int k = 0; k < channels; ++k) {
                float v = base[k * spatial];
                base[k * spatial] = v > 0.f ? v / sum : 0.f;
            }
        } else {
            float max_val = activation == NORM_CHAN_SOFTMAX_MAXVAL ? -FLT_MAX : 0.f;
            if (activation == NORM_CHAN_SOFTMAX_MAXVAL)
                for (int k = 0; k < channels; ++k) max_val = fmaxf(max_val, base[k * spatial]);
            float sum = eps;
            for (int k = 0; k < channels; ++k) sum += expf(base[k * spatial] - max_val);
            for (int k = 0; k < channels; ++k) base[k * spatial] = expf(base[k * spatial] - max_val) / sum;
        }
    }
}

void pool2d(const float* in, float* out, long long planes, int in_h, int in_w, int out_h, int out_w, int size,
            int stride_y, int stride_x, int offset, bool average) {
#pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; ++p) {
        const float* src = in + p * in_h * in_w;
        float* dst = out + p * out_h * out_w;
        for (int oy = 0; oy < out_h; ++oy)
            for (int ox = 0; ox < out_w; ++ox) {
                float best = -FLT_MAX, sum = 0.f;
                int count = 0;
                for (int ky = 0; ky < size; ++ky) {
                    const int y = offset + oy * stride_y + ky;
                    if (y < 0 || y >= in_h) continue;
                    for (int kx = 0; kx < size; ++kx) {
                        const int x = offset + ox * stride_x + kx;
                        if (x < 0 || x >= in_w) continue;
                        const float v = src[y * in_w + x];
                        best = v > best ? v : best;
                        sum += v;
                        ++count;
                    }
                }
                dst[oy * out_w + ox] = average ? (count ? sum / count : 0.f) : best;
            }
    }
}

void batchnorm_factors(const float* bias, const float* scales, const float* mean, const float* var, float eps,
                       int n, double* factor, float* folded_bias) {
    for (int i = 0; i < n; ++i) {
        factor[i] = (double)scales[i] / std::sqrt((double)var[i] + (double)eps);
        folded_bias[i] = (float)((double)bias[i] - (double)mean[i] * factor[i]);
    }
}

}  // namespace pd
