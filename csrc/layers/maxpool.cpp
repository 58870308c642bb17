// [maxpool]: Darknet's window placement (offset -padding/2, positions outside the image never win), which keeps
// the size for stride 1 (yolov3-tiny's 2x2/1, the SPP 5/9/13 pools). maxpool_depth=1 takes the maximum over
// channels out_channels apart instead. Training records where each maximum came from (the first of equal values,
// as Darknet's strict comparison picks) and backward sends the gradient there.
#include <algorithm>
#include <cfloat>
#include <vector>

#include "../core/network.h"
#include "../cpu/ops.h"
#include "../math/pooling.h"

namespace pd {
namespace {

// The common 2x2 stride-2 pool of an even-sized plane: every window lies inside; the general loop's scan (from
// -FLT_MAX, top row first, left first, strictly greater wins) as straight-line code the compiler vectorises.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void max_2x2(const float* src, int in_w,
                                                                                           int out_h, int out_w,
                                                                                           float* out, int* from) {
    for (int oy = 0; oy < out_h; ++oy) {
        const float* top = src + (size_t)(2 * oy) * in_w;
        const float* bottom = top + in_w;
        float* o = out + (size_t)oy * out_w;
        int* f = from + (size_t)oy * out_w;
        const int row = 2 * oy * in_w;
        for (int ox = 0; ox < out_w; ++ox) {
            float best = -FLT_MAX;
            int at = -1;
            if (top[2 * ox] > best) best = top[2 * ox], at = row + 2 * ox;
            if (top[2 * ox + 1] > best) best = top[2 * ox + 1], at = row + 2 * ox + 1;
            if (bottom[2 * ox] > best) best = bottom[2 * ox], at = row + in_w + 2 * ox;
            if (bottom[2 * ox + 1] > best) best = bottom[2 * ox + 1], at = row + in_w + 2 * ox + 1;
            o[ox] = best;
            f[ox] = at;
        }
    }
}

class Maxpool : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const Shape in = spec.in, out = spec.out;
        if (p_.depth) {
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
        pool2d(ctx.input, ctx.output, (long long)ctx.batch * in.c, in.h, in.w, out.h, out.w, p_.window, false);
    }

    // Records, per output value, the input it came from: the position within the input plane, or for
    // maxpool_depth the input channel; -1 when the window holds no input value (the output is -FLT_MAX).
    void forward_train(const TrainContext& ctx) override {
        const Shape in = spec.in, out = spec.out;
        const size_t in_plane = (size_t)in.h * in.w, out_plane = (size_t)out.h * out.w;
        argmax_.resize((size_t)ctx.batch * out.size());
        if (p_.depth) {
#pragma omp parallel for collapse(2) schedule(static)
            for (int b = 0; b < ctx.batch; ++b)
                for (int g = 0; g < out.c; ++g) {
                    const size_t o = ((size_t)b * out.c + g) * out_plane;
                    for (size_t p = 0; p < in_plane; ++p) {
                        float best = -FLT_MAX;
                        int from = -1;
                        for (int k = g; k < in.c; k += out.c) {
                            const float v = ctx.input[((size_t)b * in.c + k) * in_plane + p];
                            if (v > best) {
                                best = v;
                                from = k;
                            }
                        }
                        ctx.output[o + p] = best;
                        argmax_[o + p] = from;
                    }
                }
            return;
        }
        const PoolWindow& w = p_.window;
        const long long planes = (long long)ctx.batch * in.c;
        if (w.size == 2 && w.stride_x == 2 && w.stride_y == 2 && w.offset == 0 && in.h == 2 * out.h &&
            in.w == 2 * out.w) {
#pragma omp parallel for schedule(static)
            for (long long p = 0; p < planes; ++p)
                max_2x2(ctx.input + p * in_plane, in.w, out.h, out.w, ctx.output + p * out_plane,
                        argmax_.data() + p * out_plane);
            return;
        }
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            const float* src = ctx.input + p * in_plane;
            for (int oy = 0; oy < out.h; ++oy)
                for (int ox = 0; ox < out.w; ++ox) {
                    float best = -FLT_MAX;
                    int from = -1;
                    const PoolSpan ys = pool_span(oy, w.stride_y, w.offset, w.size, in.h);
                    const PoolSpan xs = pool_span(ox, w.stride_x, w.offset, w.size, in.w);
                    for (int y = ys.first; y < ys.last; ++y)
                        for (int x = xs.first; x < xs.last; ++x)
                            if (src[y * in.w + x] > best) {
                                best = src[y * in.w + x];
                                from = y * in.w + x;
                            }
                    const size_t o = p * out_plane + (size_t)oy * out.w + ox;
                    ctx.output[o] = best;
                    argmax_[o] = from;
                }
        }
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const Shape in = spec.in, out = spec.out;
        const size_t in_plane = (size_t)in.h * in.w, out_plane = (size_t)out.h * out.w;
        if (p_.depth) {
            // Output channel g only ever draws from input channels g, g + out_c, ...: no two threads share a target.
#pragma omp parallel for collapse(2) schedule(static)
            for (int b = 0; b < ctx.batch; ++b)
                for (int g = 0; g < out.c; ++g) {
                    const size_t o = ((size_t)b * out.c + g) * out_plane;
                    for (size_t p = 0; p < out_plane; ++p)
                        if (argmax_[o + p] >= 0)
                            ctx.input_grad[((size_t)b * in.c + argmax_[o + p]) * in_plane + p] +=
                                ctx.output_grad[o + p];
                }
            return;
        }
        // Overlapping windows (stride 1) can pick the same input, so threads split by plane, never within one.
        const long long planes = (long long)ctx.batch * in.c;
#pragma omp parallel for schedule(static)
        for (long long p = 0; p < planes; ++p) {
            float* dst = ctx.input_grad + p * in_plane;
            const float* g = ctx.output_grad + p * out_plane;
            const int* from = argmax_.data() + p * out_plane;
            for (size_t o = 0; o < out_plane; ++o)
                if (from[o] >= 0) dst[from[o]] += g[o];
        }
    }

private:
    const MaxpoolParams p_ = spec.params<MaxpoolParams>();
    std::vector<int> argmax_;
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Maxpool, Maxpool);

}  // namespace pd
