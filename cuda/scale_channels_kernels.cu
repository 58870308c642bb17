// [scale_channels] on the GPU: the `from` layer times one factor per channel, or per pixel with scale_wh=1, then
// the activation. The same product kernel runs [sam] (sam_kernels.cu) with one factor per element.
#include "cuda_layer.cuh"
#include "math/activations.h"
#include "reduce.cuh"

namespace pd {
namespace {

template <typename T>
__global__ void product_kernel(const T* in, size_t in_stride, const T* from, size_t from_stride, T* out,
                               size_t out_stride, int batch, size_t per_image, size_t plane, ProductFactor factor,
                               int activation) {
    const size_t total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const size_t k = factor == ProductFactor::SAME
                             ? within
                             : (factor == ProductFactor::PER_PIXEL ? within % plane : within / plane);
        const float v = to_float(from[b * from_stride + within]) * to_float(in[b * in_stride + k]);
        out[b * out_stride + within] = from_float<T>(activate(v, activation));
    }
}

// The factor index of output element `within` of an image, and the factors per image.
__host__ __device__ inline size_t factor_index(ProductFactor factor, size_t within, size_t plane) {
    return factor == ProductFactor::SAME ? within
                                         : (factor == ProductFactor::PER_PIXEL ? within % plane : within / plane);
}
__host__ __device__ inline size_t factors_per_image(ProductFactor factor, size_t per_image, size_t plane) {
    return factor == ProductFactor::SAME ? per_image : (factor == ProductFactor::PER_PIXEL ? plane : per_image / plane);
}

// Training: the `from` layer's gradient grad * in[k], one thread per element; with one factor per element
// ([sam]) also the input's, grad * from, input first (the two may be one buffer, as on the CPU).
__global__ void product_from_grad_kernel(const float* grad, const float* in, const float* from, float* in_grad,
                                         float* from_grad, int batch, size_t per_image, size_t plane,
                                         ProductFactor factor) {
    const size_t total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        if (factor == ProductFactor::SAME && in_grad) in_grad[id] += grad[id] * from[id];
        if (from_grad) {
            const size_t k = factor_index(factor, within, plane);
            from_grad[id] += grad[id] * in[b * factors_per_image(factor, per_image, plane) + k];
        }
    }
}

// The gradient of each factor (per channel or per pixel): the sum of grad * from over the elements it multiplies
// (a channel's plane, or a pixel's channels), in double, in the fixed order of launch_segment_sums
// (cuda/reduce.cuh: one segment per factor).
struct FactorTerms {
    const float *grad, *from;
    size_t plane, per_image;
    ProductFactor factor;
    __device__ void operator()(size_t k, size_t j, double* v) const {
        const size_t i =
            factor == ProductFactor::PER_PIXEL ? (k / plane) * per_image + j * plane + k % plane : k * plane + j;
        v[0] += (double)grad[i] * from[i];
    }
};

struct AddToFactor {
    float* in_grad;
    __device__ void operator()(size_t k, const double* v) const { in_grad[k] += (float)v[0]; }
};

class CudaScaleChannels : public CudaLayer {
public:
    using CudaLayer::CudaLayer;
    void forward(const CudaContext& ctx) override { launch_product(ctx, spec, factor(), p_.activation); }
    const char* untrainable() const override { return nullptr; }
    void backward(const CudaBackwardContext& ctx) override {
        launch_product_backward(ctx, spec, factor(), p_.activation);
    }

private:
    ProductFactor factor() const { return p_.scale_wh ? ProductFactor::PER_PIXEL : ProductFactor::PER_CHANNEL; }
    const ScaleChannelsParams p_ = spec.params<ScaleChannelsParams>();
};

}  // namespace

void launch_product(const CudaContext& ctx, const LayerSpec& spec, ProductFactor factor, int activation) {
    const bool fuse_activation = !is_channel_activation(activation);
    const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size();
    const DeviceView& from = ctx.view(spec.inputs[0]);
    dispatch_precision(ctx.precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(grid_for(per_image * ctx.batch, 256), 256, 0, ctx.stream, product_kernel<T>)(
            ctx.input.as<T>(), ctx.input.stride, from.as<T>(), from.stride, ctx.output.as<T>(), ctx.output.stride,
            ctx.batch, per_image, plane, factor, fuse_activation ? activation : LINEAR);
        PD_CUDA_CHECK_LAUNCH();
    });
    if (!fuse_activation)
        activate_view(ctx.precision, ctx.output, ctx.batch, spec.out.c, plane, activation, ctx.stream);
}

void launch_product_backward(const CudaBackwardContext& ctx, const LayerSpec& spec, ProductFactor factor,
                             int activation) {
    const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size(), total = per_image * ctx.batch;
    const int channels = spec.out.c;
    const float* from = ctx.output_of(spec.inputs[0]);
    float* from_grad = ctx.grad_of(spec.inputs[0]);
    DeviceArray<float> pre;
    if (activation_needs_input(activation)) {
        pre.resize(total);
        PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, product_kernel<float>)(
            ctx.input, factors_per_image(factor, per_image, plane), from, per_image, pre.data(), per_image, ctx.batch,
            per_image, plane, factor, (int)LINEAR);
        PD_CUDA_CHECK_LAUNCH();
    }
    layer_activation_gradient(ctx.output_grad, ctx.output, pre.data(), ctx.batch, channels, plane, activation,
                              ctx.stream);
    // The scratch is freed when this returns: wait for the kernels that read it.
    if (pre.data()) PD_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, product_from_grad_kernel)(
        ctx.output_grad, ctx.input, from, ctx.input_grad, from_grad, ctx.batch, per_image, plane, factor);
    PD_CUDA_CHECK_LAUNCH();
    if (factor == ProductFactor::SAME || !ctx.input_grad) return;
    const bool per_pixel = factor == ProductFactor::PER_PIXEL;
    launch_segment_sums<1>(
        (size_t)ctx.batch * (per_pixel ? plane : (size_t)channels), per_pixel ? (size_t)channels : plane,
        FactorTerms{ctx.output_grad, from, plane, per_image, factor}, AddToFactor{ctx.input_grad}, ctx.stream);
}

PD_REGISTER_CUDA_LAYER(LayerKind::ScaleChannels, CudaScaleChannels);

}  // namespace pd
