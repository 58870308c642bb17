// [connected] on the GPU: one thread per (image, output) computes its dot product in order, with the weights
// batch-norm-folded as the CPU layer folds them; then bias and activation (simple rather than fast: none of the
// detection networks has this layer). Training (float32 storage): the raw weights, batch-norm on the batch
// statistics, and the three products (forward, weight and input gradients) on the training GEMM
// (cuda/train_gemm.cuh), which in mixed precision (FP16/BF16) rounds their operands and sums in float32.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/ops.h"
#include "cuda_layer.cuh"
#include "train_gemm.cuh"
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

// The three training products as problems of the training GEMM (cuda/train_gemm.cuh); n walks the images.

// Forward: out[b][o] = sum over i of W[o][i] x[b][i] + bias[o], the raw weights.
struct ConnectedForwardProblem {
    const float* input;
    const float* weights;
    const float* bias;
    float* output;
    int M;  // outputs
    long long N, K;
    int groups;

    using Column = long long;  // the image
    __device__ Column column(int, long long n) const { return n; }
    __device__ float a(int, int m, long long k) const { return weights[m * K + k]; }
    __device__ float b(int, Column image, long long k) const { return input[image * K + k]; }
    __device__ void store(int, int m, long long n, float value) const { output[n * M + m] = value + bias[m]; }
};

// dLoss/dW[o][i] += sum over the images of g[b][o] x[b][i].
struct ConnectedWeightGradProblem {
    const float* grad;
    const float* input;
    float* grad_weights;
    int M;           // outputs
    long long N, K;  // inputs, images
    int groups;

    using Column = long long;  // the input
    __device__ Column column(int, long long n) const { return n; }
    __device__ float a(int, int m, long long image) const { return grad[image * M + m]; }
    __device__ float b(int, Column i, long long image) const { return input[image * N + i]; }
    __device__ void store(int, int m, long long n, float value) const { grad_weights[m * N + n] += value; }
};

// dLoss/dx[b][i] += sum over the outputs of W[o][i] g[b][o].
struct ConnectedInputGradProblem {
    const float* weights;
    const float* grad;
    float* input_grad;
    int M;           // inputs
    long long N, K;  // images, outputs
    int groups;

    using Column = long long;  // the image
    __device__ Column column(int, long long n) const { return n; }
    __device__ float a(int, int m, long long o) const { return weights[o * M + m]; }
    __device__ float b(int, Column image, long long o) const { return grad[image * K + o]; }
    __device__ void store(int, int m, long long n, float value) const { input_grad[n * M + m] += value; }
};

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
        simt_only_ = ctx.conv_algorithm == ConvAlgorithm::SIMT;
        split_k_ = ctx.split_k;
        sm_count_ = ctx.sm_count;
        precision_ = ctx.precision;
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
        const ConnectedForwardProblem problem{ctx.input.as<float>(),
                                              ctx.params + spec.tensor("weights").offset,
                                              bn ? zero_biases_.data() : biases,
                                              ctx.output.as<float>(),
                                              outputs,
                                              ctx.batch,
                                              inputs,
                                              1};
        launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
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
            launch_channel_sums(grad, ctx.batch, outputs, 1, grad_biases, ctx.stream);
        }
        const float* weights = ctx.params + spec.tensor("weights").offset;
        if (ctx.weight_grads) {
            const ConnectedWeightGradProblem problem{
                grad, ctx.input, ctx.grads + spec.tensor("weights").offset, outputs, inputs, ctx.batch, 1};
            launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
        }
        if (!ctx.input_grad) return;
        const ConnectedInputGradProblem problem{weights, grad, ctx.input_grad, inputs, ctx.batch, outputs, 1};
        launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
    }

    size_t train_workspace_bytes(int batch) const override {
        const int outputs = spec.out.c, inputs = (int)spec.in.size();
        const ConnectedForwardProblem forward{nullptr, nullptr, nullptr, nullptr, outputs, batch, inputs, 1};
        const ConnectedWeightGradProblem weights{nullptr, nullptr, nullptr, outputs, inputs, batch, 1};
        const ConnectedInputGradProblem input{nullptr, nullptr, nullptr, inputs, batch, outputs, 1};
        return std::max({train_gemm_workspace(forward, plan(forward, precision_)),
                         train_gemm_workspace(weights, plan(weights, precision_)),
                         train_gemm_workspace(input, plan(input, precision_))});
    }

private:
    const ConnectedParams p_ = spec.params<ConnectedParams>();
    DeviceArray<float> weights_, bias_;
    // Training state of the last forward_train.
    DeviceArray<float> xhat_, pre_activation_, zero_biases_;
    DeviceArray<double> inv_std_;
    // The training GEMMs' choices, from prepare(): the SIMT kernel asked for, split-K, the GPU's size.
    bool simt_only_ = false;
    int split_k_ = 0, sm_count_ = 1;
    Precision precision_ = Precision::FP32;

    template <class P>
    GemmPlan plan(const P& problem, Precision operands) const {
        return plan_train_gemm(problem, operands, simt_only_, split_k_, sm_count_);
    }
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Connected, CudaConnected);

}  // namespace pd
