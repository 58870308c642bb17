// Shared helpers for the CUDA kernels: every runtime call and launch is checked, and a failure becomes a C++
// exception (a Python RuntimeError), never an exit.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pd {

struct CudaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

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
