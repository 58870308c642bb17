// [yolo] forward: what Darknet's layer holds after forward_yolo_layer. Without new_coords, x, y, objectness and
// the class scores go through the logistic (w, h stay raw); with new_coords=1 the previous layer already applied
// it. Then x, y <- x*scale_x_y - (scale_x_y - 1)/2.
#include <cstring>

#include "../core/network.h"
#include "../math/yolo.h"

namespace pd {
namespace {

class Yolo : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int anchors = (int)spec.list("mask").size();
        const int classes = (int)spec.get("classes");
        const size_t plane = (size_t)spec.out.h * spec.out.w;
        const float s = (float)spec.get("scale_x_y");
        const bool new_coords = spec.get("new_coords") != 0;
        std::memcpy(ctx.output, ctx.input, sizeof(float) * ctx.batch * spec.out.size());
        const long long blocks = (long long)ctx.batch * anchors;
#pragma omp parallel for schedule(static)
        for (long long blk = 0; blk < blocks; ++blk) {
            float* base = ctx.output + blk * (5 + classes) * plane;
            if (!new_coords) {
                for (size_t i = 0; i < 2 * plane; ++i) base[i] = logistic_activate(base[i]);
                for (size_t i = 4 * plane; i < (size_t)(5 + classes) * plane; ++i) base[i] = logistic_activate(base[i]);
            }
            if (s != 1.f)
                for (size_t i = 0; i < 2 * plane; ++i) base[i] = yolo_scale_xy(base[i], s);
        }
    }
};

}  // namespace

PD_REGISTER_LAYER("yolo", Yolo);

}  // namespace pd
