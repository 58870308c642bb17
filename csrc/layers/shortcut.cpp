// [shortcut]: adds the outputs of the `from` layers to the input (only the overlapping prefix of a smaller one,
// as Darknet does), optionally weighted per layer or per channel with relu/softmax-normalised weights, then
// applies the activation. Backward gives each source its weight times the gradient and the weights the exact
// derivative through their normalisation (Darknet's backward leaves the normalisation out of the weight update).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
#include "../math/activations.h"
#include "../math/shortcut.h"

namespace pd {
namespace {

class Shortcut : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        weighted_sum(ctx, ctx.net->params.data());
        activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w, p_.activation);
    }

    void forward_train(const TrainContext& ctx) override {
        weighted_sum(ctx, ctx.params);
        const int activation = p_.activation;
        if (activation_needs_input(activation))
            pre_activation_.assign(ctx.output, ctx.output + (size_t)ctx.batch * spec.out.size());
        activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w, activation);
    }

    void backward(const BackwardContext& ctx) override {
        const size_t outputs = spec.out.size();
        const int n = (int)spec.inputs.size();
        float* grad = ctx.output_grad;
        activation_backward(grad, ctx.output, pre_activation_.empty() ? nullptr : pre_activation_.data(), ctx.batch,
                            spec.out.c, (size_t)spec.out.h * spec.out.w, p_.activation);
        const Weights w = weights(ctx.params);
        const long long total = (long long)ctx.batch * outputs;
        std::vector<float> norm(n + 1);
        if (ctx.input_grad) {
            if (!w.values) {
                add_into(ctx.input_grad, grad, (size_t)total);
            } else {
                for (long long id = 0; id < total; ++id) {
                    w.normalised((size_t)(id % outputs) / w.step, norm.data());
                    ctx.input_grad[id] += grad[id] * norm[0];
                }
            }
        }
        // One source at a time: within one, every gradient element has its own target.
        for (int k = 0; k < n; ++k) {
            float* dst = ctx.net->grad_buffer(spec.inputs[k]);
            if (!dst) continue;
            const size_t size = ctx.net->layer(spec.inputs[k]).spec.out.size(), common = std::min(size, outputs);
            if (!w.values) {
                for (int b = 0; b < ctx.batch; ++b)
                    add_into(dst + (size_t)b * size, grad + (size_t)b * outputs, common);
                continue;
            }
#pragma omp parallel for schedule(static) if (total > 65536)
            for (long long id = 0; id < total; ++id) {
                const size_t i = (size_t)(id % outputs), b = (size_t)(id / outputs);
                if (i >= common) continue;
                float scale = 1.f;
                if (w.values) {
                    float local[64];
                    std::vector<float> heap;
                    float* nw = local;
                    if (n + 1 > 64) heap.resize(n + 1), nw = heap.data();
                    w.normalised(i / w.step, nw);
                    scale = nw[k + 1];
                }
                dst[b * size + i] += grad[id] * scale;
            }
        }
        if (w.values && ctx.weight_grads) weight_backward(ctx, w);
    }

