// Whole-array activations, pooling and batch-norm folding for the CPU path (see ops.h).
#include "ops.h"

#include <cfloat>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "../math/activations.h"
#include "../math/pooling.h"

namespace pd {

namespace {

// One loop per activation with the activation fixed at compile time, so the compiler can vectorise it.
template <int A>
__attribute__((always_inline)) inline void activate_loop(float* x, size_t n, float bias) {
    for (size_t i = 0; i < n; ++i) x[i] = activate(x[i] + bias, A);
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void activate_span(float* x, size_t n,
                                                                                                 int activation,
                                                                                                 float bias) {
    switch (activation) {
#define PD_ACTIVATION_CASE(A) \
    case A: activate_loop<A>(x, n, bias); break;
        PD_FOR_EACH_ELEMENTWISE_ACTIVATION(PD_ACTIVATION_CASE)
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

namespace {

// Max over size x size windows, separably: a pass along x into a scratch plane (one row per input row, one column
// per output column), then a pass along y. Each pass walks the window taps in the outer loop and the output
// columns in the inner one, so the inner loop is a plain vectorisable max; the SPP pools (13x13 windows) do 26
// comparisons per output instead of 169. Same result as the direct loop: max is exact and order-independent, and
// `a < b ? b : a` keeps the running maximum on a NaN exactly as the direct loop does.
inline float larger(float a, float b) { return a < b ? b : a; }

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void max_pool_plane(
    const float* src, float* dst, float* rows, int in_h, int in_w, int out_h, int out_w, int size, int stride_y,
    int stride_x, int offset) {
    if (size == 2 && stride_y == 2 && stride_x == 2 && offset == 0) {
        // the 2x2/2 pools of the tiny models: one pass, pairs of columns from two rows
        const int full = std::min(out_w, in_w / 2);
        for (int oy = 0; oy < out_h; ++oy) {
            const float* r0 = src + (size_t)(2 * oy) * in_w;
            const float* r1 = 2 * oy + 1 < in_h ? r0 + in_w : r0;
            float* out = dst + (size_t)oy * out_w;
            for (int ox = 0; ox < full; ++ox)
                out[ox] = larger(larger(r0[2 * ox], r0[2 * ox + 1]), larger(r1[2 * ox], r1[2 * ox + 1]));
            for (int ox = full; ox < out_w; ++ox) {  // a window reaching past the right edge
                float best = -FLT_MAX;
                for (int x = 2 * ox; x < std::min(in_w, 2 * ox + 2); ++x) best = larger(larger(best, r0[x]), r1[x]);
                out[ox] = best;
            }
        }
        return;
    }
    for (int y = 0; y < in_h; ++y) {
        const float* in = src + (size_t)y * in_w;
        float* row = rows + (size_t)y * out_w;
        for (int ox = 0; ox < out_w; ++ox) row[ox] = -FLT_MAX;
        for (int kx = 0; kx < size; ++kx) {
            // output columns whose tap kx lands inside the row: 0 <= offset + ox * stride_x + kx < in_w
            const int first = std::max(0, (-(offset + kx) + stride_x - 1) / stride_x);
            const int last = std::min(out_w, (in_w - (offset + kx) + stride_x - 1) / stride_x);
            const int shift = offset + kx;
            if (stride_x == 1)
                for (int ox = first; ox < last; ++ox) {
                    const float v = in[ox + shift];
                    row[ox] = row[ox] < v ? v : row[ox];
                }
            else
                for (int ox = first; ox < last; ++ox) {
                    const float v = in[ox * stride_x + shift];
                    row[ox] = row[ox] < v ? v : row[ox];
                }
        }
    }
    for (int oy = 0; oy < out_h; ++oy) {
        float* out = dst + (size_t)oy * out_w;
        for (int ox = 0; ox < out_w; ++ox) out[ox] = -FLT_MAX;
        const PoolSpan ys = pool_span(oy, stride_y, offset, size, in_h);
        for (int y = ys.first; y < ys.last; ++y) {
            const float* row = rows + (size_t)y * out_w;
            for (int ox = 0; ox < out_w; ++ox) out[ox] = out[ox] < row[ox] ? row[ox] : out[ox];
        }
    }
}

}  // namespace

void pool2d(const float* in, float* out, long long planes, int in_h, int in_w, int out_h, int out_w,
            const PoolWindow& window, bool average) {
    if (!average) {
#pragma omp parallel
        {
            std::vector<float> rows((size_t)in_h * out_w);
#pragma omp for schedule(static)
            for (long long p = 0; p < planes; ++p)
                max_pool_plane(in + p * in_h * in_w, out + p * out_h * out_w, rows.data(), in_h, in_w, out_h, out_w,
                               window.size, window.stride_y, window.stride_x, window.offset);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; ++p) {
        const float* src = in + p * in_h * in_w;
        float* dst = out + p * out_h * out_w;
        const auto load = [&](int y, int x) { return src[y * in_w + x]; };
        for (int oy = 0; oy < out_h; ++oy)
            for (int ox = 0; ox < out_w; ++ox)
                dst[oy * out_w + ox] = pool_window(load, in_h, in_w, oy, ox, window, true);
    }
}

void batchnorm_factors(const float* bias, const float* scales, const float* mean, const float* var, float eps, int n,
                       double* factor, float* folded_bias) {
    for (int i = 0; i < n; ++i) {
        factor[i] = (double)scales[i] / std::sqrt((double)var[i] + (double)eps);
        folded_bias[i] = (float)((double)bias[i] - (double)mean[i] * factor[i]);
    }
}

}  // namespace pd
