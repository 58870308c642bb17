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

// Its backward (training, float32), one thread per output value: the maximum found again (the first of equal
// values, as the CPU's strict comparison picks) gets the gradient. Output channel g only draws from input
// channels g, g + out_c, ...: no two threads share a target.
__global__ void depth_max_backward_kernel(const float* in, const float* grad, float* in_grad, int batch, int in_c,
                                          int out_c, size_t plane) {
    const size_t per_image = plane * out_c, total = per_image * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / per_image, within = i % per_image;
        const int g = (int)(within / plane);
        const size_t pixel = within % plane;
        const float* image = in + b * plane * in_c;
        float best = -FLT_MAX;
        int from = -1;
        for (int k = g; k < in_c; k += out_c) {
            const float v = image[(size_t)k * plane + pixel];
            if (v > best) {
                best = v;
                from = k;
            }
        }
        if (from >= 0) in_grad[(b * in_c + from) * plane + pixel] += grad[i];
    }
}

// The position (y * in_w + x) of the maximum of output (oy, ox)'s window, the first of equal values in the
// forward's order (rows top to bottom, each left to right, a strictly greater value replacing the best), -1 for
// a window without input positions: where the CPU's forward_train records its argmax.
__device__ int window_argmax(const float* plane, int in_h, int in_w, int oy, int ox, const PoolWindow& w) {
    const PoolSpan ys = pool_span(oy, w.stride_y, w.offset, w.size, in_h);
    const PoolSpan xs = pool_span(ox, w.stride_x, w.offset, w.size, in_w);
    float best = -FLT_MAX;
    int from = -1;
    for (int y = ys.first; y < ys.last; ++y)
        for (int x = xs.first; x < xs.last; ++x)
            if (plane[y * in_w + x] > best) {
                best = plane[y * in_w + x];
                from = y * in_w + x;
            }
    return from;
}

// Backward, one thread per input value: it visits the windows that contain it in output order (so overlapping
// windows need no atomics) and adds the gradient of those whose maximum it is, or (average) its share of each
// window's gradient, 1 / the window's in-image positions, as the CPU's [local_avgpool] backward.
__global__ void pool_backward_kernel(const float* input, const float* grad, float* in_grad, int planes, int in_h,
                                     int in_w, int out_h, int out_w, PoolWindow w, bool average) {
    const size_t in_plane = (size_t)in_h * in_w, total = in_plane * planes;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t p = id / in_plane;
        const int at = (int)(id % in_plane), y = at / in_w, x = at % in_w;
        const float* plane = input + p * in_plane;
        const float* g = grad + p * (size_t)out_h * out_w;
        // Windows start at offset + o * stride (offset <= 0) and hold `size` positions.
        const int ly = y - w.offset - w.size + 1, lx = x - w.offset - w.size + 1;
        const int oy0 = ly <= 0 ? 0 : (ly + w.stride_y - 1) / w.stride_y;
        const int ox0 = lx <= 0 ? 0 : (lx + w.stride_x - 1) / w.stride_x;
        const int ly1 = (y - w.offset) / w.stride_y, lx1 = (x - w.offset) / w.stride_x;
        const int oy1 = ly1 < out_h - 1 ? ly1 : out_h - 1, ox1 = lx1 < out_w - 1 ? lx1 : out_w - 1;
        float v = in_grad[id];
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox)
                if (average) {
                    const PoolSpan ys = pool_span(oy, w.stride_y, w.offset, w.size, in_h);
                    const PoolSpan xs = pool_span(ox, w.stride_x, w.offset, w.size, in_w);
                    v += g[oy * out_w + ox] / ((ys.last - ys.first) * (xs.last - xs.first));
                } else if (window_argmax(plane, in_h, in_w, oy, ox, w) == at) {
                    v += g[oy * out_w + ox];
                }
        in_grad[id] = v;
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

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (!p_.depth) {
            launch_window_pool_backward(ctx, spec, p_.window, false);
            return;
        }
        if (!ctx.input_grad) return;
        const size_t plane = (size_t)spec.in.h * spec.in.w, total = (size_t)ctx.batch * spec.out.size();
        PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, depth_max_backward_kernel)(
            ctx.input, ctx.output_grad, ctx.input_grad, ctx.batch, spec.in.c, spec.out.c, plane);
        PD_CUDA_CHECK_LAUNCH();
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

void launch_window_pool_backward(const CudaBackwardContext& ctx, const LayerSpec& spec, const PoolWindow& window,
                                 bool average) {
    if (!ctx.input_grad) return;
    const int planes = ctx.batch * spec.in.c;
    const size_t total = (size_t)planes * spec.in.h * spec.in.w;
    PD_LAUNCH(grid_for(total, kThreads), kThreads, 0, ctx.stream, pool_backward_kernel)(
        ctx.input, ctx.output_grad, ctx.input_grad, planes, spec.in.h, spec.in.w, spec.out.h, spec.out.w, window,
        average);
    PD_CUDA_CHECK_LAUNCH();
}

PD_REGISTER_CUDA_LAYER(LayerKind::Maxpool, CudaMaxpool);

}  // namespace pd
