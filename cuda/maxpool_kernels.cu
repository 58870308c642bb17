// [maxpool], [local_avgpool] and [avgpool] on the GPU: one thread per output value; the window rule is the CPU's
// (csrc/math/pooling.h).
#include "cuda_layer.cuh"
#include "math/pooling.h"

namespace pd {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void pool_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int channels,
                            int in_h, int in_w, int out_h, int out_w, int size, int stride_y, int stride_x, int offset,
                            bool average) {
    const size_t out_plane = (size_t)out_h * out_w, per_image = out_plane * channels;
    const size_t total = per_image * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / per_image, within = i % per_image;
        const size_t c = within / out_plane, pixel = within % out_plane;
        const int oy = (int)(pixel / out_w), ox = (int)(pixel % out_w);
        const T* plane = in + b * in_stride + c * in_h * in_w;
        const float v = pool_window([&](int y, int x) { return to_float(plane[(size_t)y * in_w + x]); }, in_h, in_w,
                                    oy, ox, size, stride_y, stride_x, offset, average);
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

// [avgpool]: one thread per channel sums its plane in order, as the CPU does.
template <typename T>
__global__ void global_average_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch,
                                      int channels, size_t plane) {
    const size_t total = (size_t)batch * channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / channels, c = i % channels;
        const T* src = in + b * in_stride + c * plane;
        float sum = 0.f;
        for (size_t k = 0; k < plane; ++k) sum += to_float(src[k]);
        out[b * out_stride + c] = from_float<T>(sum / (float)plane);
    }
}

void launch_pool(const CudaContext& ctx, const LayerSpec& spec, bool average) {
    const int size = (int)spec.get("size"), stride_y = (int)spec.get("stride_y"), stride_x = (int)spec.get("stride_x");
    const int offset = -(int)spec.get("padding") / 2;
    const size_t total = (size_t)ctx.batch * spec.out.size();
    dispatch_precision(ctx.precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, pool_kernel<T>)(
            ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
            spec.in.h, spec.in.w, spec.out.h, spec.out.w, size, stride_y, stride_x, offset, average);
        PD_CUDA_CHECK_LAUNCH();
    });
}

class CudaMaxpool : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        if (spec.get("maxpool_depth") == 0) {
            launch_pool(ctx, spec, false);
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
};

class CudaLocalAvgpool : public CudaLayer {
public:
    using CudaLayer::CudaLayer;
    void forward(const CudaContext& ctx) override { launch_pool(ctx, spec, true); }
};

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
};

}  // namespace

PD_REGISTER_CUDA_LAYER("maxpool", CudaMaxpool, maxpool);
PD_REGISTER_CUDA_LAYER("local_avgpool", CudaLocalAvgpool, local_avgpool);
PD_REGISTER_CUDA_LAYER("avgpool", CudaAvgpool, avgpool);

}  // namespace pd
