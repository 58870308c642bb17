// [local_avgpool]: a windowed average with maxpool's geometry; only positions inside the image are averaged.
// Backward is the derivative of that average, 1/count per in-image position (Darknet's backward divides by
// size*size instead, which differs from its forward at the image border).
#include "../core/network.h"
#include "../cpu/ops.h"
#include "../math/pooling.h"

namespace pd {
namespace {

class LocalAvgpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        pool2d(ctx.input, ctx.output, (long long)ctx.batch * spec.in.c, spec.in.h, spec.in.w, spec.out.h, spec.out.w,
               p_.window, true);
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const Shape in = spec.in, out = spec.out;
        const PoolWindow& w = p_.window;
        const long long planes = (long long)ctx.batch * in.c;
        // Windows overlap within a plane, so threads split by plane.
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            float* dst = ctx.input_grad + p * in.h * in.w;
            const float* g = ctx.output_grad + p * out.h * out.w;
            for (int oy = 0; oy < out.h; ++oy)
                for (int ox = 0; ox < out.w; ++ox) {
                    const PoolSpan ys = pool_span(oy, w.stride_y, w.offset, w.size, in.h);
                    const PoolSpan xs = pool_span(ox, w.stride_x, w.offset, w.size, in.w);
                    if (ys.last <= ys.first || xs.last <= xs.first) continue;
                    const float share = g[oy * out.w + ox] / ((ys.last - ys.first) * (xs.last - xs.first));
                    for (int y = ys.first; y < ys.last; ++y)
                        for (int x = xs.first; x < xs.last; ++x) dst[y * in.w + x] += share;
                }
        }
    }

private:
    const LocalAvgpoolParams p_ = spec.params<LocalAvgpoolParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::LocalAvgpool, LocalAvgpool);

}  // namespace pd
