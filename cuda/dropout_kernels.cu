// [dropout], [cost] and [empty] on the GPU: the identity at inference. The plan makes them views of their input;
// this copy runs only for such a layer at the very start of a network, or with the views switched off.
#include "cuda_layer.cuh"

namespace pd {
namespace {

class CudaIdentity : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void forward(const CudaContext& ctx) override {
        copy_view(ctx.precision, ctx.input, ctx.output, ctx.batch, spec.out.size(), ctx.stream);
    }
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Dropout, CudaIdentity);
PD_REGISTER_CUDA_LAYER(LayerKind::Cost, CudaIdentity);
PD_REGISTER_CUDA_LAYER(LayerKind::Empty, CudaIdentity);

}  // namespace pd
