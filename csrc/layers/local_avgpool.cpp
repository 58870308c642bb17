// [local_avgpool]: a windowed average with maxpool's geometry; only positions inside the image are averaged.
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
};

}  // namespace

PD_REGISTER_LAYER("local_avgpool", LocalAvgpool);

}  // namespace pd
