// [shortcut]: adds the outputs of the `from` layers to the input (only the overlapping prefix of a smaller one,
// as Darknet does), optionally weighted per layer or per channel with relu/softmax-normalised weights, then
// applies the activation.
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"
#include "../math/shortcut.h"

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
        const int norm = shortcut_normalization(spec.text("weights_normalization"));
        const size_t layer_step = weights ? spec.tensor("weights").size / (n + 1) : 1;  // 1 or channels
        const size_t step = outputs / layer_step;  // elements sharing one weight
        const long long total = (long long)ctx.batch * outputs;
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long id = 0; id < total; ++id) {
            const size_t i = (size_t)(id % outputs), b = (size_t)(id / outputs);
            float value = ctx.input[id];
            if (!weights) {
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k]) value += sources[k][b * sizes[k] + i];
            } else {
                const size_t w0 = i / step;
                const ShortcutNormalizer normalizer = shortcut_normalizer(weights, w0, layer_step, n + 1, norm);
                value *= shortcut_weight(weights[w0], normalizer, norm);
                for (int k = 0; k < n; ++k)
                    if (i < sizes[k])
                        value += sources[k][b * sizes[k] + i] *
                                 shortcut_weight(weights[w0 + (k + 1) * layer_step], normalizer, norm);
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
