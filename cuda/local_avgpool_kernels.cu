// [local_avgpool] on the GPU: the in-image average of each window, with [maxpool]'s window pool
// (maxpool_kernels.cu) and geometry (csrc/math/pooling.h).
#include "cuda_layer.cuh"

namespace pd {
namespace {

class CudaLocalAvgpool : public CudaLayer {
public:
    using CudaLayer::CudaLayer;
    void forward(const CudaContext& ctx) override { launch_window_pool(ctx, spec, p_.window, true); }
    const char* untrainable() const override { return nullptr; }
    void backward(const CudaBackwardContext& ctx) override { launch_window_pool_backward(ctx, spec, p_.window, true); }

private:
    const LocalAvgpoolParams p_ = spec.params<LocalAvgpoolParams>();
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::LocalAvgpool, CudaLocalAvgpool);

}  // namespace pd
