// [dropout], [cost] and [empty] on the GPU: the identity at inference. The plan makes them views of their input;
// this copy runs only for such a layer at the very start of a network, or with the views switched off.
#include "cuda_layer.cuh"
#include "math/random.h"

namespace pd {
namespace {

// Darknet's forward_dropout_layer with the CPU's counter-based draw (math/random.h): element i of the batch is
// dropped when counter_uniform(seed, iteration, layer, i) < p, else scaled by 1 / (1 - p). Backward (input null)
// recomputes the mask and adds the kept gradients, scaled.
__global__ void dropout_kernel(const float* from, float* to, size_t total, float p, float scale,
                               unsigned long long seed, long long iteration, int layer, bool add) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const bool dropped = counter_uniform(seed, (uint64_t)iteration, (uint64_t)layer, (uint64_t)i) < p;
        if (add) {
            if (!dropped) to[i] += from[i] * scale;
        } else {
            to[i] = dropped ? 0.f : from[i] * scale;
        }
    }
}

class CudaIdentity : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        copy_view(ctx.precision, ctx.input, ctx.output, ctx.batch, spec.out.size(), ctx.stream);
    }

    const char* untrainable() const override { return nullptr; }

    void backward(const CudaBackwardContext& ctx) override {
        if (ctx.input_grad)
            add_strided(ctx.input_grad, 0, ctx.output_grad, 0, 1, (size_t)ctx.batch * spec.out.size(), ctx.stream);
    }
};

class CudaDropout : public CudaIdentity {
public:
    using CudaIdentity::CudaIdentity;

    const char* untrainable() const override {
        if (p_.dropblock) return "dropblock is not supported in training";
        if (!(p_.probability >= 0 && p_.probability < 1))
            return "the dropout probability must be in [0, 1) for training";
        return nullptr;
    }

    void forward_train(const CudaTrainContext& ctx) override {
        run(ctx.input.as<float>(), ctx.output.as<float>(), ctx.batch, ctx.seed, ctx.iteration, false, ctx.stream);
    }

    void backward(const CudaBackwardContext& ctx) override {
        if (ctx.input_grad) run(ctx.output_grad, ctx.input_grad, ctx.batch, ctx.seed, ctx.iteration, true, ctx.stream);
    }

private:
    void run(const float* from, float* to, int batch, unsigned long long seed, long long iteration, bool add,
             cudaStream_t stream) const {
        const float p = (float)p_.probability, scale = 1.f / (1.f - p);
        const size_t total = (size_t)batch * spec.out.size();
        PD_LAUNCH(grid_for(total, 256), 256, 0, stream, dropout_kernel)(from, to, total, p, scale, seed, iteration,
                                                                        spec.index, add);
        PD_CUDA_CHECK_LAUNCH();
    }

    const DropoutParams p_ = spec.params<DropoutParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Dropout, CudaDropout);
PD_REGISTER_CUDA_LAYER(LayerKind::Cost, CudaIdentity);
PD_REGISTER_CUDA_LAYER(LayerKind::Empty, CudaIdentity);

}  // namespace pd
