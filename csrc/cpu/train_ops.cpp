// Training building blocks for the CPU path (see train_ops.h).
//
// Speed: the element-wise passes (activation gradients, batch-norm) are loops with the activation fixed at
// compile time, cloned for AVX-512, AVX2 and baseline x86-64 like ops.cpp's activate_span, so they vectorise; the
// sums run in double on explicit vectors of eight lanes (a fixed order, so results do not depend on threads).
// OpenMP regions stay in plain functions that call the cloned kernels (the pattern of ops.cpp).
#include "train_ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/common.h"
#include "../math/activations.h"

#define PD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// On the kernels that switch over activations: inline everything, activate() and gradient() included, which the
// compiler otherwise stops doing once a function has grown by a few dozen instantiations.
#define PD_FLATTEN __attribute__((flatten))
#define PD_INLINE __attribute__((always_inline)) inline

// Expands X(activation) for every element-wise activation code.
// clang-format off: the codes in rows
#define PD_ELEMENTWISE_ACTIVATIONS(X)                                                                        \
    X(LINEAR) X(LOGISTIC) X(LOGGY) X(RELU) X(ELU) X(SELU) X(GELU) X(RELIE) X(RAMP) X(LEAKY) X(TANH) X(PLSE) \
    X(STAIR) X(HARDTAN) X(LHTAN) X(SWISH) X(MISH) X(HARD_MISH) X(RELU6) X(REVLEAKY)
// clang-format on

namespace pd {
namespace {

// Work below this many values runs on one thread: starting a team costs more than it saves.
constexpr long long kParallelMin = 32768;
// Element-wise passes work in blocks of this many values, small enough to stay in L1 between their stages.
constexpr size_t kBlock = 512;

typedef float f8 __attribute__((vector_size(32)));
typedef double d8 __attribute__((vector_size(64)));

PD_INLINE d8 load_widened(const float* p) {
    f8 v;
    std::memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(v, d8);
}

PD_INLINE double lane_total(d8 v) {
    double total = 0.0;
    for (int i = 0; i < 8; ++i) total += v[i];
    return total;
}

// Running sums of a and of a*b (or a*a) over spans, eight lanes at a time; a span's last n % 8 values go to the
// scalar tails. The order of every addition depends only on the span lengths.
struct PairSums {
    d8 first = {}, second = {};
    double first_tail = 0.0, second_tail = 0.0;

    PD_INLINE void add(const float* a, const float* b, size_t n) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const d8 x = load_widened(a + i), y = load_widened(b + i);
            first += x;
            second += x * y;
        }
        for (; i < n; ++i) {
            first_tail += a[i];
            second_tail += (double)a[i] * b[i];
        }
    }
    double first_total() const { return lane_total(first) + first_tail; }
    double second_total() const { return lane_total(second) + second_tail; }
};

// ----- activation gradient ----------------------------------------------------------------------------------

template <int A>
PD_INLINE void gradient_loop(float* __restrict grad, const float* __restrict y, const float* __restrict x, size_t n) {
    for (size_t i = 0; i < n; ++i) grad[i] *= gradient(y[i], x[i], A);
}

// grad[i] *= d activate / dx at (y[i], x[i]); x may be y when the activation does not need its input.
PD_CLONES PD_FLATTEN void gradient_span(float* grad, const float* y, const float* x, size_t n, int activation) {
    switch (activation) {
#define PD_CASE(A) \
    case A: gradient_loop<A>(grad, y, x, n); break;
        PD_ELEMENTWISE_ACTIVATIONS(PD_CASE)
#undef PD_CASE
        default: break;
    }
}

// ----- batch-norm kernels, one contiguous span (a channel's plane of one image) at a time ---------------------

PD_CLONES void sum_and_squares(const float* x, size_t n, double* sum, double* squares) {
    PairSums s;
    s.add(x, x, n);
    *sum = s.first_total();
    *squares = s.second_total();
}

template <int A, bool KEEP>
PD_INLINE void normalize_loop(float* __restrict x, float* __restrict xhat, float* __restrict pre, size_t n, double mean,
                              double inv_std, float scale, float bias) {
    for (size_t b0 = 0; b0 < n; b0 += kBlock) {
        const size_t b1 = std::min(n, b0 + kBlock);
        for (size_t i = b0; i < b1; ++i) {
            const float h = (float)(((double)x[i] - mean) * inv_std);
            xhat[i] = h;
            x[i] = scale * h + bias;
        }
        if (KEEP) std::memcpy(pre + b0, x + b0, sizeof(float) * (b1 - b0));
        if (A != LINEAR)
            for (size_t i = b0; i < b1; ++i) x[i] = activate(x[i], A);
    }
}

