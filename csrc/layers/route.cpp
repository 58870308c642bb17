// [route]: concatenates, along channels, the group_id-th of `groups` channel slices of each listed layer.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../core/network.h"

namespace pd {
namespace {

class Route : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int groups = (int)spec.get("groups"), group_id = (int)spec.get("group_id");
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
};

}  // namespace

PD_REGISTER_LAYER("route", Route);

}  // namespace pd
