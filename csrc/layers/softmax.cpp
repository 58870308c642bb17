// [softmax]: softmax with temperature over each of `groups` equal slices of a layer's inputs. Backward is the
// softmax Jacobian, dx_i = y_i (g_i - sum_j g_j y_j) / temperature. (Darknet's softmax backward passes the delta
// through unchanged because its cost layers compute the delta of the logits; here the gradient handed in is
// with respect to the probabilities.)
#include "../core/network.h"
#include "../math/softmax.h"

namespace pd {
namespace {

class Softmax : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int groups = p_.groups;
        const float temperature = (float)p_.temperature;
        const size_t inputs = spec.in.size(), n = inputs / groups;
        for (int b = 0; b < ctx.batch; ++b)
            for (int g = 0; g < groups; ++g) {
                const float* in = ctx.input + b * inputs + g * n;
                float* out = ctx.output + b * inputs + g * n;
                softmax_slice([&](size_t i) { return in[i]; }, [&](size_t i, float v) { out[i] = v; }, n, temperature);
            }
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const int groups = p_.groups;
        const double temperature = p_.temperature;
        const size_t inputs = spec.in.size(), n = inputs / groups;
        for (int b = 0; b < ctx.batch; ++b)
            for (int g = 0; g < groups; ++g) {
                const size_t base = b * inputs + g * n;
                softmax_slice_gradient(ctx.output + base, ctx.output_grad + base, ctx.input_grad + base, n,
                                       temperature);
            }
    }

private:
    const SoftmaxParams p_ = spec.params<SoftmaxParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Softmax, Softmax);

}  // namespace pd
