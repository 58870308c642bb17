// [maxpool]: Darknet's window placement (offset -padding/2, positions outside the image never win), which keeps
// the size for stride 1 (yolov3-tiny's 2x2/1, the SPP 5/9/13 pools). maxpool_depth=1 takes the maximum over
// channels out_channels apart instead.
#include <algorithm>
#include <cfloat>

#include "../core/network.h"
#include "../cpu/ops.h"

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
        pool2d(ctx.input, ctx.output, (long long)ctx.batch * in.c, in.h, in.w, out.h, out.w, (int)spec.get("size"),
               (int)spec.get("stride_y"), (int)spec.get("stride_x"), -(int)spec.get("padding") / 2, false);
    }
};

}  // namespace

PD_REGISTER_LAYER("maxpool", Maxpool);

}  // namespace pd
