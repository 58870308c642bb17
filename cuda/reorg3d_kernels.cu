// [reorg3d] on the GPU: the permutations of csrc/math/reorg.h that the CPU layer also uses (forward: a gather
// per output value; reverse=1, Darknet's reorg run with the output dimensions: a scatter per input value).
#include "cuda_layer.cuh"
#include "math/reorg.h"

namespace pd {
namespace {

template <typename T>
__global__ void reorg_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int small_c,
                             int small_h, int small_w, int big_c, int big_h, int big_w, int s) {
    const size_t per_image = (size_t)small_c * small_h * small_w, total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const int i = (int)(within % small_w), j = (int)((within / small_w) % small_h);
        const int k = (int)(within / ((size_t)small_w * small_h));
        out[b * out_stride + within] = in[b * in_stride + reorg_source(k, j, i, big_c, big_h, big_w, s)];
    }
}

// c, h, w: the output's dimensions.
template <typename T>
__global__ void reorg_reverse_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int c, int h,
                                     int w, int s) {
    const size_t per_image = (size_t)c * h * w, total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const int i = (int)(within % w), j = (int)((within / w) % h), k = (int)(within / ((size_t)w * h));
        out[b * out_stride + reorg_reverse_target(k, j, i, c, h, w, s)] = in[b * in_stride + within];
    }
}

// Backward, one thread per output gradient value: both directions are permutations, so each value goes back to
// the one input it came from (no two threads share a target).
__global__ void reorg3d_backward_kernel(const float* grad, float* in_grad, int batch, int c, int h, int w, int big_c,
                                        int big_h, int big_w, int stride, bool reverse) {
    const size_t per_image = (size_t)c * h * w, total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const int k = (int)(within / ((size_t)h * w)), j = (int)(within / w % h), i = (int)(within % w);
        if (reverse)
            in_grad[id] += grad[b * per_image + reorg_reverse_target(k, j, i, c, h, w, stride)];
        else
            in_grad[b * per_image + reorg_source(k, j, i, big_c, big_h, big_w, stride)] += grad[id];
    }
}

class CudaReorg3d : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int s = p_.stride;
        const size_t total = (size_t)ctx.batch * spec.out.size();
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            if (p_.reverse)
                PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, reorg_reverse_kernel<T>)(
                    ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
                    spec.out.h, spec.out.w, s);
            else
                PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, reorg_kernel<T>)(
                    ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, spec.out.c,
                    spec.out.h, spec.out.w, spec.in.c, spec.in.h, spec.in.w, s);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const Shape out = spec.out, in = spec.in;
        PD_LAUNCH(grid_for((size_t)ctx.batch * out.size(), 256), 256, 0, ctx.stream, reorg3d_backward_kernel)(
            ctx.output_grad, ctx.input_grad, ctx.batch, out.c, out.h, out.w, in.c, in.h, in.w, (int)p_.stride,
            (bool)p_.reverse);
        PD_CUDA_CHECK_LAUNCH();
    }

private:
    const Reorg3dParams p_ = spec.params<Reorg3dParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Reorg3d, CudaReorg3d);

}  // namespace pd
