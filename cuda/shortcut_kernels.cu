// [shortcut] on the GPU: one thread per output value, the weights' normalisation from csrc/math/shortcut.h. The
// common case (a convolution, then a shortcut adding one earlier layer) never runs this: the plan folds the add
// into the convolution's epilogue (csrc/core/plan.h).
#include <algorithm>
#include <vector>

#include "cuda_layer.cuh"
#include "math/activations.h"
#include "math/shortcut.h"
#include "reduce.cuh"

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

// Training (float32). The gradient of one target (`which` 0: the input, k + 1: the k-th `from` layer, `size`
// values per image, of which the first min(size, outputs) met the sum): grad times its normalised weight, one
// thread per output value.
__global__ void shortcut_source_grad_kernel(const float* grad, float* dst, int batch, size_t outputs, size_t size,
                                            const float* weights, size_t layer_step, size_t step, int count, int which,
                                            int normalization) {
    const size_t total = outputs * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / outputs, i = id % outputs;
        if (i >= size) continue;
        const size_t w0 = i / step;
        const ShortcutNormalizer normalizer = shortcut_normalizer(weights, w0, layer_step, count, normalization);
        dst[b * size + i] += grad[id] * shortcut_weight(weights[w0 + which * layer_step], normalizer, normalization);
    }
}

// The weights' gradient of weight group w0 (its `step` outputs of every image): dLoss/d(normalised weight k) =
// sum of grad x source k over the group's values, in double, in the fixed order of launch_segment_sums
// (cuda/reduce.cuh: one segment per group, batch x step values; per_feature is one group of the whole batch), then
// through the normalisation (csrc/math/shortcut.h, shared with the CPU).
struct WeightGradientTerms {
    const float *grad, *input;
    Sources sources;
    size_t outputs, layer_step, step;
    __device__ void operator()(size_t w0, size_t j, double* d) const {
        const size_t b = j / step, i = w0 * step + j % step, at = b * outputs + i;
        const double g = grad[at];
        d[0] += g * input[at];
        for (int k = 0; k < sources.count; ++k)
            if (i < sources.size[k])
                d[k + 1] += g * static_cast<const float*>(sources.data[k])[b * sources.size[k] + i];
    }
};

