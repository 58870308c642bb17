// [route]: concatenates, along channels, the group_id-th of `groups` channel slices of each listed layer.
#include <cstring>

#include "../core/network.h"

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
};

}  // namespace

PD_REGISTER_LAYER("route", Route);

}  // namespace pd
