// [softmax]: softmax with temperature over each of `groups` equal slices of a layer's inputs.
#include <cfloat>
#include <cmath>

#include "../core/network.h"

namespace pd {
namespace {

class Softmax : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int groups = (int)spec.get("groups");
        const float temperature = (float)spec.get("temperature");
        const size_t inputs = spec.in.size(), n = inputs / groups;
        for (int b = 0; b < ctx.batch; ++b)
            for (int g = 0; g < groups; ++g) {
                const float* in = ctx.input + b * inputs + g * n;
                float* out = ctx.output + b * inputs + g * n;
                float largest = -FLT_MAX, sum = 0.f;
                for (size_t i = 0; i < n; ++i) largest = std::fmax(largest, in[i]);
                for (size_t i = 0; i < n; ++i) {
                    out[i] = std::exp(in[i] / temperature - largest / temperature);
                    sum += out[i];
                }
                for (size_t i = 0; i < n; ++i) out[i] /= sum;
            }
    }
};

}  // namespace

PD_REGISTER_LAYER("softmax", Softmax);

}  // namespace pd
