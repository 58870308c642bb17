// [avgpool] on the GPU: the global average of each channel, one thread per channel summing its plane in order, as
// the CPU does.
#include "cuda_layer.cuh"

namespace pd {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void global_average_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int channels,
                                      size_t plane) {
    const size_t total = (size_t)batch * channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / channels, c = i % channels;
        const T* src = in + b * in_stride + c * plane;
        float sum = 0.f;
        for (size_t k = 0; k < plane; ++k) sum += to_float(src[k]);
        out[b * out_stride + c] = from_float<T>(sum / (float)plane);
    }
}

// Backward, one thread per input value: its channel's gradient divided by the plane size.
__global__ void avgpool_backward_kernel(const float* grad, float* in_grad, size_t planes, size_t plane) {
    const size_t total = planes * plane;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x)
        in_grad[id] += grad[id / plane] / plane;
}

class CudaAvgpool : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const size_t plane = (size_t)spec.in.h * spec.in.w, total = (size_t)ctx.batch * spec.in.c;
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, global_average_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.in.c,
                plane);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const size_t planes = (size_t)ctx.batch * spec.in.c, plane = (size_t)spec.in.h * spec.in.w;
        PD_LAUNCH(grid_for(planes * plane, 256), 256, 0, ctx.stream, avgpool_backward_kernel)(
            ctx.output_grad, ctx.input_grad, planes, plane);
        PD_CUDA_CHECK_LAUNCH();
    }
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Avgpool, CudaAvgpool);

}  // namespace pd
