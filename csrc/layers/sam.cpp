// [sam]: spatial attention, the element-wise product of the input and the `from` layer, then the activation.
#include "../core/network.h"
#include "../cpu/ops.h"

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
        activate_array(ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w,
                       (int)spec.get("activation"));
    }
};

}  // namespace

PD_REGISTER_LAYER("sam", Sam);

}  // namespace pd
