// [maxpool] on the GPU: one thread per output value; the window geometry is the CPU's (csrc/math/pooling.h).
// The window pool also runs [local_avgpool] (local_avgpool_kernels.cu) with average = true.
#include "cuda_layer.cuh"
#include "math/pooling.h"

namespace pd {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void pool_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int channels, int in_h,
                            int in_w, int out_h, int out_w, PoolWindow window, bool average) {
    const size_t out_plane = (size_t)out_h * out_w, per_image = out_plane * channels;
    const size_t total = per_image * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / per_image, within = i % per_image;
        const size_t c = within / out_plane, pixel = within % out_plane;
        const int oy = (int)(pixel / out_w), ox = (int)(pixel % out_w);
        const T* plane = in + b * in_stride + c * in_h * in_w;
        const float v = pool_window([&](int y, int x) { return to_float(plane[(size_t)y * in_w + x]); }, in_h, in_w, oy,
                                    ox, window, average);
        out[b * out_stride + within] = from_float<T>(v);
    }
}

// maxpool_depth=1: output channel g is the maximum over input channels g, g + out_channels, ...
template <typename T>
__global__ void depth_max_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int in_c,
                                 int out_c, size_t plane) {
    const size_t per_image = plane * out_c, total = per_image * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / per_image, within = i % per_image;
        const int g = (int)(within / plane);
        const size_t pixel = within % plane;
        float best = -FLT_MAX;
        for (int k = g; k < in_c; k += out_c) {
            const float v = to_float(in[b * in_stride + (size_t)k * plane + pixel]);
            best = best < v ? v : best;
        }
        out[b * out_stride + within] = from_float<T>(best);
    }
}

class CudaMaxpool : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        if (!p_.depth) {
            launch_window_pool(ctx, spec, p_.window, false);
            return;
        }
        const size_t plane = (size_t)spec.in.h * spec.in.w, total = (size_t)ctx.batch * spec.out.size();
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, depth_max_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.in.c,
                spec.out.c, plane);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

private:
    const MaxpoolParams p_ = spec.params<MaxpoolParams>();
};

}  // namespace

void launch_window_pool(const CudaContext& ctx, const LayerSpec& spec, const PoolWindow& window, bool average) {
    const size_t total = (size_t)ctx.batch * spec.out.size();
    dispatch_precision(ctx.precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, pool_kernel<T>)(
            ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
            spec.in.h, spec.in.w, spec.out.h, spec.out.w, window, average);
        PD_CUDA_CHECK_LAUNCH();
    });
}

PD_REGISTER_CUDA_LAYER(LayerKind::Maxpool, CudaMaxpool);

}  // namespace pd
