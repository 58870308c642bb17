// [reorg3d] on the GPU: the same permutations as csrc/layers/reorg3d.cpp (forward: a gather per output value;
// reverse=1, Darknet's reorg run with the output dimensions: a scatter per input value).
#include "cuda_layer.cuh"

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
        const int c2 = k % big_c, offset = k / big_c;
        const size_t from = ((size_t)c2 * big_h + (j * s + offset / s)) * big_w + (i * s + offset % s);
        out[b * out_stride + within] = in[b * in_stride + from];
    }
}

// w, h, c: the output's dimensions; groups = c / s^2.
template <typename T>
__global__ void reorg_reverse_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int c,
                                     int h, int w, int s) {
    const int groups = c / (s * s);
    const size_t per_image = (size_t)c * h * w, total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const int i = (int)(within % w), j = (int)((within / w) % h), k = (int)(within / ((size_t)w * h));
        const int c2 = k % groups, offset = k / groups;
        const size_t to = (size_t)(i * s + offset % s) +
                          (size_t)w * s * ((size_t)(j * s + offset / s) + (size_t)h * s * c2);
        out[b * out_stride + to] = in[b * in_stride + within];
    }
}

class CudaReorg3d : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int s = (int)spec.get("stride");
        const bool reverse = spec.get("reverse") != 0;
        const size_t total = (size_t)ctx.batch * spec.out.size();
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            if (reverse)
                PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, reorg_reverse_kernel<T>)(
                    ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch,
                    spec.out.c, spec.out.h, spec.out.w, s);
            else
                PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, reorg_kernel<T>)(
                    ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch,
                    spec.out.c, spec.out.h, spec.out.w, spec.in.c, spec.in.h, spec.in.w, s);
            PD_CUDA_CHECK_LAUNCH();
        });
    }
};

}  // namespace

PD_REGISTER_CUDA_LAYER("reorg3d", CudaReorg3d, reorg3d);

}  // namespace pd
