// [dropout] and the other layers that are the identity at inference ([cost], [empty]/[silence]).
//
// In training, dropout zeroes each value with probability p and scales the others by 1 / (1 - p), as Darknet's
// forward_dropout_layer. The random draw is counter_uniform(seed, iteration, layer, element) (math/random.h), so
// backward recomputes the same mask and equal (seed, iteration) give equal masks. [cost] and [empty] pass the
// gradient through: the gradient handed to a [cost] layer is already the loss gradient of its input.
#include <cstring>

#include "../core/network.h"
#include "../cpu/train_ops.h"
#include "../math/random.h"

namespace pd {
namespace {

class Identity : public Layer {
public:
    using Layer::Layer;

    void forward(const ForwardContext& ctx) override {
        std::memcpy(ctx.output, ctx.input, sizeof(float) * ctx.batch * spec.out.size());
    }

    void backward(const BackwardContext& ctx) override {
        if (ctx.input_grad) add_into(ctx.input_grad, ctx.output_grad, (size_t)ctx.batch * spec.out.size());
    }
};

class Dropout : public Identity {
public:
    using Identity::Identity;

    void forward_train(const TrainContext& ctx) override {
        const float p = probability();
        const float scale = 1.f / (1.f - p);
        const long long total = (long long)ctx.batch * spec.out.size();
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i)
            ctx.output[i] = dropped(ctx.seed, ctx.iteration, i, p) ? 0.f : ctx.input[i] * scale;
    }

    void backward(const BackwardContext& ctx) override {
        if (!ctx.input_grad) return;
        const float p = probability();
        const float scale = 1.f / (1.f - p);
        const long long total = (long long)ctx.batch * spec.out.size();
#pragma omp parallel for schedule(static) if (total > 65536)
        for (long long i = 0; i < total; ++i)
            if (!dropped(ctx.seed, ctx.iteration, i, p)) ctx.input_grad[i] += ctx.output_grad[i] * scale;
    }

private:
    float probability() const {
        PD_CHECK(!p_.dropblock, "layer ", spec.index, ": dropblock is not supported in training");
        const double p = p_.probability;
        PD_CHECK(p >= 0 && p < 1, "layer ", spec.index, ": dropout probability ", p, " must be in [0, 1) for training");
        return (float)p;
    }

    bool dropped(unsigned long long seed, long long iteration, long long element, float p) const {
        return counter_uniform(seed, (uint64_t)iteration, (uint64_t)spec.index, (uint64_t)element) < p;
    }

    const DropoutParams p_ = spec.params<DropoutParams>();
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Dropout, Dropout);
PD_REGISTER_LAYER(LayerKind::Cost, Identity);
PD_REGISTER_LAYER(LayerKind::Empty, Identity);

}  // namespace pd
