// Element-wise activations on the GPU. The formulas are the ones the CPU uses (csrc/math/activations.h), so the
// CPU tests cover the math and the GPU tests only need to catch indexing mistakes.
#include <vector>

#include "common.cuh"
#include "math/activations.h"

namespace pd {

__global__ void activate_kernel(float* x, size_t n, int activation, float bias) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = activate(x[i] + bias, activation);
}

void cuda_activate_device(float* x, size_t n, int activation, float bias, cudaStream_t stream) {
    if (n == 0) return;
    const int threads = 256;
    const int blocks = (int)((n + threads - 1) / threads < 65535 ? (n + threads - 1) / threads : 65535);
    activate_kernel<<<blocks, threads, 0, stream>>>(x, n, activation, bias);
    PD_CUDA_CHECK_LAUNCH();
}

// Host round trip used by the CPU/GPU parity tests: copies `values` to the GPU, activates, copies back.
std::vector<float> cuda_activate(const std::vector<float>& values, int activation) {
    float* device = nullptr;
    const size_t bytes = values.size() * sizeof(float);
    PD_CUDA_CHECK(cudaMalloc(&device, bytes ? bytes : sizeof(float)));
    std::vector<float> out(values.size());
    try {
        PD_CUDA_CHECK(cudaMemcpy(device, values.data(), bytes, cudaMemcpyHostToDevice));
        cuda_activate_device(device, values.size(), activation, 0.f, 0);
        PD_CUDA_CHECK(cudaMemcpy(out.data(), device, bytes, cudaMemcpyDeviceToHost));
    } catch (...) {
        cudaFree(device);
        throw;
    }
    PD_CUDA_CHECK(cudaFree(device));
    return out;
}

}  // namespace pd
