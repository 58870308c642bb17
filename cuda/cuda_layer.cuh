// The CUDA side of a layer: device parameters derived from the host buffer, and a forward pass that reads and
// writes views of the activation arena. Each <name>_kernels.cu defines the kernels and the layer class of the
// type whose CPU layer is csrc/layers/<name>.cpp, reads the same parsed options (csrc/layers/params.h) and
// registers itself by LayerKind.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.cuh"
#include "core/layer.h"

namespace pd {

// One layer's output on the device: image b's values start at data + b * stride (elements of the precision's
// type). Views need not be aligned beyond their element size: a view can start inside another layer's storage.
struct DeviceView {
    void* data = nullptr;
    size_t stride = 0;

    template <typename T>
    T* as() const {
        return static_cast<T*>(data);
    }
    explicit operator bool() const { return data != nullptr; }
};

// The view `elements` values further on (same image stride).
inline DeviceView shifted(const DeviceView& view, size_t elements, Precision precision) {
    return DeviceView{static_cast<char*>(view.data) + elements * precision_bytes(precision), view.stride};
}

// A device allocation owned by one object; reallocates only when the size changes.
template <typename T>
class DeviceArray {
public:
    DeviceArray() = default;
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    ~DeviceArray() { release(); }

    void resize(size_t count) {
        if (count == count_ && data_) return;
        release();
        PD_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), (count ? count : 1) * sizeof(T)));
        count_ = count;
    }
    // Copies `count` host values in and waits, so `host` may be a temporary.
    void upload(const T* host, size_t count, cudaStream_t stream) {
        resize(count);
        if (count == 0) return;
        PD_CUDA_CHECK(cudaMemcpyAsync(data_, host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
        PD_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    void release() {
        if (data_) cudaFree(data_);
        data_ = nullptr;
        count_ = 0;
    }
    T* data() const { return data_; }
    size_t size() const { return count_; }

private:
    T* data_ = nullptr;
    size_t count_ = 0;
};

// What a layer needs to derive its device parameters.
struct PrepareContext {
    const float* params = nullptr;  // the host network's flat parameter buffer
    float bn_epsilon = 1e-5f;
    Precision precision = Precision::FP32;
    ConvAlgorithm conv_algorithm = ConvAlgorithm::AUTO;
    int split_k = 0;   // CudaNetwork::split_k
    int sm_count = 1;  // multiprocessors of the GPU
    cudaStream_t stream = nullptr;
};

// What a forward pass needs besides the layer's own spec.
struct CudaContext {
    int batch = 1;
    Precision precision = Precision::FP32;
    DeviceView input;                                      // the previous layer's output (or the network input)
    DeviceView output;                                     // this layer's output
    const std::vector<DeviceView>* views = nullptr;        // every layer's output, for layers that read earlier ones
    const std::vector<const LayerSpec*>* specs = nullptr;  // every layer's spec
    // A convolution with a folded shortcut: add `residual` after the activation, then apply residual_activation.
    DeviceView residual;
    int residual_activation = 0;
    void* workspace = nullptr;  // scratch shared by all layers, the largest workspace_bytes() long
    cudaStream_t stream = nullptr;

    const DeviceView& view(int layer) const { return (*views)[layer]; }
    const LayerSpec& spec_of(int layer) const { return *(*specs)[layer]; }
};

// A forward pass in training mode (float32 storage): the views are every layer's training output (contiguous, stride
// out.size()); the parameters are the device copy of the flat buffer; random decisions are keyed like the CPU's.
struct CudaTrainContext : CudaContext {
    float* params = nullptr;  // writable: batch-norm moves its rolling statistics
    float bn_epsilon = 1e-5f;
    unsigned long long seed = 0;
    long long iteration = 0;
    // Mixed precision (csrc/math/amp.h): FP16/BF16 rounds the operands of the convolution and [connected]
    // products to that type (sums in float32); everything else and all storage stay float32.
    Precision operands = Precision::FP32;
};

// A backward pass through one layer on the device, as the CPU's BackwardContext (csrc/core/layer.h): layers add
// (+=) into input_grad, into the gradient buffers of the layers they read, and into grads (laid out like params).
struct CudaBackwardContext {
    int batch = 1;
    const float* input = nullptr;   // this layer's input in the training forward
    const float* output = nullptr;  // this layer's output in the training forward
    float* output_grad = nullptr;   // dLoss/dOutput; the layer may overwrite it
    float* input_grad = nullptr;    // += dLoss/dInput, or null when no earlier layer needs it
    const float* params = nullptr;
    float* grads = nullptr;
    bool weight_grads = true;
    unsigned long long seed = 0;
    long long iteration = 0;
    Precision operands = Precision::FP32;               // as CudaTrainContext::operands
    void* workspace = nullptr;                          // as CudaContext::workspace, train_workspace_bytes() long
    const std::vector<float*>* outputs = nullptr;       // every layer's training output
    const std::vector<float*>* grad_buffers = nullptr;  // every layer's output gradient (null: none flows there)
    const std::vector<const LayerSpec*>* specs = nullptr;
    cudaStream_t stream = nullptr;

    const float* output_of(int layer) const { return (*outputs)[layer]; }
    float* grad_of(int layer) const { return (*grad_buffers)[layer]; }
    const LayerSpec& spec_of(int layer) const { return *(*specs)[layer]; }
};

class CudaLayer {
public:
    explicit CudaLayer(const LayerSpec& spec) : spec(spec) {}
    virtual ~CudaLayer() = default;

    // Called before a forward pass whenever the parameters, the precision or the convolution algorithm changed.
    virtual void prepare(const PrepareContext& ctx) { (void)ctx; }
    virtual void forward(const CudaContext& ctx) = 0;
    // Scratch bytes a forward pass of `batch` images needs (after prepare()).
    virtual size_t workspace_bytes(int batch) const {
        (void)batch;
        return 0;
    }

    // Training. untrainable() says why this layer cannot train on the device (null when it can); only then are
    // forward_train (by default the inference forward on float32 training views) and backward called.
    virtual const char* untrainable() const { return "its backward pass is not implemented on the GPU yet"; }
    virtual void forward_train(const CudaTrainContext& ctx) { forward(ctx); }
    virtual void backward(const CudaBackwardContext& ctx);
    // Scratch bytes forward_train and backward of `batch` images need (after prepare()): the shared workspace.
    virtual size_t train_workspace_bytes(int batch) const {
        (void)batch;
        return 0;
    }

    const LayerSpec spec;
};

using CudaLayerFactory = std::function<std::unique_ptr<CudaLayer>(const LayerSpec&)>;

std::map<LayerKind, CudaLayerFactory>& cuda_layer_registry();

struct CudaLayerRegistration {
    CudaLayerRegistration(LayerKind kind, CudaLayerFactory factory) {
        cuda_layer_registry()[kind] = std::move(factory);
    }
};

#define PD_REGISTER_CUDA_LAYER(kind, cls)                                          \
    static ::pd::CudaLayerRegistration PD_CONCAT(pd_cuda_registration_, __LINE__)( \
        kind, [](const ::pd::LayerSpec& s) { return std::unique_ptr<::pd::CudaLayer>(new cls(s)); })

// Kernels shared by several layers (activation_kernels.cu, copy_kernels.cu, and the launchers below).

// Applies `activation` in place to `batch` images of `channels` x `spatial` values starting at view.data; the
// normalize_channels family normalises across channels per pixel, the others are element-wise.
void activate_view(Precision precision, const DeviceView& view, int batch, int channels, size_t spatial, int activation,
                   cudaStream_t stream);
// Copies `count` values per image between views of the same precision.
void copy_view(Precision precision, const DeviceView& from, const DeviceView& to, int batch, size_t count,
               cudaStream_t stream);
// float32 -> the precision's type, `count` contiguous values.
void convert_from_float(Precision precision, const float* from, void* to, size_t count, cudaStream_t stream);
// A view's `count` values per image -> contiguous float32 (batch * count values).
void convert_to_float(Precision precision, const DeviceView& from, int batch, size_t count, float* to,
                      cudaStream_t stream);

// Training helpers (train_kernels.cu), float32.
// to[b * to_stride + i] += from[b * from_stride + i] for i < count, b < batch.
void add_strided(float* to, size_t to_stride, const float* from, size_t from_stride, int batch, size_t count,
                 cudaStream_t stream);
// grad[i] *= d activate / dx at (output[i], input[i]) for n values of an element-wise activation; input may be
// null when the activation's gradient needs only its output.
void activation_gradient(float* grad, const float* output, const float* input, size_t n, int activation,
                         cudaStream_t stream);

// The index of the first NaN or infinity among n values, or -1 (waits for the stream).
long long launch_first_nonfinite(const float* values, size_t n, cudaStream_t stream);
// values[i] *= factor for n values (mixed precision's loss scaling).
void launch_scale(float* values, size_t n, float factor, cudaStream_t stream);

// The window pool of [maxpool] and [local_avgpool] (maxpool_kernels.cu): the maximum or the in-image average of
// each window, one thread per output value.
void launch_window_pool(const CudaContext& ctx, const LayerSpec& spec, const PoolWindow& window, bool average);
// Its backward (training, float32): the gradient to each window's maximum, or spread over the window's in-image
// positions; nothing when ctx.input_grad is null.
void launch_window_pool_backward(const CudaBackwardContext& ctx, const LayerSpec& spec, const PoolWindow& window,
                                 bool average);

// The product of [sam] and [scale_channels] (scale_channels_kernels.cu): out = activation(from * in[k]), where
// in[k] is the same element (sam), the element's channel (scale_channels) or its pixel (scale_wh=1).
enum class ProductFactor : int { SAME = 0, PER_CHANNEL = 1, PER_PIXEL = 2 };
void launch_product(const CudaContext& ctx, const LayerSpec& spec, ProductFactor factor, int activation);
// Its backward (training, float32): the activation's gradient (the product recomputed when it needs its input),
// then the `from` layer gets grad * in[k] and the input grad * from, summed per factor in a fixed order.
void launch_product_backward(const CudaBackwardContext& ctx, const LayerSpec& spec, ProductFactor factor,
                             int activation);

// grad *= the activation's Jacobian over `batch` blocks of channels x spatial values (activation_kernels.cu):
// element-wise activations as activation_gradient, the normalize_channels family per pixel (one thread each,
// csrc/math/activations.h). input (the pre-activation values) may be null unless activation_needs_input.
void layer_activation_gradient(float* grad, const float* output, const float* input, int batch, int channels,
                               size_t spatial, int activation, cudaStream_t stream);

// Batch-norm in training mode (batchnorm_kernels.cu; the per-channel sums in the fixed parallel order of
// cuda/reduce.cuh, the rest one thread per value, formulas of csrc/math/batchnorm.h): x holds the
// raw values on entry and activation(scale * xhat + bias) on return (an element-wise activation; LINEAR for
// none), xhat and 1 / std per channel are kept, pre (when not null) gets the value before the activation, and
// the rolling statistics move in place. With a batch-norm reducer set (synchronized batch-norm across processes,
// csrc/cpu/train_ops.h) the statistics are those of every process's batch: the local sums go to the reducer as
// `layer`'s, and come back summed.
void launch_batchnorm_train(float* x, float* xhat, float* pre, double* inv_std, int batch, int channels, size_t spatial,
                            const float* scales, const float* biases, float* rolling_mean, float* rolling_variance,
                            float epsilon, int activation, int layer, cudaStream_t stream);
// Its exact backward: grad holds dLoss/d(output) on entry and dLoss/dx on return; the scale and bias gradients are
// added (local sums); with a reducer, the input gradient uses the sums over every process, as the forward did.
void launch_batchnorm_backward(float* grad, const float* output, const float* pre, const float* xhat,
                               const double* inv_std, int batch, int channels, size_t spatial, const float* scales,
                               float* grad_scales, float* grad_biases, int activation, int layer, cudaStream_t stream);
// accumulate[c] += the sum over the batch and the positions of x[b][c][s] (float32 in, the sum in double in the
// fixed order of cuda/reduce.cuh, reduce_kernels.cu): the bias gradient of a layer without batch-norm.
void launch_channel_sums(const float* x, int batch, int channels, size_t spatial, float* accumulate,
                         cudaStream_t stream);

}  // namespace pd
