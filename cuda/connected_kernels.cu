// [connected] on the GPU: one thread per (image, output) computes its dot product in order, with the weights
// batch-norm-folded as the CPU layer folds them; then bias and activation. Training (float32): the raw weights,
// batch-norm on the batch statistics, and direct backward kernels (one thread per weight, per input value).
// Simple rather than fast: none of the detection networks has this layer. Mixed precision (`op`, FP16/BF16) rounds
// the multiplied operands of the training products to that type, sums in float32 (csrc/math/amp.h).
#include <cstring>
#include <vector>

#include "cpu/ops.h"
#include "cuda_layer.cuh"
#include "math/activations.h"
#include "math/amp.h"

namespace pd {
namespace {

template <typename T>
__global__ void connected_kernel(const T* in, size_t in_stride, T* out, size_t out_stride, int batch, int inputs,
                                 int outputs, const float* weights, const float* bias, int activation) {
    const size_t total = (size_t)batch * outputs;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / outputs, o = id % outputs;
        const T* x = in + b * in_stride;
        const float* w = weights + o * inputs;
        float sum = 0.f;
        for (int i = 0; i < inputs; ++i) sum = fmaf(w[i], to_float(x[i]), sum);
        out[b * out_stride + o] = from_float<T>(activate(sum + bias[o], activation));
    }
}

// ----- training (float32) -----

// The training forward: W x + b with the raw weights, one thread per (image, output), operands rounded to `op`.
__global__ void connected_train_forward_kernel(const float* in, float* out, int batch, int inputs, int outputs,
                                               const float* weights, const float* bias, Precision op) {
    const size_t total = (size_t)batch * outputs;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / outputs, o = id % outputs;
        const float* x = in + b * inputs;
        const float* w = weights + o * inputs;
        float sum = 0.f;
        for (int i = 0; i < inputs; ++i) sum = fmaf(round_to(op, w[i]), round_to(op, x[i]), sum);
        out[id] = sum + bias[o];
    }
}

// Backward: dLoss/dbias, one thread per output, summed over the images in double (the CPU's order).
__global__ void connected_bias_grad_kernel(const float* grad, float* grad_biases, int batch, int outputs) {
    for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < outputs; o += gridDim.x * blockDim.x) {
        double sum = 0.0;
        for (int b = 0; b < batch; ++b) sum += grad[(size_t)b * outputs + o];
        grad_biases[o] += (float)sum;
    }
}

// dLoss/dW[o][i] += g[b][o] * x[b][i] image after image, one thread per weight (the CPU's rank-1 updates).
__global__ void connected_weight_grad_kernel(const float* grad, const float* input, float* grad_weights, int batch,
                                             int inputs, int outputs, Precision op) {
    const size_t total = (size_t)outputs * inputs;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t o = id / inputs, i = id % inputs;
        float sum = grad_weights[id];
        for (int b = 0; b < batch; ++b)
            sum += round_to(op, grad[(size_t)b * outputs + o]) * round_to(op, input[(size_t)b * inputs + i]);
        grad_weights[id] = sum;
    }
}

// dLoss/dx[b][i] += sum over outputs of g[b][o] * W[o][i], one thread per input value.
__global__ void connected_input_grad_kernel(const float* grad, const float* weights, float* in_grad, int batch,
                                            int inputs, int outputs, Precision op) {
    const size_t total = (size_t)batch * inputs;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / inputs, i = id % inputs;
        const float* g = grad + b * outputs;
        float sum = 0.f;
        for (int o = 0; o < outputs; ++o) sum += round_to(op, g[o]) * round_to(op, weights[(size_t)o * inputs + i]);
        in_grad[id] += sum;
    }
}

class CudaConnected : public CudaLayer {
public:
    using CudaLayer::CudaLayer;

    void prepare(const PrepareContext& ctx) override {
        const int outputs = spec.out.c;
        const size_t inputs = spec.in.size();
        const float* w = ctx.params + spec.tensor("weights").offset;
        const float* b = ctx.params + spec.tensor("biases").offset;
        std::vector<float> weights(w, w + (size_t)outputs * inputs), bias(b, b + outputs);
        if (p_.batch_normalize != 0) {
            std::vector<double> factor(outputs);
            batchnorm_factors(b, ctx.params + spec.tensor("scales").offset,
                              ctx.params + spec.tensor("rolling_mean").offset,
                              ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, outputs,
                              factor.data(), bias.data());
            for (int o = 0; o < outputs; ++o)
                for (size_t i = 0; i < inputs; ++i)
                    weights[o * inputs + i] = (float)(weights[o * inputs + i] * factor[o]);
        }
        weights_.upload(weights.data(), weights.size(), ctx.stream);
        bias_.upload(bias.data(), bias.size(), ctx.stream);
    }

