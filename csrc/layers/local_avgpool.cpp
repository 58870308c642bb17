// [local_avgpool]: a windowed average with maxpool's geometry; only positions inside the image are averaged.
// Backward is the derivative of that average, 1/count per in-image position (Darknet's backward divides by
// size*size instead, which differs from its forward at the image border).
#include <algorithm>

#include "../core/network.h"
#include "../cpu/ops.h"

namespace pd {
namespace {

class LocalAvgpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        pool2d(ctx.input, ctx.output, (long long)ctx.batch * spec.in.c, spec.in.h, spec.in.w, spec.out.h, spec.out.w,
               (int)spec.get("size"), (int)spec.get("stride_y"), (int)spec.get("stride_x"),
               -(int)spec.get("padding") / 2, true);
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const Shape in = spec.in, out = spec.out;
        const int size = (int)spec.get("size"), stride_y = (int)spec.get("stride_y"), stride_x = (int)spec.get("stride_x");
        const int offset = -(int)spec.get("padding") / 2;
        const long long planes = (long long)ctx.batch * in.c;
        // Windows overlap within a plane, so threads split by plane.
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            float* dst = ctx.input_grad + p * in.h * in.w;
            const float* g = ctx.output_grad + p * out.h * out.w;
            for (int oy = 0; oy < out.h; ++oy)
                for (int ox = 0; ox < out.w; ++ox) {
                    const int y0 = std::max(offset + oy * stride_y, 0), y1 = std::min(offset + oy * stride_y + size, in.h);
                    const int x0 = std::max(offset + ox * stride_x, 0), x1 = std::min(offset + ox * stride_x + size, in.w);
                    if (y1 <= y0 || x1 <= x0) continue;
                    const float share = g[oy * out.w + ox] / ((y1 - y0) * (x1 - x0));
                    for (int y = y0; y < y1; ++y)
                        for (int x = x0; x < x1; ++x) dst[y * in.w + x] += share;
                }
        }
    }
};

}  // namespace

PD_REGISTER_LAYER("local_avgpool", LocalAvgpool);

}  // namespace pd