// x <- activation(scale * xhat + bias) with xhat = (x - mean) * inv_std stored; pre (if not null) <- the value
// before the activation.
PD_CLONES PD_FLATTEN void normalize_span(float* x, float* xhat, float* pre, size_t n, double mean, double inv_std,
                                         float scale, float bias, int activation) {
    switch (activation) {
#define PD_CASE(A)                                                                     \
    case A:                                                                            \
        if (pre)                                                                       \
            normalize_loop<A, true>(x, xhat, pre, n, mean, inv_std, scale, bias);      \
        else                                                                           \
            normalize_loop<A, false>(x, xhat, nullptr, n, mean, inv_std, scale, bias); \
        break;
        PD_ELEMENTWISE_ACTIVATIONS(PD_CASE)
#undef PD_CASE
        default: break;
    }
}

template <int A>
PD_INLINE void gradient_sums_loop(float* __restrict grad, const float* __restrict y, const float* __restrict x,
                                  const float* __restrict xhat, size_t n, PairSums& sums) {
    for (size_t b0 = 0; b0 < n; b0 += kBlock) {
        const size_t len = std::min(kBlock, n - b0);
        if (A != LINEAR) gradient_loop<A>(grad + b0, y + b0, x + b0, len);
        sums.add(grad + b0, xhat + b0, len);
    }
}

// grad <- grad * activation'(y, x); sum_g = sum of the new grad, sum_gx = sum of grad * xhat.
PD_CLONES PD_FLATTEN void gradient_and_sums(float* grad, const float* y, const float* x, const float* xhat, size_t n,
                                            int activation, double* sum_g, double* sum_gx) {
    PairSums sums;
    switch (activation) {
#define PD_CASE(A) \
    case A: gradient_sums_loop<A>(grad, y, x, xhat, n, sums); break;
        PD_ELEMENTWISE_ACTIVATIONS(PD_CASE)
#undef PD_CASE
        default: break;
    }
    *sum_g = sums.first_total();
    *sum_gx = sums.second_total();
}

// dL/dx = factor * (g - mean_g - xhat * proj), in double.
PD_CLONES void normalize_gradient_span(float* __restrict grad, const float* __restrict xhat, size_t n, double factor,
                                       double mean_g, double proj) {
    for (size_t i = 0; i < n; ++i) grad[i] = (float)(factor * ((double)grad[i] - mean_g - (double)xhat[i] * proj));
}

// ----- transposes -------------------------------------------------------------------------------------------

// Rows [i0, i1) x columns [j0, j1) of src (rows x cols) to dst (cols x rows), plain loops.
template <bool ADD>
void transpose_tile(const float* src, int rows, int cols, float* dst, int i0, int i1, int j0, int j1) {
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) {
            float& d = dst[(size_t)j * rows + i];
            d = ADD ? d + src[(size_t)i * cols + j] : src[(size_t)i * cols + j];
        }
}

// The same with 8 x 8 blocks transposed in AVX registers (unpack, shuffle, lane permute), the ragged edges with
// plain loops.
template <bool ADD>
__attribute__((target("avx2"))) void transpose_tile_avx2(const float* src, int rows, int cols, float* dst, int i0,
                                                         int i1, int j0, int j1) {
    int i = i0;
    for (; i + 8 <= i1; i += 8) {
        int j = j0;
        for (; j + 8 <= j1; j += 8) {
            const float* s = src + (size_t)i * cols + j;
            __m256 r[8], t[8], u[8];
            for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + (size_t)k * cols);
            for (int k = 0; k < 8; k += 2) {
                t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
                t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
            }
            for (int k = 0; k < 8; k += 4) {
                u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
                u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
                u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
                u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            float* d = dst + (size_t)j * rows + i;
            for (int k = 0; k < 4; ++k) {
                __m256 lo = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
                __m256 hi = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
                if (ADD) {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(d + (size_t)k * rows));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(d + (size_t)(k + 4) * rows));
                }
                _mm256_storeu_ps(d + (size_t)k * rows, lo);
                _mm256_storeu_ps(d + (size_t)(k + 4) * rows, hi);
            }
        }
        transpose_tile<ADD>(src, rows, cols, dst, i, i + 8, j, j1);
    }
    transpose_tile<ADD>(src, rows, cols, dst, i, i1, j0, j1);
}

template <bool ADD>
void transpose_blocked(const float* src, int rows, int cols, float* dst) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    // 64 x 64 tiles: a tile's reads and writes stay within a few dozen cache lines each.
    const int tile = 64;
    const int row_tiles = (rows + tile - 1) / tile, col_tiles = (cols + tile - 1) / tile;
