// [reorg3d]: space-to-depth by `stride` (output channel k takes input channel k % C at offset
// ((k / C) / stride, (k / C) % stride) in each stride x stride block), or its inverse with reverse=1.
#include "../core/network.h"

namespace pd {
namespace {

class Reorg3d : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int s = (int)spec.get("stride");
        const bool reverse = spec.get("reverse") != 0;
        // Index arithmetic on the small (depth) side: C_small channels of H x W pixels.
        const Shape small = reverse ? spec.in : spec.out, big = reverse ? spec.out : spec.in;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < small.c; ++k) {
                const int c2 = k % big.c, offset = k / big.c;
                for (int j = 0; j < small.h; ++j)
                    for (int i = 0; i < small.w; ++i) {
                        const size_t s_idx = (((size_t)b * small.c + k) * small.h + j) * small.w + i;
                        const size_t b_idx = (((size_t)b * big.c + c2) * big.h + (j * s + offset / s)) * big.w +
                                             (i * s + offset % s);
                        if (reverse)
                            ctx.output[b_idx] = ctx.input[s_idx];
                        else
                            ctx.output[s_idx] = ctx.input[b_idx];
                    }
            }
    }
};

}  // namespace

PD_REGISTER_LAYER("reorg3d", Reorg3d);

}  // namespace pd
