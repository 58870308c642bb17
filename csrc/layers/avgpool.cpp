// [avgpool]: global average of each channel.
#include "../core/network.h"

namespace pd {
namespace {

class Avgpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const size_t plane = (size_t)spec.in.h * spec.in.w;
        const long long planes = (long long)ctx.batch * spec.in.c;
#pragma omp parallel for schedule(static) if (planes * (long long)plane > 65536)
        for (long long p = 0; p < planes; ++p) {
            const float* src = ctx.input + p * plane;
            float sum = 0.f;
            for (size_t i = 0; i < plane; ++i) sum += src[i];
            ctx.output[p] = sum / plane;
        }
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const size_t plane = (size_t)spec.in.h * spec.in.w;
        const long long planes = (long long)ctx.batch * spec.in.c;
#pragma omp parallel for schedule(static) if (planes * (long long)plane > 65536)
        for (long long p = 0; p < planes; ++p) {
            const float g = ctx.output_grad[p] / plane;
            float* dst = ctx.input_grad + p * plane;
            for (size_t i = 0; i < plane; ++i) dst[i] += g;
        }
    }
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Avgpool, Avgpool);

}  // namespace pd