#pragma omp parallel for collapse(2) schedule(static) if ((long long)rows * cols > kParallelMin)
    for (int ti = 0; ti < row_tiles; ++ti)
        for (int tj = 0; tj < col_tiles; ++tj) {
            const int i0 = ti * tile, i1 = std::min(rows, i0 + tile), j0 = tj * tile, j1 = std::min(cols, j0 + tile);
            if (avx2)
                transpose_tile_avx2<ADD>(src, rows, cols, dst, i0, i1, j0, j1);
            else
                transpose_tile<ADD>(src, rows, cols, dst, i0, i1, j0, j1);
        }
}

// Output positions o in [0, count) whose sample o * stride + first lies in [0, size): [*lo, *hi).
inline void inside_range(int first, int stride, int count, int size, int* lo, int* hi) {
    *lo = first >= 0 ? 0 : std::min(count, (-first + stride - 1) / stride);
    *hi = first > size - 1 ? 0 : std::min(count, (size - 1 - first) / stride + 1);
    if (*hi < *lo) *hi = *lo;
}

PD_CLONES void add_span(float* __restrict dst, const float* __restrict src, size_t n) {
    for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

// dst[i] = src[i * stride] for i < n; stride 2 (downsampling convolutions) with the stride known to the compiler,
// which turns the loop into vector loads and shuffles.
PD_CLONES void copy_strided(float* __restrict dst, const float* __restrict src, int n, int stride) {
    if (stride == 2)
        for (int i = 0; i < n; ++i) dst[i] = src[2 * i];
    else
        for (int i = 0; i < n; ++i) dst[i] = src[(ptrdiff_t)i * stride];
}

}  // namespace

void transpose(const float* src, int rows, int cols, float* dst) { transpose_blocked<false>(src, rows, cols, dst); }

void add_transposed(const float* src, int rows, int cols, float* dst) { transpose_blocked<true>(src, rows, cols, dst); }

