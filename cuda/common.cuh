// Shared helpers for the CUDA kernels: every runtime call and launch is checked and a failure becomes a C++
// exception (pydarknet.CudaError in Python), never an exit; the storage types of the three precisions with
// their float conversions; launch helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "core/cuda_network.h"

namespace pd {

inline void cuda_check(cudaError_t status, const char* what, const char* file, int line) {
    if (status != cudaSuccess) {
        cudaGetLastError();
        throw CudaError(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                        cudaGetErrorString(status));
    }
}

}  // namespace pd

#define PD_CUDA_CHECK(call) ::pd::cuda_check((call), #call, __FILE__, __LINE__)
#define PD_CUDA_CHECK_LAUNCH() ::pd::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

namespace pd {

// Storage types: activations are kept in the precision's type; all arithmetic outside the tensor cores is float.
__host__ __device__ __forceinline__ float to_float(float v) { return v; }
__host__ __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__host__ __device__ __forceinline__ T from_float(float v);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

inline size_t precision_bytes(Precision p) { return p == Precision::FP32 ? 4 : 2; }

// Calls f(T{}) with T the storage type of precision p (generic lambdas pick their kernels from it).
template <typename F>
void dispatch_precision(Precision p, F&& f) {
    switch (p) {
        case Precision::FP32: f(float{}); break;
        case Precision::FP16: f(__half{}); break;
        case Precision::BF16: f(__nv_bfloat16{}); break;
    }
}

// float32 operations each rounded on their own, as the host optimizer computes them (pydarknet/train/optim.py):
// nvcc would otherwise fuse a * b + c into one rounding; division and square root correctly rounded.
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
__device__ __forceinline__ float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
__device__ __forceinline__ float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
    return __fsqrt_rn(a);
#else
    return sqrtf(a);
#endif
}

// Makes a GPU current for the duration of a call and restores the caller's afterwards.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&previous_) != cudaSuccess) {
            cudaGetLastError();
            previous_ = -1;
        }
        PD_CUDA_CHECK(cudaSetDevice(device));
    }
    ~DeviceScope() {
        if (previous_ >= 0) cudaSetDevice(previous_);
    }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int previous_ = -1;
};

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never more than the hardware allows.
inline unsigned grid_for(size_t n, int threads) {
    const size_t blocks = (n + threads - 1) / threads;
    return (unsigned)(blocks < 1 ? 1 : (blocks > (1u << 20) ? (1u << 20) : blocks));
}

}  // namespace pd

// kernel<<<grid, block, shared_bytes, stream>>> written as PD_LAUNCH(grid, block, shared_bytes, stream, kernel)(
// arguments), so that the CPU emulation of the CUDA programming model (cuda/emulation/) can run the same source.
#ifdef PYDARKNET_CUDA_EMULATION
#define PD_LAUNCH(grid, block, shared_bytes, stream, ...) \
    ::pd_emulation::launcher((grid), (block), (shared_bytes), (stream), __VA_ARGS__)
#else
#define PD_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<(grid), (block), (shared_bytes), (stream)>>>
#endif
