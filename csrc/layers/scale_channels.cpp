// [scale_channels]: multiplies the `from` layer by the input, one factor per channel (squeeze-and-excitation) or,
// with scale_wh=1, one factor per pixel shared by all channels; then the activation.
#include "../core/network.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
#include "../math/activations.h"

namespace pd {
namespace {

class ScaleChannels : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const float* from = ctx.net->live_output(spec.inputs[0]);
        const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size();
        const bool scale_wh = p_.scale_wh;
        const long long total = (long long)ctx.batch * per_image;
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i) {
            const size_t b = i / per_image, within = i % per_image;
            const size_t k = scale_wh ? b * plane + within % plane : b * spec.out.c + within / plane;
            ctx.output[i] = from[i] * ctx.input[k];
        }
        activate_array(ctx.output, ctx.batch, spec.out.c, plane, p_.activation);
    }

    size_t backward_workspace_floats(int batch) const override {
        return activation_needs_input(p_.activation) ? (size_t)batch * spec.out.size() : 0;
    }

    // Output element i = from[i] * input[k(i)]: the `from` layer gets grad * input[k]; each scale input[k] gets
    // the sum over the elements it multiplies, gathered per k so that threads never share a target.
    void backward(const BackwardContext& ctx) override {
        const float* from = ctx.net->train_output(spec.inputs[0]);
        float* from_grad = ctx.net->grad_buffer(spec.inputs[0]);
        const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size();
        const int channels = spec.out.c;
        const bool scale_wh = p_.scale_wh;
        const int activation = p_.activation;
        const long long total = (long long)ctx.batch * per_image;
        auto scale_index = [&](long long i) {
            const size_t b = i / per_image, within = i % per_image;
            return scale_wh ? b * plane + within % plane : b * channels + within / plane;
        };
        const float* pre = nullptr;
        if (activation_needs_input(activation)) {
            for (long long i = 0; i < total; ++i) ctx.workspace[i] = from[i] * ctx.input[scale_index(i)];
            pre = ctx.workspace;
        }
        float* grad = ctx.output_grad;
        activation_backward(grad, ctx.output, pre, ctx.batch, channels, plane, activation);
        if (from_grad) {
#pragma omp parallel for schedule(static) if (total > 65536)
            for (long long i = 0; i < total; ++i) from_grad[i] += grad[i] * ctx.input[scale_index(i)];
        }
        if (!ctx.input_grad) return;
        const long long scales = (long long)ctx.batch * (scale_wh ? plane : (size_t)channels);
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long k = 0; k < scales; ++k) {
            double sum = 0.0;
            if (scale_wh) {
                const size_t b = k / plane, p = k % plane;
                for (int c = 0; c < channels; ++c) {
                    const size_t i = b * per_image + (size_t)c * plane + p;
                    sum += (double)grad[i] * from[i];
                }
            } else {
                const size_t base = (size_t)k * plane;  // image b = k / C, channel c = k % C: (b * C + c) * plane
                for (size_t p = 0; p < plane; ++p) sum += (double)grad[base + p] * from[base + p];
            }
            ctx.input_grad[k] += (float)sum;
        }
    }

private:
    const ScaleChannelsParams p_ = spec.params<ScaleChannelsParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::ScaleChannels, ScaleChannels);

}  // namespace pd
