// Training on the GPU, the parts that are not one layer type (float32 only): the default backward (a layer type
// without one says so), gradient accumulation between strided buffers, activation gradients through the
// formulas the CPU uses (csrc/math/activations.h), gradient scaling, and the search for the first non-finite
// gradient value. The optimizer's update is cuda/optimizer_kernels.cu.
#include <math.h>

#include "cuda_layer.cuh"
#include "math/activations.h"

namespace pd {

void CudaLayer::backward(const CudaBackwardContext&) {
    throw InvalidArgument(
        concat("layer ", spec.index, " (", spec.type, "): this layer type has no backward pass on the GPU yet"));
}

namespace {

__global__ void add_strided_kernel(float* to, size_t to_stride, const float* from, size_t from_stride, int batch,
                                   size_t count) {
    const size_t total = count * batch;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t b = id / count, i = id % count;
        to[b * to_stride + i] += from[b * from_stride + i];
    }
}

__global__ void activation_gradient_kernel(float* grad, const float* output, const float* input, size_t n,
                                           int activation) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        grad[i] *= gradient(output[i], input ? input[i] : output[i], activation);
}

constexpr size_t kFiniteChunk = 4096;

// first[c]: the first index of chunk c holding NaN or infinity, or -1.
__global__ void nonfinite_kernel(const float* values, size_t n, long long* first, size_t chunks) {
    for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < chunks; c += (size_t)gridDim.x * blockDim.x) {
        long long found = -1;
        const size_t stop = (c + 1) * kFiniteChunk < n ? (c + 1) * kFiniteChunk : n;
        for (size_t i = c * kFiniteChunk; i < stop; ++i)
            if (!isfinite(values[i])) {
                found = (long long)i;
                break;
            }
        first[c] = found;
    }
}

}  // namespace

void add_strided(float* to, size_t to_stride, const float* from, size_t from_stride, int batch, size_t count,
                 cudaStream_t stream) {
    const size_t total = count * batch;
    if (total == 0) return;
    PD_LAUNCH(grid_for(total, 256), 256, 0, stream, add_strided_kernel)(to, to_stride, from, from_stride, batch, count);
    PD_CUDA_CHECK_LAUNCH();
}

void activation_gradient(float* grad, const float* output, const float* input, size_t n, int activation,
                         cudaStream_t stream) {
    if (activation == LINEAR || n == 0) return;
    PD_CHECK(!is_channel_activation(activation), "activation ", activation,
             ": the normalize_channels gradients are not implemented on the GPU yet");
    PD_CHECK(input || !activation_needs_input(activation), "activation ", activation,
             ": the gradient needs the pre-activation values");
    PD_LAUNCH(grid_for(n, 256), 256, 0, stream, activation_gradient_kernel)(grad, output, input, n, activation);
    PD_CUDA_CHECK_LAUNCH();
}

long long launch_first_nonfinite(const float* values, size_t n, cudaStream_t stream) {
    if (n == 0) return -1;
    const size_t chunks = (n + kFiniteChunk - 1) / kFiniteChunk;
    DeviceArray<long long> first;
    first.resize(chunks);
    PD_LAUNCH(grid_for(chunks, 128), 128, 0, stream, nonfinite_kernel)(values, n, first.data(), chunks);
    PD_CUDA_CHECK_LAUNCH();
    std::vector<long long> host(chunks);
    PD_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), first.data(), chunks * sizeof(long long), cudaMemcpyDeviceToHost, stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (long long f : host)
        if (f >= 0) return f;
    return -1;
}

// values[i] *= factor (loss scaling: a power of two, exact unless the product overflows or underflows).
static __global__ void loss_scale_kernel(float* values, size_t n, float factor) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        values[i] *= factor;
}

void launch_scale(float* values, size_t n, float factor, cudaStream_t stream) {
    if (n == 0) return;
    PD_LAUNCH(grid_for(n, 256), 256, 0, stream, loss_scale_kernel)(values, n, factor);
    PD_CUDA_CHECK_LAUNCH();
}

}  // namespace pd
