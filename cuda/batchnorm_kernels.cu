// [batchnorm] on the GPU: x * scale + shift per channel, with the factors the CPU layer uses (batchnorm_factors).
#include <vector>

#include "cpu/ops.h"
#include "cuda_layer.cuh"

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

private:
    DeviceArray<float> scale_, shift_;
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Batchnorm, CudaBatchnorm);

}  // namespace pd
