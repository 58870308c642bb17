// [softmax] on the GPU: one thread per (image, group) computes exp(x / t - max / t) / sum over its slice with the
// CPU's formula (csrc/math/softmax.h), and its backward. Only classifiers have this layer.
#include "cuda_layer.cuh"
#include "math/softmax.h"

namespace pd {
namespace {

template <typename T>
__global__ void softmax_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int groups,
                               size_t n, float temperature) {
    const size_t total = (size_t)batch * groups;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / groups, g = id % groups;
        const T* x = in + b * in_stride + g * n;
        T* y = out + b * out_stride + g * n;
        softmax_slice([&](size_t i) { return to_float(x[i]); }, [&](size_t i, float v) { y[i] = from_float<T>(v); }, n,
                      temperature);
    }
}

// Training: the softmax Jacobian, one thread per (image, group) as the CPU's (csrc/math/softmax.h).
__global__ void softmax_backward_kernel(const float* y, const float* grad, float* in_grad, int batch, int groups,
                                        size_t n, double temperature) {
    const size_t total = (size_t)batch * groups;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x)
        softmax_slice_gradient(y + id * n, grad + id * n, in_grad + id * n, n, temperature);
}

class CudaSoftmax : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int groups = p_.groups;
        const float temperature = (float)p_.temperature;
        const size_t n = spec.in.size() / groups;
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for((size_t)ctx.batch * groups, 64), 64, 0, ctx.stream, softmax_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, groups, n,
                temperature);
            PD_CUDA_CHECK_LAUNCH();
        });
    }

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const int groups = p_.groups;
        PD_LAUNCH(grid_for((size_t)ctx.batch * groups, 64), 64, 0, ctx.stream, softmax_backward_kernel)(
            ctx.output, ctx.output_grad, ctx.input_grad, ctx.batch, groups, spec.in.size() / groups, p_.temperature);
        PD_CUDA_CHECK_LAUNCH();
    }

private:
    const SoftmaxParams p_ = spec.params<SoftmaxParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Softmax, CudaSoftmax);

}  // namespace pd
