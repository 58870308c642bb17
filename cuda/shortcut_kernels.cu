// [shortcut] on the GPU: one thread per output value, the weights' normalisation from csrc/math/shortcut.h. The
// common case (a convolution, then a shortcut adding one earlier layer) never runs this: the plan folds the add
// into the convolution's epilogue (csrc/core/plan.h).
#include <algorithm>
#include <vector>

#include "cuda_layer.cuh"
#include "math/activations.h"
#include "math/shortcut.h"

namespace pd {
namespace {

constexpr int kMaxFrom = 8;

struct Sources {
    const void* data[kMaxFrom];
    size_t stride[kMaxFrom];
    size_t size[kMaxFrom];
    int count;
};

template <typename T>
__global__ void shortcut_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, size_t outputs,
                                Sources sources, const float* weights, size_t layer_step, size_t step,
                                int normalization, int activation) {
    const size_t total = outputs * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / outputs, i = id % outputs;
        float value = to_float(in[b * in_stride + i]);
        if (!weights) {
            for (int k = 0; k < sources.count; ++k)
                if (i < sources.size[k])
                    value += to_float(static_cast<const T*>(sources.data[k])[b * sources.stride[k] + i]);
        } else {
            const size_t w0 = i / step;
            const ShortcutNormalizer normalizer =
                shortcut_normalizer(weights, w0, layer_step, sources.count + 1, normalization);
            value *= shortcut_weight(weights[w0], normalizer, normalization);
            for (int k = 0; k < sources.count; ++k)
                if (i < sources.size[k])
                    value += to_float(static_cast<const T*>(sources.data[k])[b * sources.stride[k] + i]) *
                             shortcut_weight(weights[w0 + (k + 1) * layer_step], normalizer, normalization);
        }
        out[b * out_stride + i] = from_float<T>(activate(value, activation));
    }
}

class CudaShortcut : public CudaLayer {
public:
    explicit CudaShortcut(const LayerSpec& s) : CudaLayer(s) {
        PD_CHECK(s.inputs.size() <= (size_t)kMaxFrom, "layer ", s.index, ": the CUDA shortcut adds at most ", kMaxFrom,
                 " layers, this one lists ", s.inputs.size());
    }

    void prepare(const PrepareContext& ctx) override {
        if (!p_.weighted) return;
        const TensorRef& w = spec.tensor("weights");
        weights_.upload(ctx.params + w.offset, w.size, ctx.stream);
    }

    void forward(const CudaContext& ctx) override {
        const size_t outputs = spec.out.size();
        Sources sources{};
        sources.count = (int)spec.inputs.size();
        for (int k = 0; k < sources.count; ++k) {
            sources.data[k] = ctx.view(spec.inputs[k]).data;
            sources.stride[k] = ctx.view(spec.inputs[k]).stride;
            sources.size[k] = ctx.spec_of(spec.inputs[k]).out.size();
        }
        const bool weighted = p_.weighted;
        const size_t layer_step = weighted ? spec.tensor("weights").size / (sources.count + 1) : 1;
        const size_t step = outputs / layer_step;
        const int normalization = p_.normalization;
        const int activation = p_.activation;
        const bool fuse_activation = !is_channel_activation(activation);
        const size_t total = outputs * ctx.batch;
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, shortcut_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, outputs, sources,
                weighted ? weights_.data() : nullptr, layer_step, step, normalization,
                fuse_activation ? activation : LINEAR);
            PD_CUDA_CHECK_LAUNCH();
        });
        if (!fuse_activation)
            activate_view(ctx.precision, ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w, activation,
                          ctx.stream);
    }

    const char* untrainable() const override {
        if (p_.weighted) return "weighted [shortcut] layers have no backward pass on the GPU yet";
        if (is_channel_activation(p_.activation))
            return "the normalize_channels activations have no backward pass on the GPU yet";
        return nullptr;
    }

    // The gradient goes through the activation (its input recomputed when the gradient needs it) and then, unchanged,
    // to the input and to the overlapping prefix of every source, as the CPU's Shortcut::backward without weights.
    void backward(const CudaBackwardContext& ctx) override {
        const size_t outputs = spec.out.size(), total = outputs * ctx.batch;
        const int activation = p_.activation;
        const float* pre = nullptr;
        if (activation_needs_input(activation)) {
            Sources sources{};
            sources.count = (int)spec.inputs.size();
            for (int k = 0; k < sources.count; ++k) {
                sources.data[k] = ctx.output_of(spec.inputs[k]);
                sources.size[k] = sources.stride[k] = ctx.spec_of(spec.inputs[k]).out.size();
            }
            pre_activation_.resize(total);
            PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, shortcut_kernel<float>)(
                ctx.input, outputs, pre_activation_.data(), outputs, ctx.batch, outputs, sources, nullptr, 1, outputs,
                0, LINEAR);
            PD_CUDA_CHECK_LAUNCH();
            pre = pre_activation_.data();
        }
        activation_gradient(ctx.output_grad, ctx.output, pre, total, activation, ctx.stream);
        if (ctx.input_grad)
            add_strided(ctx.input_grad, outputs, ctx.output_grad, outputs, ctx.batch, outputs, ctx.stream);
        for (int ref : spec.inputs) {
            float* dst = ctx.grad_of(ref);
            if (!dst) continue;
            const size_t size = ctx.spec_of(ref).out.size();
            add_strided(dst, size, ctx.output_grad, outputs, ctx.batch, std::min(size, outputs), ctx.stream);
        }
    }

private:
    const ShortcutParams p_ = spec.params<ShortcutParams>();
    DeviceArray<float> weights_;
    DeviceArray<float> pre_activation_;  // backward's recomputed pre-activation values
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Shortcut, CudaShortcut);

}  // namespace pd
