// [batchnorm] on the GPU: x * scale + shift per channel, with the factors the CPU layer uses (batchnorm_factors);
// in training, the batch statistics (csrc/math/batchnorm.h). The training launchers here also serve the
// batch-normalised [convolutional] and [connected] layers.
#include <vector>

#include "cpu/ops.h"
#include "cpu/train_ops.h"
#include "cuda_layer.cuh"
#include "math/batchnorm.h"
#include "reduce.cuh"

namespace pd {
namespace {

template <typename T>
__global__ void scale_shift_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int channels,
                                   size_t plane, const float* scale, const float* shift) {
    const size_t per_image = plane * channels, total = per_image * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / per_image, within = i % per_image, c = within / plane;
        out[b * out_stride + within] = from_float<T>(to_float(in[b * in_stride + within]) * scale[c] + shift[c]);
    }
}

// Training. Each channel's sums run through launch_segment_sums (cuda/reduce.cuh: blocks per channel, or per
// chunk of a channel and then per channel, in a fixed order), the element-wise parts one thread per value.
// stats holds sum(x) per channel, then sum(x^2) per channel (forward), or sum(g), sum(g * xhat) (backward).

struct ChannelSums {  // forward: x and x^2
    const float* x;
    size_t channels, spatial;
    __device__ void operator()(size_t c, size_t j, double* v) const {
        const double value = x[channel_value_index(c, j, channels, spatial)];
        v[0] += value;
        v[1] += value * value;
    }
};

struct GradientSums {  // backward: the activation's gradient applied in place, then g and g * xhat
    float* grad;
    const float *output, *pre, *xhat;
    size_t channels, spatial;
    int activation;
    __device__ void operator()(size_t c, size_t j, double* v) const {
        const size_t i = channel_value_index(c, j, channels, spatial);
        float g = grad[i];  // output (and pre) may be null with LINEAR
        if (activation != LINEAR) g *= gradient(output[i], pre ? pre[i] : output[i], activation);
        grad[i] = g;
        v[0] += g;
        v[1] += (double)g * xhat[i];
    }
};

struct StoreStats {  // the sums into stats; in the backward also dbias += sum(g), dscale += sum(g * xhat)
    double* stats;
    size_t channels;
    float *grad_scales, *grad_biases;
    __device__ void operator()(size_t c, const double* v) const {
        stats[c] = v[0];
        stats[channels + c] = v[1];
        if (grad_biases) grad_biases[c] += (float)v[0];
        if (grad_scales) grad_scales[c] += (float)v[1];
    }
};

// Per channel: 1 / std kept for the backward, the rolling statistics moved.
__global__ void bn_statistics_kernel(const double* stats, double total, int channels, float epsilon, double* inv_std,
                                     float* rolling_mean, float* rolling_variance) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x) {
        const BatchnormStatistics s = batchnorm_statistics(stats[c], stats[channels + c], total, epsilon);
        inv_std[c] = s.inv_std;
        batchnorm_rolling_update(s, rolling_mean + c, rolling_variance + c);
    }
}

// One thread per value: xhat, the value before the activation (pre, when not null), the activation.
__global__ void bn_normalize_kernel(float* x, float* xhat, float* pre, const double* inv_std, const double* stats,
                                    double total, int batch, int channels, size_t spatial, const float* scales,
                                    const float* biases, int activation) {
    const size_t n = (size_t)batch * channels * spatial;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t c = (i / spatial) % channels;
        const float y = batchnorm_normalize_value(x[i], stats[c] / total, inv_std[c], scales[c], biases[c], xhat + i);
        if (pre) pre[i] = y;
        x[i] = activate(y, activation);
    }
}

// One thread per value: dLoss/dx from the sums.
__global__ void bn_input_gradient_kernel(float* grad, const float* xhat, const double* inv_std, const double* stats,
                                         double total, int batch, int channels, size_t spatial, const float* scales) {
    const size_t n = (size_t)batch * channels * spatial;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t c = (i / spatial) % channels;
        grad[i] =
            batchnorm_input_gradient(grad[i], xhat[i], inv_std[c], scales[c], stats[c], stats[channels + c], total);
    }
}

