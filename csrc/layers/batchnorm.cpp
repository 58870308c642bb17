// [batchnorm]: a standalone batch-norm on the rolling statistics (inference).
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"

namespace pd {
namespace {

class Batchnorm : public Layer {
public:
    using Layer::Layer;

    void prepare(const float* params, float eps) override {
        const int c = spec.out.c;
        scale_.resize(c);
        shift_.resize(c);
        std::vector<double> factor(c);
        batchnorm_factors(params + spec.tensor("biases").offset, params + spec.tensor("scales").offset,
                          params + spec.tensor("rolling_mean").offset, params + spec.tensor("rolling_variance").offset,
                          eps, c, factor.data(), shift_.data());
        for (int i = 0; i < c; ++i) scale_[i] = (float)factor[i];
    }

    void forward(const ForwardContext& ctx) override {
        const size_t plane = (size_t)spec.out.h * spec.out.w;
        const int c = spec.out.c;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int ch = 0; ch < c; ++ch) {
                const size_t base = ((size_t)b * c + ch) * plane;
                for (size_t i = 0; i < plane; ++i) ctx.output[base + i] = ctx.input[base + i] * scale_[ch] + shift_[ch];
            }
    }

private:
    std::vector<float> scale_, shift_;
};

}  // namespace

PD_REGISTER_LAYER("batchnorm", Batchnorm);

}  // namespace pd
