// [maxpool]: Darknet's window placement (offset -padding/2, positions outside the image never win), which keeps
// the size for stride 1 (yolov3-tiny's 2x2/1, the SPP 5/9/13 pools). maxpool_depth=1 takes the maximum over
// channels out_channels apart instead.
#include <algorithm>
#include <cfloat>

#include "../core/network.h"

namespace pd {
namespace {

class Maxpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const Shape in = spec.in, out = spec.out;
        if (spec.get("maxpool_depth") != 0) {
            const size_t plane = (size_t)in.h * in.w;
#pragma omp parallel for collapse(2) schedule(static)
            for (int b = 0; b < ctx.batch; ++b)
                for (int g = 0; g < out.c; ++g) {
                    float* dst = ctx.output + ((size_t)b * out.c + g) * plane;
                    for (size_t p = 0; p < plane; ++p) {
                        float best = -FLT_MAX;
                        for (int k = g; k < in.c; k += out.c)
                            best = std::max(best, ctx.input[((size_t)b * in.c + k) * plane + p]);
                        dst[p] = best;
                    }
                }
            return;
        }
        const int size = (int)spec.get("size"), sx = (int)spec.get("stride_x"), sy = (int)spec.get("stride_y");
        const int offset = -(int)spec.get("padding") / 2;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int c = 0; c < in.c; ++c) {
                const float* src = ctx.input + ((size_t)b * in.c + c) * in.h * in.w;
                float* dst = ctx.output + ((size_t)b * out.c + c) * out.h * out.w;
                for (int oy = 0; oy < out.h; ++oy)
                    for (int ox = 0; ox < out.w; ++ox) {
                        float best = -FLT_MAX;
                        for (int ky = 0; ky < size; ++ky) {
                            const int y = offset + oy * sy + ky;
                            if (y < 0 || y >= in.h) continue;
                            for (int kx = 0; kx < size; ++kx) {
                                const int x = offset + ox * sx + kx;
                                if (x >= 0 && x < in.w) best = std::max(best, src[y * in.w + x]);
                            }
                        }
                        dst[oy * out.w + ox] = best;
                    }
            }
    }
};

}  // namespace

PD_REGISTER_LAYER("maxpool", Maxpool);

}  // namespace pd