    void forward(const CudaContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const int activation = p_.activation;
        const bool fuse_activation = !is_channel_activation(activation);
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            PD_LAUNCH(grid_for((size_t)ctx.batch * outputs, 128), 128, 0, ctx.stream, connected_kernel<T>)(
                ctx.input.as<T>(), ctx.input.stride, ctx.output.as<T>(), ctx.output.stride, ctx.batch, inputs, outputs,
                weights_.data(), bias_.data(), fuse_activation ? activation : LINEAR);
            PD_CUDA_CHECK_LAUNCH();
        });
        if (!fuse_activation) activate_view(ctx.precision, ctx.output, ctx.batch, outputs, 1, activation, ctx.stream);
    }

    const char* untrainable() const override {
        if (p_.batch_normalize == 2) return "cross-iteration batch normalisation (cbn) is not supported in training";
        return nullptr;
    }

    // As the CPU's: W x (+ b without batch-norm) with the raw parameters, batch-norm on the batch statistics, the
    // value before the activation kept when its gradient needs it, then the activation.
    void forward_train(const CudaTrainContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const size_t total = (size_t)ctx.batch * outputs;
        const bool bn = p_.batch_normalize != 0;
        const float* biases = ctx.params + spec.tensor("biases").offset;
        if (bn && zero_biases_.size() != (size_t)outputs) {
            zero_biases_.resize(outputs);
            PD_CUDA_CHECK(cudaMemsetAsync(zero_biases_.data(), 0, outputs * sizeof(float), ctx.stream));
        }
        PD_LAUNCH(grid_for(total, 128), 128, 0, ctx.stream, connected_train_forward_kernel)(
            ctx.input.as<float>(), ctx.output.as<float>(), ctx.batch, inputs, outputs,
            ctx.params + spec.tensor("weights").offset, bn ? zero_biases_.data() : biases, ctx.operands);
        PD_CUDA_CHECK_LAUNCH();
        if (bn) {
            PD_CHECK(ctx.batch > 1, "layer ", spec.index,
                     ": batch normalisation in training needs more than one value per channel (batch ", ctx.batch,
                     " x 1 positions); use a larger batch");
            xhat_.resize(total);
            inv_std_.resize(outputs);
            launch_batchnorm_train(
                ctx.output.as<float>(), xhat_.data(), nullptr, inv_std_.data(), ctx.batch, outputs, 1,
                ctx.params + spec.tensor("scales").offset, biases, ctx.params + spec.tensor("rolling_mean").offset,
                ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, LINEAR, spec.index, ctx.stream);
        }
        if (activation_needs_input(p_.activation)) {
            pre_activation_.resize(total);
            PD_CUDA_CHECK(cudaMemcpyAsync(pre_activation_.data(), ctx.output.data, total * sizeof(float),
                                          cudaMemcpyDeviceToDevice, ctx.stream));
        }
        activate_view(Precision::FP32, ctx.output, ctx.batch, outputs, 1, p_.activation, ctx.stream);
    }

    void backward(const CudaBackwardContext& ctx) override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        float* grad = ctx.output_grad;
        layer_activation_gradient(grad, ctx.output,
                                  activation_needs_input(p_.activation) ? pre_activation_.data() : nullptr, ctx.batch,
                                  outputs, 1, p_.activation, ctx.stream);
        float* grad_biases = ctx.grads + spec.tensor("biases").offset;
        if (p_.batch_normalize != 0) {
            launch_batchnorm_backward(grad, nullptr, nullptr, xhat_.data(), inv_std_.data(), ctx.batch, outputs, 1,
                                      ctx.params + spec.tensor("scales").offset,
                                      ctx.grads + spec.tensor("scales").offset, grad_biases, LINEAR, spec.index,
                                      ctx.stream);
        } else {
            PD_LAUNCH(grid_for(outputs, 128), 128, 0, ctx.stream, connected_bias_grad_kernel)(grad, grad_biases,
                                                                                              ctx.batch, outputs);
            PD_CUDA_CHECK_LAUNCH();
        }
        const float* weights = ctx.params + spec.tensor("weights").offset;
        if (ctx.weight_grads) {
            PD_LAUNCH(grid_for((size_t)outputs * inputs, 128), 128, 0, ctx.stream, connected_weight_grad_kernel)(
                grad, ctx.input, ctx.grads + spec.tensor("weights").offset, ctx.batch, inputs, outputs, ctx.operands);
            PD_CUDA_CHECK_LAUNCH();
        }
        if (!ctx.input_grad) return;
        PD_LAUNCH(grid_for((size_t)ctx.batch * inputs, 128), 128, 0, ctx.stream, connected_input_grad_kernel)(
            grad, weights, ctx.input_grad, ctx.batch, inputs, outputs, ctx.operands);
        PD_CUDA_CHECK_LAUNCH();
    }

private:
    const ConnectedParams p_ = spec.params<ConnectedParams>();
    DeviceArray<float> weights_, bias_;
    // Training state of the last forward_train.
    DeviceArray<float> xhat_, pre_activation_, zero_biases_;
    DeviceArray<double> inv_std_;
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Connected, CudaConnected);

}  // namespace pd
