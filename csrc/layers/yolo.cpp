// [yolo] forward: what Darknet's layer holds after forward_yolo_layer. Without new_coords, x, y, objectness and
// the class scores go through the logistic (w, h stay raw); with new_coords=1 the previous layer already applied
// it. Then x, y <- x*scale_x_y - (scale_x_y - 1)/2.
//
// Backward is the identity: Darknet's yolo loss (process_batch) produces its delta with respect to the layer's
// *input* (t - sigma is the logistic cross-entropy gradient of the logit; see the reference, section 4.4), and
// backward_yolo_layer adds that delta unchanged to the previous layer's. So the gradient handed to
// Network::backward for a [yolo] layer is dLoss/d(yolo input), and it passes through as is.
#include <cstring>

#include "../core/network.h"
#include "../cpu/train_ops.h"
#include "../cpu/ops.h"
#include "../math/activations.h"
#include "../math/yolo.h"

namespace pd {
namespace {

class Yolo : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        const int anchors = p_.anchors, classes = p_.classes;
        const size_t plane = (size_t)spec.out.h * spec.out.w;
        const float s = p_.scale_x_y;
        const bool new_coords = p_.new_coords;
        std::memcpy(ctx.output, ctx.input, sizeof(float) * ctx.batch * spec.out.size());
        const long long blocks = (long long)ctx.batch * anchors;
#pragma omp parallel for schedule(static)
        for (long long blk = 0; blk < blocks; ++blk) {
            float* base = ctx.output + blk * (5 + classes) * plane;
            if (!new_coords) {
                activate_span(base, 2 * plane, LOGISTIC);
                activate_span(base + 4 * plane, (size_t)(1 + classes) * plane, LOGISTIC);
            }
            if (s != 1.f)
                for (size_t i = 0; i < 2 * plane; ++i) base[i] = yolo_scale_xy(base[i], s);
        }
    }

    void backward(const BackwardContext& ctx) override {
        if (ctx.input_grad) add_into(ctx.input_grad, ctx.output_grad, (size_t)ctx.batch * spec.out.size());
    }

private:
    const YoloParams p_ = spec.params<YoloParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Yolo, Yolo);

}  // namespace pd
