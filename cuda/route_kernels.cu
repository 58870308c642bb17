// [route] on the GPU. Usually no kernel runs: the activation plan makes a sliced or single route a view of its
// input and has the layers of a concatenation write into the route's output directly (csrc/core/plan.h). This
// copy runs when that is not possible (a layer listed twice, or already placed elsewhere; groups > 1 over
// several layers), and when the views are switched off.
#include "cuda_layer.cuh"

namespace pd {
namespace {

class CudaRoute : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        const int groups = p_.groups, group_id = p_.group_id;
        size_t offset = 0;
        for (int ref : spec.inputs) {
            const size_t part = ctx.spec_of(ref).out.size() / groups;
            copy_view(ctx.precision, shifted(ctx.view(ref), part * group_id, ctx.precision),
                      shifted(ctx.output, offset, ctx.precision), ctx.batch, part, ctx.stream);
            offset += part;
        }
    }

    const char* untrainable() const override { return nullptr; }

    // Each slice of the output gradient goes back to the slice of the layer it was copied from.
    void backward(const CudaBackwardContext& ctx) override {
        const int groups = p_.groups, group_id = p_.group_id;
        const size_t out_size = spec.out.size();
        size_t offset = 0;
        for (int ref : spec.inputs) {
            const size_t in_size = ctx.spec_of(ref).out.size(), part = in_size / groups;
            if (float* dst = ctx.grad_of(ref))
                add_strided(dst + part * group_id, in_size, ctx.output_grad + offset, out_size, ctx.batch, part,
                            ctx.stream);
            offset += part;
        }
    }

private:
    const RouteParams p_ = spec.params<RouteParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Route, CudaRoute);

}  // namespace pd
