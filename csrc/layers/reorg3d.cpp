// [reorg3d]: space-to-depth by `stride`, or reverse=1 as Darknet computes it; the index maps are
// math/reorg.h's, shared with the CUDA kernels.
#include "../core/network.h"
#include "../math/reorg.h"

namespace pd {
namespace {

class Reorg3d : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int s = p_.stride;
        if (p_.reverse) {
            reverse(ctx, s);
            return;
        }
        const Shape small = spec.out, big = spec.in;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < small.c; ++k) {
                const float* image = ctx.input + (size_t)b * big.size();
                for (int j = 0; j < small.h; ++j)
                    for (int i = 0; i < small.w; ++i)
                        ctx.output[(((size_t)b * small.c + k) * small.h + j) * small.w + i] =
                            image[reorg_source(k, j, i, big.c, big.h, big.w, s)];
            }
    }

    // Both directions move every value to exactly one place, so backward moves each gradient value back.
    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const int s = p_.stride;
        if (p_.reverse) {
            const int w = spec.out.w, h = spec.out.h, c = spec.out.c;
#pragma omp parallel for collapse(2) schedule(static)
            for (int b = 0; b < ctx.batch; ++b)
                for (int k = 0; k < c; ++k) {
                    const float* image_grad = ctx.output_grad + (size_t)b * spec.out.size();
                    for (int j = 0; j < h; ++j)
                        for (int i = 0; i < w; ++i) {
                            const size_t from = i + (size_t)w * (j + (size_t)h * (k + (size_t)c * b));
                            ctx.input_grad[from] += image_grad[reorg_reverse_target(k, j, i, c, h, w, s)];
                        }
                }
            return;
        }
        const Shape small = spec.out, big = spec.in;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < small.c; ++k) {
                float* image_grad = ctx.input_grad + (size_t)b * big.size();
                for (int j = 0; j < small.h; ++j)
                    for (int i = 0; i < small.w; ++i)
                        image_grad[reorg_source(k, j, i, big.c, big.h, big.w, s)] +=
                            ctx.output_grad[(((size_t)b * small.c + k) * small.h + j) * small.w + i];
            }
    }

private:
    // Darknet's reverse reorg (math/reorg.h): a scatter of each input value, read with the output's dimensions.
    void reverse(const ForwardContext& ctx, int s) {
        const int w = spec.out.w, h = spec.out.h, c = spec.out.c;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < c; ++k) {
                float* image = ctx.output + (size_t)b * spec.out.size();
                for (int j = 0; j < h; ++j)
                    for (int i = 0; i < w; ++i) {
                        const size_t from = i + (size_t)w * (j + (size_t)h * (k + (size_t)c * b));
                        image[reorg_reverse_target(k, j, i, c, h, w, s)] = ctx.input[from];
                    }
            }
    }

    const Reorg3dParams p_ = spec.params<Reorg3dParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Reorg3d, Reorg3d);

}  // namespace pd