struct WeightGradient {
    const float* weights;
    size_t layer_step;
    int count, normalization;
    float* grad_weights;
    __device__ void operator()(size_t w0, const double* d) const {
        float nw[kMaxFrom + 1];
        const ShortcutNormalizer normalizer = shortcut_normalizer(weights, w0, layer_step, count, normalization);
        for (int k = 0; k < count; ++k)
            nw[k] = shortcut_weight(weights[w0 + k * layer_step], normalizer, normalization);
        shortcut_weight_gradient(d, nw, weights, w0, layer_step, count, normalization, grad_weights);
    }
};

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

    const char* untrainable() const override { return nullptr; }

    // The weighted sum with the weights of the device parameters (inference reads the prepared copy), the value
    // before the activation kept when its gradient needs it.
    void forward_train(const CudaTrainContext& ctx) override {
        const size_t outputs = spec.out.size(), total = outputs * ctx.batch;
        const int activation = p_.activation;
        const bool elementwise = !is_channel_activation(activation);
        const Sources sources = train_sources(ctx, [&](int ref) { return ctx.view(ref).data; });
        const float* weights = p_.weighted ? ctx.params + spec.tensor("weights").offset : nullptr;
        float* pre = nullptr;
        if (activation_needs_input(activation)) {
            pre_activation_.resize(total);
            pre = pre_activation_.data();
            launch_sum(ctx.input.as<float>(), pre, ctx.batch, sources, weights, LINEAR, ctx.stream);
        }
        launch_sum(ctx.input.as<float>(), ctx.output.as<float>(), ctx.batch, sources, weights,
                   elementwise ? activation : (int)LINEAR, ctx.stream);
        if (!elementwise)
            activate_view(Precision::FP32, ctx.output, ctx.batch, spec.out.c, (size_t)spec.out.h * spec.out.w,
                          activation, ctx.stream);
    }

    // The gradient goes through the activation, then to the input and to the overlapping prefix of every source,
    // times its normalised weight (1 without weights); the weights get the sums of gradient x source through
    // their normalisation (csrc/math/shortcut.h), as the CPU's Shortcut::backward.
    void backward(const CudaBackwardContext& ctx) override {
        const size_t outputs = spec.out.size(), total = outputs * ctx.batch;
        const int activation = p_.activation;
        layer_activation_gradient(ctx.output_grad, ctx.output,
                                  activation_needs_input(activation) ? pre_activation_.data() : nullptr, ctx.batch,
                                  spec.out.c, (size_t)spec.out.h * spec.out.w, activation, ctx.stream);
        if (!p_.weighted) {
            if (ctx.input_grad)
                add_strided(ctx.input_grad, outputs, ctx.output_grad, outputs, ctx.batch, outputs, ctx.stream);
            for (int ref : spec.inputs) {
                float* dst = ctx.grad_of(ref);
                if (!dst) continue;
                const size_t size = ctx.spec_of(ref).out.size();
                add_strided(dst, size, ctx.output_grad, outputs, ctx.batch, std::min(size, outputs), ctx.stream);
            }
            return;
        }
        const int count = (int)spec.inputs.size() + 1;
        const size_t layer_step = spec.tensor("weights").size / count, step = outputs / layer_step;
        const float* weights = ctx.params + spec.tensor("weights").offset;
        // One target at a time (source -1 is the input), in the CPU's order: targets may be one buffer.
        for (int k = -1; k < count - 1; ++k) {
            float* dst = k < 0 ? ctx.input_grad : ctx.grad_of(spec.inputs[k]);
            if (!dst) continue;
            const size_t size = k < 0 ? outputs : ctx.spec_of(spec.inputs[k]).out.size();
            PD_LAUNCH(grid_for(total, 256), 256, 0, ctx.stream, shortcut_source_grad_kernel)(
                ctx.output_grad, dst, ctx.batch, outputs, size, weights, layer_step, step, count, k + 1,
                p_.normalization);
            PD_CUDA_CHECK_LAUNCH();
        }
        if (!ctx.weight_grads) return;
        const Sources sources = train_sources(ctx, [&](int ref) { return ctx.output_of(ref); });
        launch_segment_sums<kMaxFrom + 1>(
            layer_step, (size_t)ctx.batch * step,
            WeightGradientTerms{ctx.output_grad, ctx.input, sources, outputs, layer_step, step},
            WeightGradient{weights, layer_step, count, p_.normalization, ctx.grads + spec.tensor("weights").offset},
            ctx.stream);
    }

private:
    // The `from` layers' training outputs (float32, one image after another).
    template <typename Context, typename Data>
    Sources train_sources(const Context& ctx, const Data& data) const {
        Sources sources{};
        sources.count = (int)spec.inputs.size();
        for (int k = 0; k < sources.count; ++k) {
            sources.data[k] = data(spec.inputs[k]);
            sources.size[k] = sources.stride[k] = ctx.spec_of(spec.inputs[k]).out.size();
        }
        return sources;
    }

    // out = activation(the weighted sum), float32 training buffers; weights null: all 1.
    void launch_sum(const float* in, float* out, int batch, const Sources& sources, const float* weights,
                    int activation, cudaStream_t stream) const {
        const size_t outputs = spec.out.size();
        const size_t layer_step = weights ? spec.tensor("weights").size / (sources.count + 1) : 1;
        PD_LAUNCH(grid_for(outputs * batch, 256), 256, 0, stream, shortcut_kernel<float>)(
            in, outputs, out, outputs, batch, outputs, sources, weights, layer_step, outputs / layer_step,
            p_.normalization, activation);
        PD_CUDA_CHECK_LAUNCH();
    }

    const ShortcutParams p_ = spec.params<ShortcutParams>();
    DeviceArray<float> weights_;
    DeviceArray<float> pre_activation_;  // the training forward's values before the activation, when needed
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Shortcut, CudaShortcut);

}  // namespace pd
