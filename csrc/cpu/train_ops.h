// CPU building blocks of training shared by several layers: batch-norm on batch statistics (fused with the
// activation), activation gradients over whole arrays, the convolution unrolling and its adjoint, and the
// transposes that put operands in the row-major layout our sgemm takes.
//
// Every reduction here has a fixed order that depends only on the shapes (each sum is owned by one thread and
// runs in a fixed lane order), never on the thread count or the scheduling, so a training step repeats bit for
// bit: resuming a run gives the weights an uninterrupted run gives.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

namespace pd {

// dst[j * rows + i] = src[i * cols + j]: a rows x cols matrix into its cols x rows transpose.
void transpose(const float* src, int rows, int cols, float* dst);

// dst[j * rows + i] += src[i * cols + j]: adds the transpose of a rows x cols matrix.
void add_transposed(const float* src, int rows, int cols, float* dst);

// dst[i] += src[i] for n values.
void add_into(float* dst, const float* src, size_t n);

// Unrolls one image (c x h x w) into columns for a convolution, as ops.h's im2col (Darknet's im2col_cpu_ext):
// row (ch*ksize + ky)*ksize + kx, column oy*out_w + ox, sampling (oy*stride_y - pad + ky*dilation,
// ox*stride_x - pad + kx*dilation) and 0 outside the image; row r starts at columns + r * ld (ld >= out_h*out_w).
void unroll(const float* image, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
            int out_h, int out_w, float* columns, size_t ld);

// The adjoint of unroll for output rows [oy_begin, oy_end) of one image: columns holds those rows only (row r,
// column (oy - oy_begin)*out_w + ox, ld (oy_end - oy_begin)*out_w), and every entry is added back to the pixel it
// was sampled from; entries that sampled the zero padding are dropped.
void col2im_add(const float* columns, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
                int out_w, int oy_begin, int oy_end, float* image);

// Turns grad = dLoss/dy into dLoss/dx in place for y = activate(x) over `batch` blocks of channels x spatial
// values. `output` is y; `input` is x, needed only when activation_needs_input() (may be null otherwise). The
// normalize_channels family gets its exact per-pixel Jacobian (Darknet's gradient for it is an approximation).
void activation_backward(float* grad, const float* output, const float* input, int batch, int channels, size_t spatial,
                         int activation);

// sums[c] += the sum of channel c over all images (batch blocks of channels x spatial), in double.
void add_channel_sums(const float* x, int batch, int channels, size_t spatial, float* sums);

// Synchronized batch normalisation across processes (data-parallel training). When a reducer is set, every
// BatchNormTrainer hands it the per-channel partial sums of its local batch and uses what it gives back (the sums
// over all processes) instead: forward() passes `phase` 0 with [sum(x) per channel, sum(x^2) per channel, count],
// backward() `phase` 1 with [sum(g) per channel, sum(g * xhat) per channel, count] (g = dLoss/dy); `n` = 2 *
// channels + 1. The reducer replaces the values in place (an all-reduce with sum) and may throw; the scale and
// bias gradients stay local (the caller reduces the gradient buffer as a whole). Process-wide: a process trains
// one network at a time. With no reducer (the default) the code path and every result are unchanged.
using BatchNormReducer = std::function<void(int layer, int phase, double* stats, size_t n)>;
void set_batch_norm_reducer(BatchNormReducer reducer);
bool has_batch_norm_reducer();
// Calls the reducer (one must be set): the CUDA batch-norm hands its sums to the same hook.
void reduce_batch_norm(int layer, int phase, double* stats, size_t n);

// Batch normalisation in training mode, as Darknet's forward_batchnorm_layer with state.train: per channel,
// mean and variance over batch x spatial of the current batch, the variance with Bessel's correction
// (variance_cpu divides by N - 1), xhat = (x - mean) / sqrt(variance + eps), y = scale * xhat + bias; the
// rolling statistics move with Darknet's GPU momentum, rolling = .99 rolling + .01 batch statistic.
class BatchNormTrainer {
public:
    // x holds the raw values on entry and activation(y) on return, where `activation` is element-wise (LINEAR
    // for none; the normalize_channels family is the caller's to apply afterwards). With pre_activation, y itself
    // is also written there. Throws when a channel has a single value (N - 1 = 0).
    void forward(float* x, int batch, int channels, size_t spatial, const float* scales, const float* biases,
                 float* rolling_mean, float* rolling_variance, float epsilon, int layer_index, int activation = 0,
                 float* pre_activation = nullptr);

    // grad holds dLoss/d(output) on entry and dLoss/dx on return; dLoss/dscale and dLoss/dbias are added to
    // grad_scales and grad_biases. The element-wise `activation` of forward() is differentiated first (from its
    // `output`, and `pre_activation` when activation_needs_input). This is the exact derivative of forward(),
    // including the N - 1 of the variance (Darknet's normalize_delta_cpu uses N in that one term, a difference of
    // order 1/N).
    void backward(float* grad, const float* scales, float* grad_scales, float* grad_biases,
                  const float* output = nullptr, const float* pre_activation = nullptr, int activation = 0) const;

    // The statistics of the last forward(), for tests and diagnostics.
    const std::vector<double>& batch_mean() const { return mean_; }
    const std::vector<double>& batch_variance() const { return variance_; }

private:
    int batch_ = 0, channels_ = 0, layer_index_ = -1;
    double count_ = 0;  // values per channel behind the statistics: all processes' with a reducer
    size_t spatial_ = 0;
    std::vector<float> xhat_;
    std::vector<double> mean_, variance_, inv_std_;
};

}  // namespace pd
