// Training on the GPU, the parts that are not one layer type (float32 only): the default backward (a layer type
// without one says so), gradient accumulation between strided buffers, activation gradients through the
// formulas the CPU uses (csrc/math/activations.h), Darknet's SGD update over the flat buffers in one kernel, and
// the search for the first non-finite gradient value.
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

// Each operation rounded on its own, as the reference optimizer (pydarknet/train/optim.py) computes in float32:
// nvcc would otherwise fuse a * b + c into one rounding.
__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
__device__ __forceinline__ float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

// One update of Darknet's update_*_gpu for every value covered by a segment (sorted, disjoint): U -= grad;
// decay segments U += decay_coef * W, shortcut segments clamp U to [-1, 1]; W += step * U; U *= momentum.
__global__ void sgd_kernel(float* params, const float* grads, float* velocity, const SgdSegment* segments, int count,
                           size_t n, float decay_coef, float momentum) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int lo = 0, hi = count;  // the last segment starting at or before i
        while (hi - lo > 1) {
            const int mid = (lo + hi) / 2;
            if (segments[mid].start <= i)
                lo = mid;
            else
                hi = mid;
        }
        const SgdSegment s = segments[lo];
        if (i < s.start || i >= s.stop) continue;
        float w = params[i];
        float u = add_rn(velocity[i], -grads[i]);
        if (s.rule == SgdSegment::SHORTCUT)
            u = fminf(1.f, fmaxf(-1.f, u));
        else if (s.rule == SgdSegment::DECAY)
            u = add_rn(u, mul_rn(decay_coef, w));
        w = add_rn(w, mul_rn(s.step, u));
        params[i] = w;
        velocity[i] = mul_rn(u, momentum);
    }
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

void launch_sgd(float* params, const float* grads, float* velocity, const SgdSegment* segments, int count, size_t n,
                float decay_coef, float momentum, cudaStream_t stream) {
    if (n == 0 || count == 0) return;
    PD_LAUNCH(grid_for(n, 256), 256, 0, stream, sgd_kernel)(params, grads, velocity, segments, count, n, decay_coef,
                                                            momentum);
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
