// [upsample]: nearest-neighbour enlargement by `stride`, times `scale`; a negative stride in the cfg instead sums
// stride x stride blocks (Darknet's "reverse" upsample). The index maps are math/upsample.h's.
#include <cstring>

#include "../core/network.h"
#include "../math/upsample.h"

namespace pd {
namespace {

class Upsample : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int stride = p_.stride;
        const float scale = p_.scale;
        const Shape in = spec.in, out = spec.out;
        const long long planes = (long long)ctx.batch * in.c;
        const bool reverse = p_.reverse;
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            const float* src = ctx.input + p * in.h * in.w;
            float* dst = ctx.output + p * out.h * out.w;
            if (reverse) {
                std::memset(dst, 0, sizeof(float) * out.h * out.w);
                for (int y = 0; y < out.h * stride; ++y)
                    for (int x = 0; x < out.w * stride; ++x)
                        dst[upsample_coarse_index(y, x, stride, out.w)] += scale * src[y * in.w + x];
                continue;
            }
            for (int y = 0; y < out.h; ++y) {
                float* o = dst + y * out.w;
                for (int x = 0; x < out.w; ++x) o[x] = scale * src[upsample_coarse_index(y, x, stride, in.w)];
            }
        }
    }

    // The adjoint: each input pixel collects scale times the gradient of every output it was copied to (or, for
    // the summing downsample, receives scale times the gradient of the block it was added into).
    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const int stride = p_.stride;
        const float scale = p_.scale;
        const Shape in = spec.in, out = spec.out;
        const long long planes = (long long)ctx.batch * in.c;
        const bool reverse = p_.reverse;
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            float* dst = ctx.input_grad + p * in.h * in.w;
            const float* g = ctx.output_grad + p * out.h * out.w;
            if (reverse) {
                for (int y = 0; y < out.h * stride; ++y)
                    for (int x = 0; x < out.w * stride; ++x)
                        dst[y * in.w + x] += scale * g[upsample_coarse_index(y, x, stride, out.w)];
                continue;
            }
            for (int y = 0; y < out.h; ++y)
                for (int x = 0; x < out.w; ++x)
                    dst[upsample_coarse_index(y, x, stride, in.w)] += scale * g[y * out.w + x];
        }
    }

private:
    const UpsampleParams p_ = spec.params<UpsampleParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Upsample, Upsample);

}  // namespace pd
