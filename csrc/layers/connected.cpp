// [connected]: output = W x + b on the flattened input (W is outputs x inputs, as stored in .weights), with an
// optional batch-norm on the rolling statistics (in training: on the batch statistics over the images), then the
// activation.
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
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
        if (p_.batch_normalize == 0) return;
        std::vector<double> factor(outputs);
        batchnorm_factors(b, params + spec.tensor("scales").offset, params + spec.tensor("rolling_mean").offset,
                          params + spec.tensor("rolling_variance").offset, eps, outputs, factor.data(), bias_.data());
        for (int o = 0; o < outputs; ++o)
            for (size_t i = 0; i < inputs; ++i)
                weights_[o * inputs + i] = (float)(weights_[o * inputs + i] * factor[o]);
    }

    void forward(const ForwardContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const int activation = p_.activation;
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

    void forward_train(const TrainContext& ctx) override {
        const int bn = p_.batch_normalize;
        PD_CHECK(bn != 2, "layer ", spec.index,
                 ": cross-iteration batch normalisation (cbn) is not supported in training");
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const int activation = p_.activation;
        const float* weights = ctx.params + spec.tensor("weights").offset;
        const float* biases = ctx.params + spec.tensor("biases").offset;
        const bool keep_input = activation_needs_input(activation);
        const bool fuse_activation = !bn && !keep_input && !is_channel_activation(activation);
        for (int b = 0; b < ctx.batch; ++b) {
            GemmEpilogue epilogue;
            epilogue.row_bias = bn ? nullptr : biases;
            epilogue.activation = fuse_activation ? activation : LINEAR;
            sgemm(outputs, 1, inputs, weights, inputs, ctx.input + (size_t)b * inputs, 1,
                  ctx.output + (size_t)b * outputs, 1, epilogue);
        }
        const size_t total = (size_t)ctx.batch * outputs;
        if (bn)
            batch_norm_.forward(ctx.output, ctx.batch, outputs, 1, ctx.params + spec.tensor("scales").offset, biases,
                                ctx.params + spec.tensor("rolling_mean").offset,
                                ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, spec.index);
        if (keep_input) pre_activation_.assign(ctx.output, ctx.output + total);
        if (!fuse_activation) activate_array(ctx.output, ctx.batch, outputs, 1, activation);
    }

    size_t backward_workspace_floats(int batch) const override { return (size_t)batch * spec.in.size(); }

    void backward(const BackwardContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        float* grad = ctx.output_grad;  // batch x outputs
        activation_backward(grad, ctx.output, pre_activation_.empty() ? nullptr : pre_activation_.data(), ctx.batch,
                            outputs, 1, p_.activation);
        float* grad_biases = ctx.grads + spec.tensor("biases").offset;
        if (p_.batch_normalize != 0) {
            batch_norm_.backward(grad, ctx.params + spec.tensor("scales").offset,
                                 ctx.grads + spec.tensor("scales").offset, grad_biases);
        } else {
            for (int o = 0; o < outputs; ++o) {
                double sum = 0.0;
                for (int b = 0; b < ctx.batch; ++b) sum += grad[(size_t)b * outputs + o];
                grad_biases[o] += (float)sum;
            }
        }
        const float* weights = ctx.params + spec.tensor("weights").offset;
        if (ctx.weight_grads) {
            // dW[o][i] += sum over images of g[b][o] * x[b][i]: a product with an inner dimension of `batch`, done
            // as rank-1 updates in place (no outputs x inputs scratch).
            float* grad_weights = ctx.grads + spec.tensor("weights").offset;
#pragma omp parallel for schedule(static) if ((long long)outputs * inputs * ctx.batch > 65536)
            for (int o = 0; o < outputs; ++o) {
                float* row = grad_weights + (size_t)o * inputs;
                for (int b = 0; b < ctx.batch; ++b) {
                    const float g = grad[(size_t)b * outputs + o];
                    const float* x = ctx.input + (size_t)b * inputs;
                    for (int i = 0; i < inputs; ++i) row[i] += g * x[i];
                }
            }
        }
        if (!ctx.input_grad) return;
        // dX (batch x inputs) = G (batch x outputs) * W (outputs x inputs).
        sgemm(ctx.batch, inputs, outputs, grad, outputs, weights, inputs, ctx.workspace, inputs);
        add_into(ctx.input_grad, ctx.workspace, (size_t)ctx.batch * inputs);
    }

private:
    const ConnectedParams p_ = spec.params<ConnectedParams>();
    std::vector<float> weights_, bias_;
    // Training state of the last forward_train.
    BatchNormTrainer batch_norm_;
    std::vector<float> pre_activation_;
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Connected, Connected);

}  // namespace pd
