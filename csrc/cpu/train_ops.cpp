// Training building blocks for the CPU path (see train_ops.h).
#include "train_ops.h"

#include <algorithm>
#include <cmath>

#include "../core/common.h"
#include "../math/activations.h"

namespace pd {

void transpose(const float* src, int rows, int cols, float* dst) {
    // 32 x 32 tiles keep both the reads and the writes within a few cache lines.
    const int tile = 32;
    const int row_tiles = (rows + tile - 1) / tile, col_tiles = (cols + tile - 1) / tile;
#pragma omp parallel for collapse(2) schedule(static) if ((long long)rows * cols > 65536)
    for (int ti = 0; ti < row_tiles; ++ti)
        for (int tj = 0; tj < col_tiles; ++tj) {
            const int i1 = std::min(rows, (ti + 1) * tile), j1 = std::min(cols, (tj + 1) * tile);
            for (int i = ti * tile; i < i1; ++i)
                for (int j = tj * tile; j < j1; ++j) dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
        }
}

void add_into(float* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (long long i = 0; i < (long long)n; ++i) dst[i] += src[i];
}

void col2im_add(const float* columns, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x,
                int dilation, int out_h, int out_w, float* image) {
    // One channel per thread: all the rows of a channel write only that channel's plane, so no two threads
    // ever add to the same pixel.
#pragma omp parallel for schedule(static) if ((long long)c * ksize * ksize * out_h * out_w > 65536)
    for (int ch = 0; ch < c; ++ch) {
        float* plane = image + (size_t)ch * h * w;
        for (int ky = 0; ky < ksize; ++ky)
            for (int kx = 0; kx < ksize; ++kx) {
                const float* row = columns + ((size_t)(ch * ksize + ky) * ksize + kx) * out_h * out_w;
                for (int oy = 0; oy < out_h; ++oy) {
                    const int y = oy * stride_y - pad + ky * dilation;
                    if (y < 0 || y >= h) continue;
                    const float* src = row + (size_t)oy * out_w;
                    float* dst = plane + (size_t)y * w;
                    const int x0 = -pad + kx * dilation;
                    for (int ox = 0; ox < out_w; ++ox) {
                        const int x = ox * stride_x + x0;
                        if (x >= 0 && x < w) dst[x] += src[ox];
                    }
                }
            }
    }
}

void activation_backward(float* grad, const float* output, const float* input, int batch, int channels,
                         size_t spatial, int activation) {
    if (activation == LINEAR) return;
    const size_t n = (size_t)batch * channels * spatial;
    if (!is_channel_activation(activation)) {
        PD_CHECK(input || !activation_needs_input(activation), "activation ", activation,
                 ": the gradient needs the pre-activation values");
#pragma omp parallel for schedule(static) if (n > 65536)
        for (long long i = 0; i < (long long)n; ++i)
            grad[i] *= gradient(output[i], input ? input[i] : 0.f, activation);
        return;
    }
    PD_CHECK(input || activation != NORM_CHAN, "normalize_channels: the gradient needs the pre-activation values");
    const float eps = 0.0001f;  // the forward's (activate_array)
#pragma omp parallel for schedule(static) if (n > 65536)
    for (long long p = 0; p < (long long)batch * (long long)spatial; ++p) {
        const size_t base = (size_t)(p / spatial) * channels * spatial + (size_t)(p % spatial);
        float* g = grad + base;
        const float* y = output + base;
        double dot = 0.0;
        for (int k = 0; k < channels; ++k) dot += (double)g[k * spatial] * y[k * spatial];
        if (activation == NORM_CHAN) {
            // y_k = x_k / S for x_k > 0 (else 0), S = eps + sum of the positive x: dy_k/dx_j = [x_j > 0](d_kj - y_k)/S.
            const float* x = input + base;
            double sum = eps;
            for (int k = 0; k < channels; ++k) sum += std::max(x[k * spatial], 0.f);
            for (int k = 0; k < channels; ++k)
                g[k * spatial] = x[k * spatial] > 0.f ? (float)((g[k * spatial] - dot) / sum) : 0.f;
            continue;
        }
        // Softmax with eps in the denominator: dy_k/dx_j = d_kj y_k - y_k y_j. With the max subtracted, the
        // maximum's input also moves every exponent, which adds -y_k (1 - sum y) to its column (eps / (eps + sum)).
        int arg_max = 0;
        double total = 0.0;
        for (int k = 0; k < channels; ++k) {
            total += y[k * spatial];
            if (y[k * spatial] > y[arg_max * spatial]) arg_max = k;
        }
        for (int k = 0; k < channels; ++k) g[k * spatial] = (float)(y[k * spatial] * (g[k * spatial] - dot));
        if (activation == NORM_CHAN_SOFTMAX_MAXVAL) g[arg_max * spatial] -= (float)(dot * (1.0 - total));
    }
}

void BatchNormTrainer::forward(float* x, int batch, int channels, size_t spatial, const float* scales,
                               const float* biases, float* rolling_mean, float* rolling_variance, float epsilon,
                               int layer_index) {
    const size_t count = (size_t)batch * spatial;
    PD_CHECK(count > 1, "layer ", layer_index, ": batch normalisation in training needs more than one value per "
             "channel (batch ", batch, " x ", spatial, " positions); use a larger batch");
    batch_ = batch;
    channels_ = channels;
    spatial_ = spatial;
    xhat_.resize((size_t)batch * channels * spatial);
    mean_.assign(channels, 0.0);
    variance_.assign(channels, 0.0);
    inv_std_.assign(channels, 0.0);
#pragma omp parallel for schedule(static) if ((long long)count * channels > 65536)
    for (int c = 0; c < channels; ++c) {
        double sum = 0.0;
        for (int b = 0; b < batch; ++b) {
            const float* v = x + ((size_t)b * channels + c) * spatial;
            for (size_t i = 0; i < spatial; ++i) sum += v[i];
        }
        const double mean = sum / (double)count;
        double squares = 0.0;
        for (int b = 0; b < batch; ++b) {
            const float* v = x + ((size_t)b * channels + c) * spatial;
            for (size_t i = 0; i < spatial; ++i) squares += (v[i] - mean) * (v[i] - mean);
        }
        const double variance = squares / (double)(count - 1);
        const double inv_std = 1.0 / std::sqrt(variance + (double)epsilon);
        mean_[c] = mean;
        variance_[c] = variance;
        inv_std_[c] = inv_std;
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            for (size_t i = 0; i < spatial; ++i) {
                const float xhat = (float)((x[base + i] - mean) * inv_std);
                xhat_[base + i] = xhat;
                x[base + i] = scales[c] * xhat + biases[c];
            }
        }
        rolling_mean[c] = .99f * rolling_mean[c] + .01f * (float)mean;
        rolling_variance[c] = .99f * rolling_variance[c] + .01f * (float)variance;
    }
}

