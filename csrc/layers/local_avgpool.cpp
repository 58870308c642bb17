// [local_avgpool]: a windowed average with maxpool's geometry; only positions inside the image are averaged.
#include "../core/network.h"

namespace pd {
namespace {

class LocalAvgpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const Shape in = spec.in, out = spec.out;
        const int size = (int)spec.get("size"), sx = (int)spec.get("stride_x"), sy = (int)spec.get("stride_y");
        const int offset = -(int)spec.get("padding") / 2;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int c = 0; c < in.c; ++c) {
                const float* src = ctx.input + ((size_t)b * in.c + c) * in.h * in.w;
                float* dst = ctx.output + ((size_t)b * out.c + c) * out.h * out.w;
                for (int oy = 0; oy < out.h; ++oy)
                    for (int ox = 0; ox < out.w; ++ox) {
                        float sum = 0.f;
                        int count = 0;
                        for (int ky = 0; ky < size; ++ky) {
                            const int y = offset + oy * sy + ky;
                            if (y < 0 || y >= in.h) continue;
                            for (int kx = 0; kx < size; ++kx) {
                                const int x = offset + ox * sx + kx;
                                if (x >= 0 && x < in.w) { sum += src[y * in.w + x]; ++count; }
                            }
                        }
                        dst[oy * out.w + ox] = count ? sum / count : 0.f;
                    }
            }
    }
};

}  // namespace

PD_REGISTER_LAYER("local_avgpool", LocalAvgpool);

}  // namespace pd
