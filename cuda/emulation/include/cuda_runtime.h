// CPU emulation of the part of the CUDA runtime and programming model that pydarknet's kernels use, so that the
// kernel sources in cuda/ can run and be tested on machines without a GPU (PYDARKNET_CUDA=EMULATE). Every CUDA
// thread is a fiber; a block's fibers run one after another on one CPU thread, switching at __syncthreads and
// __syncwarp; shared memory is static storage; device memory is host memory; streams run synchronously; a graph
// records its launches and replays them. It checks what it can of the rules a GPU enforces: launch limits,
// barriers reached by every thread, wmma pointer alignment and leading dimensions. It is a test tool: it says
// nothing about speed, and a kernel that passes here can still fail on a GPU (memory ordering, hardware limits).
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <tuple>
#include <utility>

// ----- qualifiers -------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __restrict__ __restrict

// ----- vector types -----------------------------------------------------------------------------------------
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

// ----- runtime types ----------------------------------------------------------------------------------------
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1,
                             cudaStreamCaptureModeRelaxed = 2 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;

struct cudaDeviceProp {
    char name[256];
    int multiProcessorCount;
    size_t sharedMemPerBlock;
    int maxThreadsPerBlock;
    int major, minor;
};

// ----- runtime API ------------------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaDeviceSynchronize();

cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
// Page-locked host memory: ordinary aligned host memory here (every copy is synchronous anyway).
cudaError_t cudaMallocHost(void** pointer, size_t bytes);
cudaError_t cudaFreeHost(void* pointer);
cudaError_t cudaMemcpy(void* to, const void* from, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* to, const void* from, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy2DAsync(void* to, size_t to_pitch, const void* from, size_t from_pitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* pointer, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
// The emulation runs every operation when it is issued, so a stream is always idle.
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
// Work issued to `stream` later waits for `event`: a no-op here, since the work before `event` has already run.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

// ----- the programming model --------------------------------------------------------------------------------
namespace pd_emulation {

extern dim3 thread_index, block_index, block_dim, grid_dim;

void sync_threads();
void sync_warp();
// Ends the current kernel with an error (reported by the next cudaGetLastError).
[[noreturn]] void fail(const char* message);

// Runs body() for every thread of every block of the grid (or records it while a stream is being captured).
void launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, std::function<void()> body);

template <typename... Params>
struct Launcher {
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
    void (*kernel)(Params...);

    template <typename... Args>
    void operator()(Args&&... args) const {
        // Arguments are copied once per launch, as the GPU copies them into the kernel's parameter space.
        auto copied = std::make_tuple(static_cast<Params>(std::forward<Args>(args))...);
        auto fn = kernel;
        launch(grid, block, shared_bytes, stream, [fn, copied]() { std::apply(fn, copied); });
    }
};

template <typename... Params>
Launcher<Params...> launcher(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, void (*kernel)(Params...)) {
    return Launcher<Params...>{grid, block, shared_bytes, stream, kernel};
}

}  // namespace pd_emulation

#define threadIdx (::pd_emulation::thread_index)
#define blockIdx (::pd_emulation::block_index)
#define blockDim (::pd_emulation::block_dim)
#define gridDim (::pd_emulation::grid_dim)

inline void __syncthreads() { pd_emulation::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    pd_emulation::sync_warp();
}
