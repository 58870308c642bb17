// [connected] on the GPU: one thread per (image, output) computes its dot product in order, with the weights
// batch-norm-folded as the CPU layer folds them; then bias and activation. Simple rather than fast: none of the
// detection networks has this layer.
#include <vector>

#include "cpu/ops.h"
#include "cuda_layer.cuh"
#include "math/activations.h"

namespace pd {
namespace {

template <typename T>
__global__ void connected_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int inputs,
                                 int outputs, const float* weights, const float* bias, int activation) {
    const size_t total = (size_t)batch * outputs;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / outputs, o = id % outputs;
        const T* x = in + b * in_stride;
        const float* w = weights + o * inputs;
        float sum = 0.f;
        for (int i = 0; i < inputs; ++i) sum = fmaf(w[i], to_float(x[i]), sum);
        out[b * out_stride + o] = from_float<T>(activate(sum + bias[o], activation));
    }
}

class CudaConnected : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void prepare(const PrepareContext& ctx) override {
        const int outputs = spec.out.c;
        const size_t inputs = spec.in.size();
        const float* w = ctx.params + spec.tensor("weights").offset;
        const float* b = ctx.params + spec.tensor("biases").offset;
        std::vector<float> weights(w, w + (size_t)outputs * inputs), bias(b, b + outputs);
        if (p_.batch_normalize != 0) {
            std::vector<double> factor(outputs);
            batchnorm_factors(b, ctx.params + spec.tensor("scales").offset,
                              ctx.params + spec.tensor("rolling_mean").offset,
                              ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, outputs,
                              factor.data(), bias.data());
            for (int o = 0; o < outputs; ++o)
                for (size_t i = 0; i < inputs; ++i)
                    weights[o * inputs + i] = (float)(weights[o * inputs + i] * factor[o]);
        }
        weights_.upload(weights.data(), weights.size(), ctx.stream);
        bias_.upload(bias.data(), bias.size(), ctx.stream);
    }

    void forward(const CudaContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const int activation = p_.activation;
        const bool fuse_activation = !is_channel_activation(activation);
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for((size_t)ctx.batch * outputs, 128), 128, 0, ctx.stream, connected_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, inputs, outputs,
                weights_.data(), bias_.data(), fuse_activation ? activation : LINEAR);
            PD_CUDA_CHECK_LAUNCH();
        });
        if (!fuse_activation) activate_view(ctx.precision, ctx.output, ctx.batch, outputs, 1, activation, ctx.stream);
    }

private:
    const ConnectedParams p_ = spec.params<ConnectedParams>();
    DeviceArray<float> weights_, bias_;
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Connected, CudaConnected);

}  // namespace pd
