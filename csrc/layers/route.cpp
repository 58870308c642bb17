// [route]: concatenates, along channels, the group_id-th of `groups` channel slices of each listed layer.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../core/network.h"
#include "../cpu/train_ops.h"

namespace pd {
namespace {

class Route : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int groups = p_.groups, group_id = p_.group_id;
        const size_t out_size = spec.out.size();
        // One copy per input layer and image, each cut into chunks that the threads share.
        struct Copy {
            const float* src;
            float* dst;
            size_t n;
        };
        std::vector<Copy> copies;
        constexpr size_t kChunk = 32768;
        size_t offset = 0;
        for (int ref : spec.inputs) {
            const size_t in_size = ctx.net->layer(ref).spec.out.size();
            const size_t part = in_size / groups;
            const float* src = ctx.net->live_output(ref);
            for (int b = 0; b < ctx.batch; ++b)
                for (size_t at = 0; at < part; at += kChunk)
                    copies.push_back({src + b * in_size + part * group_id + at, ctx.output + b * out_size + offset + at,
                                      std::min(kChunk, part - at)});
            offset += part;
        }
#pragma omp parallel for schedule(static) if (copies.size() > 4)
        for (size_t i = 0; i < copies.size(); ++i)
            std::memcpy(copies[i].dst, copies[i].src, copies[i].n * sizeof(float));
    }

    bool reads_previous_output() const override { return false; }

    // Each slice of the output gradient goes back to the slice of the layer it was copied from.
    void backward(const BackwardContext& ctx) override {
        const int groups = p_.groups, group_id = p_.group_id;
        const size_t out_size = spec.out.size();
        size_t offset = 0;
        for (int ref : spec.inputs) {
            const size_t in_size = ctx.net->layer(ref).spec.out.size();
            const size_t part = in_size / groups;
            float* dst = ctx.net->grad_buffer(ref);
            if (dst)
                for (int b = 0; b < ctx.batch; ++b)
                    add_into(dst + b * in_size + part * group_id, ctx.output_grad + b * out_size + offset, part);
            offset += part;
        }
    }

private:
    const RouteParams p_ = spec.params<RouteParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Route, Route);

}  // namespace pd
