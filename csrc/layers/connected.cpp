// [connected]: output = W x + b on the flattened input (W is outputs x inputs, as stored in .weights), with an
// optional batch-norm on the rolling statistics, then the activation.
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
#include "../math/activations.h"

namespace pd {
namespace {

class Connected : public Layer {
public:
    using Layer::Layer;

    void prepare(const float* params, float eps) override {
        const int outputs = spec.out.c;
        const size_t inputs = spec.in.size();
        const float* w = params + spec.tensor("weights").offset;
        const float* b = params + spec.tensor("biases").offset;
        weights_.assign(w, w + (size_t)outputs * inputs);
        bias_.assign(b, b + outputs);
        if (spec.get("batch_normalize") == 0) return;
        std::vector<double> factor(outputs);
        batchnorm_factors(b, params + spec.tensor("scales").offset, params + spec.tensor("rolling_mean").offset,
                          params + spec.tensor("rolling_variance").offset, eps, outputs, factor.data(), bias_.data());
        for (int o = 0; o < outputs; ++o)
            for (size_t i = 0; i < inputs; ++i) weights_[o * inputs + i] = (float)(weights_[o * inputs + i] * factor[o]);
    }

    void forward(const ForwardContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const int activation = (int)spec.get("activation");
        // out^T (outputs x batch) = W (outputs x inputs) * in^T; computed per image to keep the layouts simple.
        for (int b = 0; b < ctx.batch; ++b) {
            GemmEpilogue epilogue;
            epilogue.row_bias = bias_.data();
            epilogue.activation = is_channel_activation(activation) ? LINEAR : activation;
            sgemm(outputs, 1, inputs, weights_.data(), inputs, ctx.input + (size_t)b * inputs, 1,
                  ctx.output + (size_t)b * outputs, 1, epilogue);
        }
        if (is_channel_activation(activation)) activate_array(ctx.output, ctx.batch, outputs, 1, activation);
    }

private:
    std::vector<float> weights_, bias_;
};

}  // namespace

PD_REGISTER_LAYER("connected", Connected);

}  // namespace pd
