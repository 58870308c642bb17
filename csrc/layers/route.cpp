// [route]: concatenates, along channels, the group_id-th of `groups` channel slices of each listed layer.
#include <cstring>

#include "../core/network.h"
#include "../cpu/train_ops.h"

namespace pd {
namespace {

class Route : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int groups = (int)spec.get("groups"), group_id = (int)spec.get("group_id");
        const size_t out_size = spec.out.size();
        size_t offset = 0;
        for (int ref : spec.inputs) {
            const size_t in_size = ctx.net->layer(ref).spec.out.size();
            const size_t part = in_size / groups;
            const float* src = ctx.net->live_output(ref);
            for (int b = 0; b < ctx.batch; ++b)
                std::memcpy(ctx.output + b * out_size + offset, src + b * in_size + part * group_id,
                            part * sizeof(float));
            offset += part;
        }
    }

    bool reads_previous_output() const override { return false; }

    // Each slice of the output gradient goes back to the slice of the layer it was copied from.
    void backward(const BackwardContext& ctx) override {
        const int groups = (int)spec.get("groups"), group_id = (int)spec.get("group_id");
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
};

}  // namespace

PD_REGISTER_LAYER("route", Route);

}  // namespace pd