void BatchNormTrainer::backward(float* grad, const float* scales, float* grad_scales, float* grad_biases) const {
    const size_t count = (size_t)batch_ * spatial_;
    const int channels = channels_;
    const size_t spatial = spatial_;
    const int batch = batch_;
#pragma omp parallel for schedule(static) if ((long long)count * channels > 65536)
    for (int c = 0; c < channels; ++c) {
        double sum_g = 0.0, sum_gx = 0.0;
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            for (size_t i = 0; i < spatial; ++i) {
                sum_g += grad[base + i];
                sum_gx += (double)grad[base + i] * xhat_[base + i];
            }
        }
        grad_biases[c] += (float)sum_g;
        grad_scales[c] += (float)sum_gx;
        // dL/dx = scale / std * (g - mean(g) - xhat * sum(g * xhat) / (N - 1)), g = dL/dy.
        const double factor = scales[c] * inv_std_[c];
        const double mean_g = sum_g / (double)count, proj = sum_gx / (double)(count - 1);
        for (int b = 0; b < batch; ++b) {
            const size_t base = ((size_t)b * channels + c) * spatial;
            for (size_t i = 0; i < spatial; ++i)
                grad[base + i] = (float)(factor * (grad[base + i] - mean_g - xhat_[base + i] * proj));
        }
    }
}

}  // namespace pd
