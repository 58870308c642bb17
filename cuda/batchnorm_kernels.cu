// [batchnorm] on the GPU: x * scale + shift per channel, with the factors the CPU layer uses (batchnorm_factors);
// in training, the batch statistics (csrc/math/batchnorm.h). The training launchers here also serve the
// batch-normalised [convolutional] and [connected] layers.
#include <vector>

#include "cpu/ops.h"
#include "cpu/train_ops.h"
#include "cuda_layer.cuh"
#include "math/batchnorm.h"

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

// One thread per channel (a correctness baseline, see cuda/NOTES.md).
__global__ void bn_train_forward_kernel(float* x, float* xhat, float* pre, double* inv_std_out, int batch, int channels,
                                        size_t spatial, const float* scales, const float* biases, float* rolling_mean,
                                        float* rolling_variance, float epsilon, int activation) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        inv_std_out[c] = batchnorm_train_channel(x, xhat, pre, batch, channels, spatial, c, scales[c], biases[c],
                                                 rolling_mean + c, rolling_variance + c, epsilon, activation);
}

__global__ void bn_train_backward_kernel(float* grad, const float* output, const float* pre, const float* xhat,
                                         const double* inv_std, int batch, int channels, size_t spatial,
                                         const float* scales, float* grad_scales, float* grad_biases, int activation) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        batchnorm_backward_channel(grad, output, pre, xhat, inv_std[c], batch, channels, spatial, c, scales[c],
                                   grad_scales + c, grad_biases + c, activation);
}

// Synchronized batch-norm (data-parallel training): the local sums first, then the normalisation with the sums
// over every process. stats holds sum(x) per channel, then sum(x^2) per channel (forward), or sum(g), sum(g * xhat)
// (backward).
__global__ void bn_sums_kernel(const float* x, double* stats, int batch, int channels, size_t spatial) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        batchnorm_channel_sums(x, batch, channels, spatial, c, stats + c, stats + channels + c);
}

__global__ void bn_normalize_kernel(float* x, float* xhat, float* pre, double* inv_std_out, const double* stats,
                                    double total, int batch, int channels, size_t spatial, const float* scales,
                                    const float* biases, float* rolling_mean, float* rolling_variance, float epsilon,
                                    int activation) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        inv_std_out[c] = batchnorm_normalize_channel(x, xhat, pre, batch, channels, spatial, c, stats[c],
                                                     stats[channels + c], total, scales[c], biases[c], rolling_mean + c,
                                                     rolling_variance + c, epsilon, activation);
}

__global__ void bn_gradient_sums_kernel(float* grad, const float* output, const float* pre, const float* xhat,
                                        double* stats, int batch, int channels, size_t spatial, float* grad_scales,
                                        float* grad_biases, int activation) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        batchnorm_gradient_sums(grad, output, pre, xhat, batch, channels, spatial, c, grad_scales + c, grad_biases + c,
                                activation, stats + c, stats + channels + c);
}

__global__ void bn_input_gradient_kernel(float* grad, const float* xhat, const double* inv_std, const double* stats,
                                         double total, int batch, int channels, size_t spatial, const float* scales) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x)
        batchnorm_input_gradient(grad, xhat, inv_std[c], batch, channels, spatial, c, scales[c], stats[c],
                                 stats[channels + c], total);
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

// Scratch for the synchronized path's sums (one per thread: layers run one after the other on a stream).
double* stats_scratch(int channels) {
    static thread_local DeviceArray<double> scratch;
    if (scratch.size() < 2 * (size_t)channels) scratch.resize(2 * (size_t)channels);
    return scratch.data();
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
    if (!has_batch_norm_reducer()) {
        PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_train_forward_kernel)(
            x, xhat, pre, inv_std, batch, channels, spatial, scales, biases, rolling_mean, rolling_variance, epsilon,
            activation);
        PD_CUDA_CHECK_LAUNCH();
        return;
    }
    double* stats = stats_scratch(channels);
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_sums_kernel)(x, stats, batch, channels, spatial);
    PD_CUDA_CHECK_LAUNCH();
    const double total = reduce_device_stats(stats, channels, (double)spatial * batch, layer, 0, stream);
    PD_CHECK(total > 1, "layer ", layer,
             ": batch normalisation in training needs more than one value per channel over all processes (", total,
             "); use a larger batch");
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_normalize_kernel)(
        x, xhat, pre, inv_std, stats, total, batch, channels, spatial, scales, biases, rolling_mean, rolling_variance,
        epsilon, activation);
    PD_CUDA_CHECK_LAUNCH();
}

void launch_batchnorm_backward(float* grad, const float* output, const float* pre, const float* xhat,
                               const double* inv_std, int batch, int channels, size_t spatial, const float* scales,
                               float* grad_scales, float* grad_biases, int activation, int layer, cudaStream_t stream) {
    if (!has_batch_norm_reducer()) {
        PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_train_backward_kernel)(
            grad, output, pre, xhat, inv_std, batch, channels, spatial, scales, grad_scales, grad_biases, activation);
        PD_CUDA_CHECK_LAUNCH();
        return;
    }
    double* stats = stats_scratch(channels);
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_gradient_sums_kernel)(
        grad, output, pre, xhat, stats, batch, channels, spatial, grad_scales, grad_biases, activation);
    PD_CUDA_CHECK_LAUNCH();
    const double total = reduce_device_stats(stats, channels, (double)spatial * batch, layer, 1, stream);
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_input_gradient_kernel)(grad, xhat, inv_std, stats, total, batch,
                                                                               channels, spatial, scales);
    PD_CUDA_CHECK_LAUNCH();
}

PD_REGISTER_CUDA_LAYER(LayerKind::Batchnorm, CudaBatchnorm);

}  // namespace pd
