// [shortcut]: adds the outputs of the `from` layers to the input (only the overlapping prefix of a smaller one,
// as Darknet does), optionally weighted per layer or per channel with relu/softmax-normalised weights, then
// applies the activation.
#include <cfloat>
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"

namespace pd {
namespace {

class Shortcut : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const size_t outputs = spec.out.size();
        const int n = (int)spec.inputs.size();
        std::vector<const float*> sources(n);
        std::vector<size_t> sizes(n);
        for (int i = 0; i < n; ++i) {
            sources[i] = ctx.net->live_output(spec.inputs[i]);
            sizes[i] = ctx.net->layer(spec.inputs[i]).spec.out.size();
        }
        const float* weights = spec.has_tensor("weights") ? ctx.net->params.data() + spec.tensor("weights").offset
                                                          : nullptr;
        const std::string& norm = spec.text("weights_normalization");
        const bool relu_norm = norm == "relu" || norm == "avg_relu", softmax_norm = norm == "softmax";
        const size_t layer_step = weights ? spec.tensor("weights").size / (n + 1) : 1;  // 1 or channels
        const size_t step = outputs / layer_step;  // elements sharing one weight
        const long long total = (long long)ctx.batch * outputs;
        bool same_sizes = true;
        for (int k = 0; k < n; ++k) same_sizes = same_sizes && sizes[k] == outputs;
        if (!weights && same_sizes) {
            // The common case (plain residual sums): contiguous element-wise adds, vectorised and in chunks.
            const long long chunk = 16384, chunks = (total + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (chunks > 4)
            for (long long c = 0; c < chunks; ++c) {
                const long long begin = c * chunk, end = std::min(total, begin + chunk);
                for (long long id = begin; id < end; ++id) ctx.output[id] = ctx.input[id];
                for (int k = 0; k < n; ++k)
                    for (long long id = begin; id < end; ++id) ctx.output[id] += sources[k][id];
            }
            activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w,
                           (int)spec.get("activation"));
            return;
        }
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long id = 0; id < total; ++id) {
            const size_t i = (size_t)(id % outputs), b = (size_t)(id / outputs);
            float value = ctx.input[id];
            if (!weights) {
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) value += sources[k][b * sizes[k] + i];
            } else {
                const size_t w0 = i / step;
                float max_val = -FLT_MAX, sum = 1.f;
                if (relu_norm || softmax_norm) {
                    for (int k = 0; k <= n; ++k) max_val = std::fmax(max_val, weights[w0 + k * layer_step]);
                    sum = 0.0001f;
                    for (int k = 0; k <= n; ++k) {
                        const float w = weights[w0 + k * layer_step];
                        sum += relu_norm ? std::fmax(w, 0.f) : std::exp(w - max_val);
                    }
                }
                auto weight = [&](int k) {
                    const float w = weights[w0 + k * layer_step];
                    if (relu_norm) return std::fmax(w, 0.f) / sum;
                    if (softmax_norm) return std::exp(w - max_val) / sum;
                    return w;
                };
                value *= weight(0);
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) value += sources[k][b * sizes[k] + i] * weight(k + 1);
            }
            ctx.output[id] = value;
        }
        activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w,
                       (int)spec.get("activation"));
    }
};

}  // namespace

PD_REGISTER_LAYER("shortcut", Shortcut);

}  // namespace pd
