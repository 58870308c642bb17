// [scale_channels]: multiplies the `from` layer by the input, one factor per channel (squeeze-and-excitation) or,
// with scale_wh=1, one factor per pixel shared by all channels; then the activation.
#include "../core/network.h"
#include "../cpu/ops.h"

namespace pd {
namespace {

class ScaleChannels : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const float* from = ctx.net->live_output(spec.inputs[0]);
        const size_t plane = (size_t)spec.out.h * spec.out.w, per_image = spec.out.size();
        const bool scale_wh = spec.get("scale_wh") != 0;
        const long long total = (long long)ctx.batch * per_image;
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i) {
            const size_t b = i / per_image, within = i % per_image;
            const size_t k = scale_wh ? b * plane + within % plane : b * spec.out.c + within / plane;
            ctx.output[i] = from[i] * ctx.input[k];
        }
        activate_array(ctx.output, ctx.batch, spec.out.c, plane, (int)spec.get("activation"));
    }
};

}  // namespace

PD_REGISTER_LAYER("scale_channels", ScaleChannels);

}  // namespace pd
