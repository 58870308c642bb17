// [sam]: spatial attention, the element-wise product of the input and the `from` layer, then the activation.
#include "../core/network.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
#include "../math/activations.h"

namespace pd {
namespace {

class Sam : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const float* from = ctx.net->live_output(spec.inputs[0]);
        const long long total = (long long)ctx.batch * spec.out.size();
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i) ctx.output[i] = ctx.input[i] * from[i];
        activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w, p_.activation);
    }

    // The pre-activation product, when the activation's gradient needs it, is rebuilt in the workspace.
    size_t backward_workspace_floats(int batch) const override {
        return activation_needs_input(p_.activation) ? (size_t)batch * spec.out.size() : 0;
    }

    void backward(const BackwardContext& ctx) override {
        const float* from = ctx.net->train_output(spec.inputs[0]);
        float* from_grad = ctx.net->grad_buffer(spec.inputs[0]);
        const int activation = p_.activation;
        const long long total = (long long)ctx.batch * spec.out.size();
        const float* pre = nullptr;
        if (activation_needs_input(activation)) {
            for (long long i = 0; i < total; ++i) ctx.workspace[i] = ctx.input[i] * from[i];
            pre = ctx.workspace;
        }
        float* grad = ctx.output_grad;
        activation_backward(grad, ctx.output, pre, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w, activation);
        // When `from` is the previous layer both targets are one buffer; each element still has one writer.
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i) {
            if (ctx.input_grad) ctx.input_grad[i] += grad[i] * from[i];
            if (from_grad) from_grad[i] += grad[i] * ctx.input[i];
        }
    }

private:
    const SamParams p_ = spec.params<SamParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Sam, Sam);

}  // namespace pd
