// [yolo] forward on the GPU: one thread per value, the transform of csrc/math/yolo.h.
#include "cuda_layer.cuh"
#include "math/yolo.h"

namespace pd {
namespace {

template <typename T>
__global__ void yolo_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, size_t per_image,
                            size_t plane, int entries, float scale_x_y, bool new_coords) {
    const size_t total = per_image * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / per_image, within = id % per_image;
        const int entry = (int)((within / plane) % entries);
        out[b * out_stride + within] =
            from_float<T>(yolo_output(to_float(in[b * in_stride + within]), entry, scale_x_y, new_coords));
    }
}

class CudaYolo : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int entries = 5 + p_.classes;
        const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size();
        const float scale_x_y = p_.scale_x_y;
        const bool new_coords = p_.new_coords;
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(per_image * ctx.batch, 256), 256, 0, ctx.stream, yolo_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, per_image, plane,
                entries, scale_x_y, new_coords);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    // The identity, as on the CPU: the gradient given for a [yolo] layer is the loss's delta of its input.
    void backward(const CudaBackwardContext& ctx) override {
        if (ctx.input_grad)
            add_strided(ctx.input_grad, 0, ctx.output_grad, 0, 1, (size_t)ctx.batch * spec.out.size(), ctx.stream);
    }

private:
    const YoloParams p_ = spec.params<YoloParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Yolo, CudaYolo);

}  // namespace pd