// Hands the local sums (2 * channels doubles on the device, and the local count) to the process's batch-norm
// reducer, the same hook the CPU engine calls (csrc/cpu/train_ops.h), and puts the sums over every process back.
// Returns the number of values behind them. The sums are small (16 bytes a channel); the wait for them is the
// synchronisation that synchronized batch-norm needs anyway.
double reduce_device_stats(double* stats, int channels, double count, int layer, int phase, cudaStream_t stream) {
    std::vector<double> host(2 * (size_t)channels + 1);
    PD_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), stats, 2 * (size_t)channels * sizeof(double), cudaMemcpyDeviceToHost, stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(stream));
    host.back() = count;
    reduce_batch_norm(layer, phase, host.data(), host.size());
    PD_CUDA_CHECK(
        cudaMemcpyAsync(stats, host.data(), 2 * (size_t)channels * sizeof(double), cudaMemcpyHostToDevice, stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` goes out of scope
    return host.back();
}

class CudaBatchnorm : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void prepare(const PrepareContext& ctx) override {
        const int c = spec.out.c;
        std::vector<double> factor(c);
        std::vector<float> scale(c), shift(c);
        batchnorm_factors(ctx.params + spec.tensor("biases").offset, ctx.params + spec.tensor("scales").offset,
                          ctx.params + spec.tensor("rolling_mean").offset,
                          ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, c, factor.data(),
                          shift.data());
        for (int i = 0; i < c; ++i) scale[i] = (float)factor[i];
        scale_.upload(scale.data(), c, ctx.stream);
        shift_.upload(shift.data(), c, ctx.stream);
    }

    void forward(const CudaContext& ctx) override {
        const size_t plane = (size_t)spec.out.h * spec.out.w, total = (size_t)ctx.batch * spec.out.size();
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, scale_shift_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
                plane, scale_.data(), shift_.data());
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    // The CPU layer's training forward: the input copied, then normalised over the batch (no activation).
    void forward_train(const CudaTrainContext& ctx) override {
        const size_t spatial = (size_t)spec.out.h * spec.out.w, total = (size_t)ctx.batch * spec.out.size();
        PD_CHECK(spatial * ctx.batch > 1, "layer ", spec.index,
                 ": batch normalisation in training needs more than one value per channel (batch ", ctx.batch, " x ",
                 spatial, " positions); use a larger batch");
        PD_CUDA_CHECK(cudaMemcpyAsync(ctx.output.data, ctx.input.data, total * sizeof(float), cudaMemcpyDeviceToDevice,
                                      ctx.stream));
        xhat_.resize(total);
        inv_std_.resize(spec.out.c);
        launch_batchnorm_train(
            ctx.output.as<float>(), xhat_.data(), nullptr, inv_std_.data(), ctx.batch, spec.out.c, spatial,
            ctx.params + spec.tensor("scales").offset, ctx.params + spec.tensor("biases").offset,
            ctx.params + spec.tensor("rolling_mean").offset, ctx.params + spec.tensor("rolling_variance").offset,
            ctx.bn_epsilon, LINEAR, spec.index, ctx.stream);
    }

    // Scales and biases get their gradients, the input the normalisation's exact derivative.
    void backward(const CudaBackwardContext& ctx) override {
        launch_batchnorm_backward(ctx.output_grad, ctx.output, nullptr, xhat_.data(), inv_std_.data(), ctx.batch,
                                  spec.out.c, (size_t)spec.out.h * spec.out.w,
                                  ctx.params + spec.tensor("scales").offset, ctx.grads + spec.tensor("scales").offset,
                                  ctx.grads + spec.tensor("biases").offset, LINEAR, spec.index, ctx.stream);
        if (ctx.input_grad) {
            const size_t per_image = spec.out.size();
            add_strided(ctx.input_grad, per_image, ctx.output_grad, per_image, ctx.batch, per_image, ctx.stream);
        }
    }

private:
    DeviceArray<float> scale_, shift_;
    DeviceArray<float> xhat_;      // the training forward's normalised values
    DeviceArray<double> inv_std_;  // and 1 / sqrt(variance + epsilon) per channel
};

}  // namespace

void launch_batchnorm_train(float* x, float* xhat, float* pre, double* inv_std, int batch, int channels, size_t spatial,
                            const float* scales, const float* biases, float* rolling_mean, float* rolling_variance,
                            float epsilon, int activation, int layer, cudaStream_t stream) {
    double* stats = reduce_scratch(1, 2 * (size_t)channels, stream);
    launch_segment_sums<2>(channels, (size_t)batch * spatial, ChannelSums{x, (size_t)channels, spatial},
                           StoreStats{stats, (size_t)channels, nullptr, nullptr}, stream);
    double total = (double)spatial * batch;
    if (has_batch_norm_reducer()) {
        total = reduce_device_stats(stats, channels, total, layer, 0, stream);
        PD_CHECK(total > 1, "layer ", layer,
                 ": batch normalisation in training needs more than one value per channel over all processes (", total,
                 "); use a larger batch");
    }
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_statistics_kernel)(stats, total, channels, epsilon, inv_std,
                                                                           rolling_mean, rolling_variance);
    PD_CUDA_CHECK_LAUNCH();
    const size_t n = (size_t)batch * channels * spatial;
    PD_LAUNCH(grid_for(n, 256), 256, 0, stream, bn_normalize_kernel)(x, xhat, pre, inv_std, stats, total, batch,
                                                                     channels, spatial, scales, biases, activation);
    PD_CUDA_CHECK_LAUNCH();
}

void launch_batchnorm_backward(float* grad, const float* output, const float* pre, const float* xhat,
                               const double* inv_std, int batch, int channels, size_t spatial, const float* scales,
                               float* grad_scales, float* grad_biases, int activation, int layer, cudaStream_t stream) {
    double* stats = reduce_scratch(1, 2 * (size_t)channels, stream);
    launch_segment_sums<2>(channels, (size_t)batch * spatial,
                           GradientSums{grad, output, pre, xhat, (size_t)channels, spatial, activation},
                           StoreStats{stats, (size_t)channels, grad_scales, grad_biases}, stream);
    double total = (double)spatial * batch;
    if (has_batch_norm_reducer()) total = reduce_device_stats(stats, channels, total, layer, 1, stream);
    const size_t n = (size_t)batch * channels * spatial;
    PD_LAUNCH(grid_for(n, 256), 256, 0, stream, bn_input_gradient_kernel)(grad, xhat, inv_std, stats, total, batch,
                                                                          channels, spatial, scales);
    PD_CUDA_CHECK_LAUNCH();
}

PD_REGISTER_CUDA_LAYER(LayerKind::Batchnorm, CudaBatchnorm);

}  // namespace pd