private:
    // The shortcut weights of one forward or backward pass and Darknet's normalisation of them.
    struct Weights {
        const float* values = nullptr;    // (n + 1) x layer_step, or null without weights_type
        size_t layer_step = 1, step = 1;  // weights per source (1 or channels); outputs sharing one weight
        int sources = 0;                  // n + 1 (the input, then each `from`)
        int normalization = SHORTCUT_NORM_NONE;

        // The n + 1 normalised weights of weight group w0 (math/shortcut.h, shared with the CUDA kernels).
        void normalised(size_t w0, float* out) const {
            const ShortcutNormalizer n = shortcut_normalizer(values, w0, layer_step, sources, normalization);
            for (int k = 0; k < sources; ++k) out[k] = shortcut_weight(values[w0 + k * layer_step], n, normalization);
        }
    };

    Weights weights(const float* params) const {
        Weights w;
        w.sources = (int)spec.inputs.size() + 1;
        if (!p_.weighted) return w;
        w.values = params + spec.tensor("weights").offset;
        w.normalization = p_.normalization;
        w.layer_step = spec.tensor("weights").size / w.sources;
        w.step = spec.out.size() / w.layer_step;
        return w;
    }

    // output = w0 * input + sum_k w_k * from_k (all weights 1 without weights_type), before the activation.
    void weighted_sum(const ForwardContext& ctx, const float* params) const {
        const size_t outputs = spec.out.size();
        const int n = (int)spec.inputs.size();
        std::vector<const float*> sources(n);
        std::vector<size_t> sizes(n);
        for (int i = 0; i < n; ++i) {
            sources[i] = ctx.net->live_output(spec.inputs[i]);
            sizes[i] = ctx.net->layer(spec.inputs[i]).spec.out.size();
        }
        const Weights w = weights(params);
        const long long total = (long long)ctx.batch * outputs;
        bool same_sizes = true;
        for (int k = 0; k < n; ++k) same_sizes = same_sizes && sizes[k] == outputs;
        if (!w.values && same_sizes) {
            // The common case (plain residual sums): contiguous element-wise adds, vectorised and in chunks.
            const long long chunk = 16384, chunks = (total + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (chunks > 4)
            for (long long c = 0; c < chunks; ++c) {
                const long long begin = c * chunk, end = std::min(total, begin + chunk);
                for (long long id = begin; id < end; ++id) ctx.output[id] = ctx.input[id];
                for (int k = 0; k < n; ++k)
                    for (long long id = begin; id < end; ++id) ctx.output[id] += sources[k][id];
            }
            return;
        }
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long id = 0; id < total; ++id) {
            const size_t i = (size_t)(id % outputs), b = (size_t)(id / outputs);
            float value = ctx.input[id];
            if (!w.values) {
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) value += sources[k][b * sizes[k] + i];
            } else {
                float local[64];
                std::vector<float> heap;
                float* nw = local;
                if (n + 1 > 64) heap.resize(n + 1), nw = heap.data();
                w.normalised(i / w.step, nw);
                value *= nw[0];
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) value += sources[k][b * sizes[k] + i] * nw[k + 1];
            }
            ctx.output[id] = value;
        }
    }

    // dLoss/dweights: first with respect to the normalised weights (sum of gradient x source over the elements
    // sharing a weight), then through the normalisation (math/shortcut.h, shared with the CUDA kernels).
    void weight_backward(const BackwardContext& ctx, const Weights& w) const {
        const size_t outputs = spec.out.size();
        const int n = (int)spec.inputs.size(), sources = n + 1;
        std::vector<const float*> from(n);
        std::vector<size_t> sizes(n);
        for (int k = 0; k < n; ++k) {
            from[k] = ctx.net->train_output(spec.inputs[k]);
            sizes[k] = ctx.net->layer(spec.inputs[k]).spec.out.size();
        }
        std::vector<double> d_norm(w.layer_step * sources, 0.0);  // [w0][k]
        for (int b = 0; b < ctx.batch; ++b)
            for (size_t i = 0; i < outputs; ++i) {
                const double g = ctx.output_grad[(size_t)b * outputs + i];
                double* d = d_norm.data() + (i / w.step) * sources;
                d[0] += g * ctx.input[(size_t)b * outputs + i];
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) d[k + 1] += g * from[k][(size_t)b * sizes[k] + i];
            }
        float* grad_weights = ctx.grads + spec.tensor("weights").offset;
        std::vector<float> nw(sources);
        for (size_t w0 = 0; w0 < w.layer_step; ++w0) {
            w.normalised(w0, nw.data());
            shortcut_weight_gradient(d_norm.data() + w0 * sources, nw.data(), w.values, w0, w.layer_step, sources,
                                     w.normalization, grad_weights);
        }
    }

    const ShortcutParams p_ = spec.params<ShortcutParams>();
    std::vector<float> pre_activation_;
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Shortcut, Shortcut);

}  // namespace pd
