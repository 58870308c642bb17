// CPU building blocks of training shared by several layers: batch-norm on batch statistics, activation
// gradients over whole arrays, col2im (the adjoint of im2col) and the small copies around our sgemm.
#pragma once

#include <cstddef>
#include <vector>

namespace pd {

// dst[j * rows + i] = src[i * cols + j]: a rows x cols matrix into its cols x rows transpose.
void transpose(const float* src, int rows, int cols, float* dst);

// dst[i] += src[i] for n values.
void add_into(float* dst, const float* src, size_t n);

// The adjoint of im2col (ops.h) for one image: every column entry is added back to the pixel it was sampled
// from; entries that sampled the zero padding are dropped.
void col2im_add(const float* columns, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x,
                int dilation, int out_h, int out_w, float* image);

// Turns grad = dLoss/dy into dLoss/dx in place for y = activate(x) over `batch` blocks of channels x spatial
// values. `output` is y; `input` is x, needed only when activation_needs_input() (may be null otherwise). The
// normalize_channels family gets its exact per-pixel Jacobian (Darknet's gradient for it is an approximation).
void activation_backward(float* grad, const float* output, const float* input, int batch, int channels,
                         size_t spatial, int activation);

// Batch normalisation in training mode, as Darknet's forward_batchnorm_layer with state.train: per channel,
// mean and variance over batch x spatial of the current batch, the variance with Bessel's correction
// (variance_cpu divides by N - 1), xhat = (x - mean) / sqrt(variance + eps), y = scale * xhat + bias; the
// rolling statistics move with Darknet's GPU momentum, rolling = .99 rolling + .01 batch statistic.
class BatchNormTrainer {
public:
    // x holds the raw values on entry and y on return. Throws when a channel has a single value (N - 1 = 0).
    void forward(float* x, int batch, int channels, size_t spatial, const float* scales, const float* biases,
                 float* rolling_mean, float* rolling_variance, float epsilon, int layer_index);

    // grad holds dLoss/dy on entry and dLoss/dx on return; dLoss/dscale and dLoss/dbias are added to
    // grad_scales and grad_biases. This is the exact derivative of forward(), including the N - 1 of the
    // variance (Darknet's normalize_delta_cpu uses N in that one term, a difference of order 1/N).
    void backward(float* grad, const float* scales, float* grad_scales, float* grad_biases) const;

    // The statistics of the last forward(), for tests and diagnostics.
    const std::vector<double>& batch_mean() const { return mean_; }
    const std::vector<double>& batch_variance() const { return variance_; }

private:
    int batch_ = 0, channels_ = 0;
    size_t spatial_ = 0;
    std::vector<float> xhat_;
    std::vector<double> mean_, variance_, inv_std_;
};

}  // namespace pd
