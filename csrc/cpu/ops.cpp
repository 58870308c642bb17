// im2col and whole-array activations for the CPU path (see ops.h).
#include "ops.h"

#include <cmath>
#include <algorithm>
#include <cstring>

#include "../math/activations.h"
#include "../math/pooling.h"

namespace pd {

void im2col(const float* image, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
            int out_h, int out_w, float* columns) {
    const int rows = c * ksize * ksize;
#pragma omp parallel for schedule(static) if (rows * out_h * out_w > 65536)
    for (int r = 0; r < rows; ++r) {
        const int kx = r % ksize, ky = (r / ksize) % ksize, ch = r / (ksize * ksize);
        const float* plane = image + (size_t)ch * h * w;
        float* out = columns + (size_t)r * out_h * out_w;
        for (int oy = 0; oy < out_h; ++oy) {
            const int y = oy * stride_y - pad + ky * dilation;
            float* row = out + (size_t)oy * out_w;
            if (y < 0 || y >= h) {
                std::memset(row, 0, sizeof(float) * out_w);
                continue;
            }
            const float* src = plane + (size_t)y * w;
            const int x0 = -pad + kx * dilation;
            if (stride_x == 1 && x0 >= 0 && x0 + out_w <= w) {
                std::memcpy(row, src + x0, sizeof(float) * out_w);
                continue;
            }
            for (int ox = 0; ox < out_w; ++ox) {
                const int x = ox * stride_x + x0;
                row[ox] = (x >= 0 && x < w) ? src[x] : 0.f;
            }
        }
    }
}

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
#pragma omp parallel for schedule(static) if (n > 65536)
    for (long long p = 0; p < (long long)batch * (long long)spatial; ++p) {
        float* base = x + (size_t)(p / spatial) * channels * spatial + (size_t)(p % spatial);
        normalize_channels_pixel(
            activation, channels, [&](int k) { return base[k * spatial]; },
            [&](int k, float v) { base[k * spatial] = v; });
    }
}

void pool2d(const float* in, float* out, long long planes, int in_h, int in_w, int out_h, int out_w, int size,
            int stride_y, int stride_x, int offset, bool average) {
#pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; ++p) {
        const float* src = in + p * in_h * in_w;
        float* dst = out + p * out_h * out_w;
        const auto load = [&](int y, int x) { return src[y * in_w + x]; };
        for (int oy = 0; oy < out_h; ++oy)
            for (int ox = 0; ox < out_w; ++ox)
                dst[oy * out_w + ox] =
                    pool_window(load, in_h, in_w, oy, ox, size, stride_y, stride_x, offset, average);
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
