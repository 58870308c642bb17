// [upsample] on the GPU: nearest-neighbour enlargement times `scale`, or (negative stride in the cfg) the sum of
// each stride x stride block times `scale`, added in the order the CPU adds them. When the upsampled map is
// concatenated by a route, the plan has this kernel write straight into the route's output. The index maps are
// csrc/math/upsample.h's.
#include "cuda_layer.cuh"
#include "math/upsample.h"

namespace pd {
namespace {

template <typename T>
__global__ void upsample_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int channels,
                                int in_h, int in_w, int out_h, int out_w, int stride, float scale, bool reverse) {
    const size_t out_plane = (size_t)out_h * out_w, per_image = out_plane * channels, total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const size_t c = within / out_plane, pixel = within % out_plane;
        const int y = (int)(pixel / out_w), x = (int)(pixel % out_w);
        const T* plane = in + b * in_stride + c * in_h * in_w;
        float v;
        if (reverse) {
            v = 0.f;
            for (int dy = 0; dy < stride; ++dy)
                for (int dx = 0; dx < stride; ++dx)
                    v += scale * to_float(plane[upsample_fine_index(y, x, dy, dx, stride, in_w)]);
        } else {
            v = scale * to_float(plane[upsample_coarse_index(y, x, stride, in_w)]);
        }
        out[b * out_stride + within] = from_float<T>(v);
    }
}

// The adjoint, one thread per input value: it adds scale times the gradient of every output it was copied to, in
// the CPU's order (the fine positions row by row), or (reverse) scale times the gradient of the block it went into.
__global__ void upsample_backward_kernel(const float* grad, float* in_grad, int batch, int channels, int in_h, int in_w,
                                         int out_h, int out_w, int stride, float scale, bool reverse) {
    const size_t in_plane = (size_t)in_h * in_w, total = in_plane * channels * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t plane = id / in_plane, pixel = id % in_plane;
        const int y = (int)(pixel / in_w), x = (int)(pixel % in_w);
        const float* g = grad + plane * out_h * out_w;
        float v = in_grad[id];
        if (reverse) {
            if (y < out_h * stride && x < out_w * stride) v += scale * g[upsample_coarse_index(y, x, stride, out_w)];
        } else {
            for (int dy = 0; dy < stride; ++dy)
                for (int dx = 0; dx < stride; ++dx) v += scale * g[upsample_fine_index(y, x, dy, dx, stride, out_w)];
        }
        in_grad[id] = v;
    }
}

class CudaUpsample : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int stride = p_.stride;
        const float scale = p_.scale;
        const bool reverse = p_.reverse;
        const size_t total = (size_t)ctx.batch * spec.out.size();
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, upsample_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
                spec.in.h, spec.in.w, spec.out.h, spec.out.w, stride, scale, reverse);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const size_t total = (size_t)ctx.batch * spec.in.size();
        PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, upsample_backward_kernel)(
            ctx.output_grad, ctx.input_grad, ctx.batch, spec.in.c, spec.in.h, spec.in.w, spec.out.h, spec.out.w,
            (int)p_.stride, (float)p_.scale, (bool)p_.reverse);
        PD_CUDA_CHECK_LAUNCH();
    }

private:
    const UpsampleParams p_ = spec.params<UpsampleParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Upsample, CudaUpsample);

}  // namespace pd
