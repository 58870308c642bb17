// [sam] on the GPU: the element-wise product of the input and the `from` layer, then the activation, with the
// product kernel of [scale_channels] (scale_channels_kernels.cu), and its backward.
#include "cuda_layer.cuh"

namespace pd {
namespace {

class CudaSam : public CudaLayer {
public:
    using CudaLayer::CudaLayer;
    void forward(const CudaContext& ctx) override { launch_product(ctx, spec, ProductFactor::SAME, p_.activation); }
    const char* untrainable() const override { return nullptr; }
    void backward(const CudaBackwardContext& ctx) override {
        launch_product_backward(ctx, spec, ProductFactor::SAME, p_.activation);
    }

private:
    const SamParams p_ = spec.params<SamParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Sam, CudaSam);

}  // namespace pd
