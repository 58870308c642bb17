// [batchnorm]: a standalone batch-norm on the rolling statistics (inference) or on the batch statistics
// (training, see cpu/train_ops.h).
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"

namespace pd {
namespace {

class Batchnorm : public Layer {
public:
    using Layer::Layer;

    void prepare(const float* params, float eps) override {
        const int c = spec.out.c;
        scale_.resize(c);
        shift_.resize(c);
        std::vector<double> factor(c);
        batchnorm_factors(params + spec.tensor("biases").offset, params + spec.tensor("scales").offset,
                          params + spec.tensor("rolling_mean").offset, params + spec.tensor("rolling_variance").offset,
                          eps, c, factor.data(), shift_.data());
        for (int i = 0; i < c; ++i) scale_[i] = (float)factor[i];
    }

    void forward(const ForwardContext& ctx) override {
        const size_t plane = (size_t)spec.out.h * spec.out.w;
        const int c = spec.out.c;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int ch = 0; ch < c; ++ch) {
                const size_t base = ((size_t)b * c + ch) * plane;
                for (size_t i = 0; i < plane; ++i) ctx.output[base + i] = ctx.input[base + i] * scale_[ch] + shift_[ch];
            }
    }

    void forward_train(const TrainContext& ctx) override {
        const size_t total = (size_t)ctx.batch * spec.out.size();
        std::memcpy(ctx.output, ctx.input, sizeof(float) * total);
        trainer_.forward(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w,
                         ctx.params + spec.tensor("scales").offset, ctx.params + spec.tensor("biases").offset,
                         ctx.params + spec.tensor("rolling_mean").offset,
                         ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, spec.index);
    }

    void backward(const BackwardContext& ctx) override {
        trainer_.backward(ctx.output_grad, ctx.params + spec.tensor("scales").offset,
                          ctx.grads + spec.tensor("scales").offset, ctx.grads + spec.tensor("biases").offset);
        if (ctx.input_grad) add_into(ctx.input_grad, ctx.output_grad, (size_t)ctx.batch * spec.out.size());
    }

private:
    std::vector<float> scale_, shift_;
    BatchNormTrainer trainer_;
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Batchnorm, Batchnorm);

}  // namespace pd
