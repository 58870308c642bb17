// [batchnorm] on the GPU: x * scale + shift per channel, with the factors the CPU layer uses (batchnorm_factors);
// in training, the batch statistics (csrc/math/batchnorm.h). The training launchers here also serve the
// batch-normalised [convolutional] and [connected] layers.
#include <vector>

#include "cpu/ops.h"
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
        launch_batchnorm_train(ctx.output.as<float>(), xhat_.data(), nullptr, inv_std_.data(), ctx.batch, spec.out.c,
                               spatial, ctx.params + spec.tensor("scales").offset,
                               ctx.params + spec.tensor("biases").offset,
                               ctx.params + spec.tensor("rolling_mean").offset,
                               ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, LINEAR, ctx.stream);
    }

    // Scales and biases get their gradients, the input the normalisation's exact derivative.
    void backward(const CudaBackwardContext& ctx) override {
        launch_batchnorm_backward(ctx.output_grad, ctx.output, nullptr, xhat_.data(), inv_std_.data(), ctx.batch,
                                  spec.out.c, (size_t)spec.out.h * spec.out.w,
                                  ctx.params + spec.tensor("scales").offset, ctx.grads + spec.tensor("scales").offset,
                                  ctx.grads + spec.tensor("biases").offset, LINEAR, ctx.stream);
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
                            float epsilon, int activation, cudaStream_t stream) {
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_train_forward_kernel)(x, xhat, pre, inv_std, batch, channels,
                                                                              spatial, scales, biases, rolling_mean,
                                                                              rolling_variance, epsilon, activation);
    PD_CUDA_CHECK_LAUNCH();
}

void launch_batchnorm_backward(float* grad, const float* output, const float* pre, const float* xhat,
                               const double* inv_std, int batch, int channels, size_t spatial, const float* scales,
                               float* grad_scales, float* grad_biases, int activation, cudaStream_t stream) {
    PD_LAUNCH(grid_for(channels, 64), 64, 0, stream, bn_train_backward_kernel)(
        grad, output, pre, xhat, inv_std, batch, channels, spatial, scales, grad_scales, grad_biases, activation);
    PD_CUDA_CHECK_LAUNCH();
}

PD_REGISTER_CUDA_LAYER(LayerKind::Batchnorm, CudaBatchnorm);

}  // namespace pd
