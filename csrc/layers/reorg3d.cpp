// [reorg3d]: space-to-depth by `stride` (output channel k takes input channel k % C at offset
// ((k / C) / stride, (k / C) % stride) in each stride x stride block); reverse=1 as Darknet computes it.
#include "../core/network.h"

namespace pd {
namespace {

class Reorg3d : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int s = (int)spec.get("stride");
        if (spec.get("reverse") != 0) {
            reverse(ctx, s);
            return;
        }
        const Shape small = spec.out, big = spec.in;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < small.c; ++k) {
                const int c2 = k % big.c, offset = k / big.c;
                for (int j = 0; j < small.h; ++j)
                    for (int i = 0; i < small.w; ++i)
                        ctx.output[(((size_t)b * small.c + k) * small.h + j) * small.w + i] =
                            ctx.input[(((size_t)b * big.c + c2) * big.h + (j * s + offset / s)) * big.w +
                                      (i * s + offset % s)];
            }
    }

    // Both directions move every value to exactly one place, so backward moves each gradient value back.
    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const int s = (int)spec.get("stride");
        if (spec.get("reverse") != 0) {
            const int w = spec.out.w, h = spec.out.h, c = spec.out.c, groups = c / (s * s);
#pragma omp parallel for collapse(2) schedule(static)
            for (int b = 0; b < ctx.batch; ++b)
                for (int k = 0; k < c; ++k) {
                    const int c2 = k % groups, offset = k / groups;
                    for (int j = 0; j < h; ++j)
                        for (int i = 0; i < w; ++i) {
                            const size_t from = i + (size_t)w * (j + (size_t)h * (k + (size_t)c * b));
                            const size_t to = (i * s + offset % s) +
                                              (size_t)w * s * ((j * s + offset / s) + (size_t)h * s * (c2 + (size_t)groups * b));
                            ctx.input_grad[from] += ctx.output_grad[to];
                        }
                }
            return;
        }
        const Shape small = spec.out, big = spec.in;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < small.c; ++k) {
                const int c2 = k % big.c, offset = k / big.c;
                for (int j = 0; j < small.h; ++j)
                    for (int i = 0; i < small.w; ++i)
                        ctx.input_grad[(((size_t)b * big.c + c2) * big.h + (j * s + offset / s)) * big.w + (i * s + offset % s)] +=
                            ctx.output_grad[(((size_t)b * small.c + k) * small.h + j) * small.w + i];
            }
    }

private:
    // Darknet runs reverse=1 as its reorg with the *output* dimensions (W*s, H*s, C/s^2) and forward=1, which
    // spreads the flat buffer over C/s^4 channel groups: a permutation that is not the inverse of the forward
    // reorg. It is reproduced as is, so that weights trained with it keep working (graph.py requires s^4 | C).
    void reverse(const ForwardContext& ctx, int s) {
        const int w = spec.out.w, h = spec.out.h, c = spec.out.c, groups = c / (s * s);
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < ctx.batch; ++b)
            for (int k = 0; k < c; ++k) {
                const int c2 = k % groups, offset = k / groups;
                for (int j = 0; j < h; ++j)
                    for (int i = 0; i < w; ++i) {
                        const size_t from = i + (size_t)w * (j + (size_t)h * (k + (size_t)c * b));
                        const size_t to = (i * s + offset % s) +
                                          (size_t)w * s * ((j * s + offset / s) + (size_t)h * s * (c2 + (size_t)groups * b));
                        ctx.output[to] = ctx.input[from];
                    }
            }
    }
};

}  // namespace

PD_REGISTER_LAYER("reorg3d", Reorg3d);

}  // namespace pd