void add_into(float* dst, const float* src, size_t n) {
    const size_t chunk = 16384;
    const long long chunks = (long long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if ((long long)n > kParallelMin)
    for (long long c = 0; c < chunks; ++c)
        add_span(dst + c * chunk, src + c * chunk, std::min(chunk, n - (size_t)c * chunk));
}

void unroll(const float* image, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
            int out_h, int out_w, float* columns, size_t ld) {
    const int rows = c * ksize * ksize;
#pragma omp parallel for schedule(static) if ((long long)rows * out_h * out_w > kParallelMin)
    for (int r = 0; r < rows; ++r) {
        const int kx = r % ksize, ky = (r / ksize) % ksize, ch = r / (ksize * ksize);
        const float* plane = image + (size_t)ch * h * w;
        float* out = columns + (size_t)r * ld;
        const int x0 = kx * dilation - pad;
        int lo, hi;
        inside_range(x0, stride_x, out_w, w, &lo, &hi);
        for (int oy = 0; oy < out_h; ++oy) {
            const int y = oy * stride_y - pad + ky * dilation;
            float* row = out + (size_t)oy * out_w;
            if (y < 0 || y >= h) {
                std::memset(row, 0, sizeof(float) * out_w);
                continue;
            }
            const float* src = plane + (size_t)y * w;  // sample ox is src[ox * stride_x + x0]
            std::memset(row, 0, sizeof(float) * lo);
            if (stride_x == 1)
                std::memcpy(row + lo, src + lo + x0, sizeof(float) * (hi - lo));
            else
                copy_strided(row + lo, src + lo * stride_x + x0, hi - lo, stride_x);
            std::memset(row + hi, 0, sizeof(float) * (out_w - hi));
        }
    }
}

void col2im_add(const float* columns, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
                int out_w, int oy_begin, int oy_end, float* image) {
    const size_t ld = (size_t)(oy_end - oy_begin) * out_w;
    // One channel per thread: all the rows of a channel write only that channel's plane, so no two threads
    // ever add to the same pixel, and each pixel's additions come in a fixed order.
#pragma omp parallel for schedule(static) if ((long long)c * ksize * ksize * (long long)ld > kParallelMin)
    for (int ch = 0; ch < c; ++ch) {
        float* plane = image + (size_t)ch * h * w;
        for (int ky = 0; ky < ksize; ++ky)
            for (int kx = 0; kx < ksize; ++kx) {
                const float* row = columns + ((size_t)(ch * ksize + ky) * ksize + kx) * ld;
                const int x0 = kx * dilation - pad;
                int lo, hi;
                inside_range(x0, stride_x, out_w, w, &lo, &hi);
                for (int oy = oy_begin; oy < oy_end; ++oy) {
                    const int y = oy * stride_y - pad + ky * dilation;
                    if (y < 0 || y >= h) continue;
                    const float* src = row + (size_t)(oy - oy_begin) * out_w;
                    float* dst = plane + (size_t)y * w;  // sample ox came from dst[ox * stride_x + x0]
                    if (stride_x == 1)
                        add_span(dst + lo + x0, src + lo, (size_t)(hi - lo));
                    else
                        for (int ox = lo; ox < hi; ++ox) dst[ox * stride_x + x0] += src[ox];
                }
            }
    }
}

void activation_backward(float* grad, const float* output, const float* input, int batch, int channels, size_t spatial,
                         int activation) {
    if (activation == LINEAR) return;
    const size_t n = (size_t)batch * channels * spatial;
    if (!is_channel_activation(activation)) {
        PD_CHECK(input || !activation_needs_input(activation), "activation ", activation,
                 ": the gradient needs the pre-activation values");
        const size_t chunk = 16384;
        const long long chunks = (long long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if ((long long)n > kParallelMin)
        for (long long c = 0; c < chunks; ++c) {
            const size_t start = (size_t)c * chunk;
            gradient_span(grad + start, output + start, (input ? input : output) + start, std::min(chunk, n - start),
                          activation);
        }
        return;
    }
    PD_CHECK(input || activation != NORM_CHAN, "normalize_channels: the gradient needs the pre-activation values");
#pragma omp parallel for schedule(static) if ((long long)n > kParallelMin)
    for (long long p = 0; p < (long long)batch * (long long)spatial; ++p) {
        const size_t base = (size_t)(p / spatial) * channels * spatial + (size_t)(p % spatial);
        normalize_channels_gradient(activation, channels, spatial, grad + base, output + base,
                                    input ? input + base : nullptr);
    }
}

void add_channel_sums(const float* x, int batch, int channels, size_t spatial, float* sums) {
#pragma omp parallel for schedule(static) if ((long long)batch * channels * (long long)spatial > kParallelMin)
    for (int c = 0; c < channels; ++c) {
        double total = 0.0;
        for (int b = 0; b < batch; ++b) {
            double sum, squares;
            sum_and_squares(x + ((size_t)b * channels + c) * spatial, spatial, &sum, &squares);
            total += sum;
        }
        sums[c] += (float)total;
    }
}

namespace {
BatchNormReducer& reducer_slot() {
    static BatchNormReducer reducer;
    return reducer;
}
}  // namespace

void set_batch_norm_reducer(BatchNormReducer reducer) { reducer_slot() = std::move(reducer); }

bool has_batch_norm_reducer() { return (bool)reducer_slot(); }

void reduce_batch_norm(int layer, int phase, double* stats, size_t n) {
    const BatchNormReducer& reducer = reducer_slot();
    PD_CHECK((bool)reducer, "layer ", layer, ": no batch-norm reducer is set");
    reducer(layer, phase, stats, n);
}

void BatchNormTrainer::forward(float* x, int batch, int channels, size_t spatial, const float* scales,
                               const float* biases, float* rolling_mean, float* rolling_variance, float epsilon,
                               int layer_index, int activation, float* pre_activation) {
    const size_t count = (size_t)batch * spatial;
    const BatchNormReducer& reducer = reducer_slot();
    PD_CHECK(count > 1 || reducer, "layer ", layer_index,
             ": batch normalisation in training needs more than one value per "
             "channel (batch ",
             batch, " x ", spatial, " positions); use a larger batch");
    PD_CHECK(!is_channel_activation(activation), "layer ", layer_index,
             ": batch-norm fuses element-wise activations only");
    batch_ = batch;
    channels_ = channels;
    spatial_ = spatial;
    layer_index_ = layer_index;
    count_ = (double)count;
    xhat_.resize((size_t)batch * channels * spatial);
    mean_.assign(channels, 0.0);
    variance_.assign(channels, 0.0);
    inv_std_.assign(channels, 0.0);
    auto channel_sums = [&](int c, double* sum, double* squares) {
        *sum = 0.0;
        *squares = 0.0;
        for (int b = 0; b < batch; ++b) {
            double s, q;
            sum_and_squares(x + ((size_t)b * channels + c) * spatial, spatial, &s, &q);
            *sum += s;
            *squares += q;
        }
    };
    auto normalize_channel = [&](int c, double sum, double squares, double total) {
        // Float values summed in double: sum(x^2) - n mean^2 loses nothing that matters unless the mean is
        // ~1e6 standard deviations from zero; the clamp keeps a constant channel's round-off from going negative.
        const double mean = sum / total;
        const double variance = std::max(0.0, (squares - sum * mean) / (total - 1));
        const double inv_std = 1.0 / std::sqrt(variance + (double)epsilon);
        mean_[c] = mean;
        variance_[c] = variance;
        inv_std_[c] = inv_std;
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            normalize_span(x + base, xhat_.data() + base, pre_activation ? pre_activation + base : nullptr, spatial,
                           mean, inv_std, scales[c], biases[c], activation);
        }
        rolling_mean[c] = .99f * rolling_mean[c] + .01f * (float)mean;
        rolling_variance[c] = .99f * rolling_variance[c] + .01f * (float)variance;
    };
    if (!reducer) {
        // One channel per thread: its statistics are summed in one fixed order, then its values normalised.
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
        for (int c = 0; c < channels; ++c) {
            double sum, squares;
            channel_sums(c, &sum, &squares);
            normalize_channel(c, sum, squares, (double)count);
        }
        return;
    }
    // Synchronized: the local sums of every channel, reduced over the processes, then the normalisation.
    std::vector<double> stats(2 * (size_t)channels + 1);
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
    for (int c = 0; c < channels; ++c) channel_sums(c, &stats[c], &stats[channels + c]);
    stats[2 * (size_t)channels] = (double)count;
    reducer(layer_index, 0, stats.data(), stats.size());
    const double total = stats[2 * (size_t)channels];
    PD_CHECK(total > 1, "layer ", layer_index,
             ": batch normalisation in training needs more than one value per channel over all processes (", total,
             "); use a larger batch");
    count_ = total;
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
    for (int c = 0; c < channels; ++c) normalize_channel(c, stats[c], stats[channels + c], total);
}

void BatchNormTrainer::backward(float* grad, const float* scales, float* grad_scales, float* grad_biases,
                                const float* output, const float* pre_activation, int activation) const {
    const size_t count = (size_t)batch_ * spatial_;
    const int channels = channels_;
    const size_t spatial = spatial_;
    const int batch = batch_;
    PD_CHECK(!is_channel_activation(activation) && (activation == LINEAR || output) &&
                 (pre_activation || !activation_needs_input(activation)),
             "batch-norm backward: activation ", activation, " needs its output (and input) values");
    // g = dL/dy from dL/d(activation(y)) in place, and its sums sum(g), sum(g * xhat) for channel c.
    auto channel_sums = [&](int c, double* sum_g, double* sum_gx) {
        *sum_g = 0.0;
        *sum_gx = 0.0;
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            const float* y = output ? output + base : grad + base;
            double s, sx;
            gradient_and_sums(grad + base, y, pre_activation ? pre_activation + base : y, xhat_.data() + base, spatial,
                              activation, &s, &sx);
            *sum_g += s;
            *sum_gx += sx;
        }
        grad_biases[c] += (float)*sum_g;
        grad_scales[c] += (float)*sum_gx;
    };
    // dL/dx = scale / std * (g - mean(g) - xhat * sum(g * xhat) / (N - 1)), g = dL/dy.
    auto input_gradient = [&](int c, double sum_g, double sum_gx, double total) {
        const double factor = scales[c] * inv_std_[c];
        const double mean_g = sum_g / total, proj = sum_gx / (total - 1);
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            normalize_gradient_span(grad + base, xhat_.data() + base, spatial, factor, mean_g, proj);
        }
    };
    const BatchNormReducer& reducer = reducer_slot();
    if (!reducer) {
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
        for (int c = 0; c < channels; ++c) {
            double sum_g, sum_gx;
            channel_sums(c, &sum_g, &sum_gx);
            input_gradient(c, sum_g, sum_gx, (double)count);
        }
        return;
    }
    // Synchronized: the mean of g and its projection on xhat are over every process's batch, as in forward().
    std::vector<double> stats(2 * (size_t)channels + 1);
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
    for (int c = 0; c < channels; ++c) channel_sums(c, &stats[c], &stats[channels + c]);
    stats[2 * (size_t)channels] = (double)count;
    reducer(layer_index_, 1, stats.data(), stats.size());
    const double total = stats[2 * (size_t)channels];
    PD_CHECK(total == count_, "layer ", layer_index_, ": the batch-norm backward pass counts ", total,
             " values per channel over all processes, its forward pass ", count_);
#pragma omp parallel for schedule(static) if ((long long)count * channels > kParallelMin)
    for (int c = 0; c < channels; ++c) input_gradient(c, stats[c], stats[channels + c], total);
}

}  // namespace pd
