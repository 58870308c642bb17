// [scale_channels] on the GPU: the `from` layer times one factor per channel, or per pixel with scale_wh=1, then
// the activation. The same product kernel runs [sam] (sam_kernels.cu) with one factor per element.
#include "cuda_layer.cuh"
#include "math/activations.h"

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

class CudaScaleChannels : public CudaLayer {
public:
    using CudaLayer::CudaLayer;
    void forward(const CudaContext& ctx) override {
        launch_product(ctx, spec, p_.scale_wh ? ProductFactor::PER_PIXEL : ProductFactor::PER_CHANNEL, p_.activation);
    }

private:
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

PD_REGISTER_CUDA_LAYER(LayerKind::ScaleChannels, CudaScaleChannels);

}  // namespace pd
