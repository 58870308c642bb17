// The CPU emulation of the CUDA runtime and programming model declared in include/cuda_runtime.h.
//
// A block's threads are fibers (ucontext) with their own stacks, run one after another on the calling thread:
// each runs until it reaches __syncthreads or __syncwarp or returns; when none can run, a warp whose threads all
// wait at __syncwarp is released, else a block whose threads all wait at __syncthreads; anything else (a thread
// that returned while others wait at a barrier, threads waiting at different barriers) fails the launch, as it
// would hang or misbehave on a GPU. The order in which fibers run alternates between rounds, so that a read of
// shared memory that lacks a barrier sees another thread's stale or future value in one direction or the other.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime.h"

struct CUstream_st {};
struct CUevent_st {
    std::chrono::steady_clock::time_point time;
};
struct CUgraph_st {
    std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> work;
};

namespace pd_emulation {

dim3 thread_index, block_index, block_dim, grid_dim;

namespace {

constexpr size_t kStackBytes = 512 * 1024;
constexpr size_t kDeviceMemoryBytes = 64ull << 30;  // larger allocations fail, as on a GPU with this much memory
constexpr size_t kMaxStaticSharedBytes = 48 * 1024;

enum class State { READY, BLOCK_BARRIER, WARP_BARRIER, DONE, FAILED };

struct Fiber {
    ucontext_t context;
    State state = State::READY;
    dim3 index;
};

struct Scheduler {
    ucontext_t main;
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    int current = -1;
    const std::function<void()>* body = nullptr;
    std::string failure;
};

Scheduler& scheduler() {
    static Scheduler s;
    return s;
}

struct Errors {
    cudaError_t last = cudaSuccess;
    std::string message;  // details of the last launch failure
    std::string text;     // what cudaGetErrorString returned last
};

Errors& errors() {
    static Errors e;
    return e;
}

cudaError_t set_error(cudaError_t error, const std::string& message) {
    errors().last = error;
    errors().message = message;
    return error;
}

struct Capture {
    bool active = false;
    cudaStream_t stream = nullptr;
    std::vector<std::function<void()>> work;
};

Capture& capture() {
    static Capture c;
    return c;
}

void fiber_entry() {
    Scheduler& s = scheduler();
    (*s.body)();
    s.fibers[s.current].state = State::DONE;
}

void ensure_stacks(size_t count) {
    Scheduler& s = scheduler();
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (s.stacks.size() < count) {
        void* memory = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (memory == MAP_FAILED) std::abort();
        mprotect(memory, page, PROT_NONE);  // overflowing a stack faults instead of corrupting another
        s.stacks.push_back(static_cast<char*>(memory) + page);
    }
    s.fibers.resize(std::max(s.fibers.size(), count));
}

void resume(int i) {
    Scheduler& s = scheduler();
    s.current = i;
    thread_index = s.fibers[i].index;
    swapcontext(&s.main, &s.fibers[i].context);
}

void block_until_released(State state) {
    Scheduler& s = scheduler();
    Fiber& f = s.fibers[s.current];
    f.state = state;
    swapcontext(&f.context, &s.main);
}

std::string where(int thread) {
    const Fiber& f = scheduler().fibers[thread];
    return "block (" + std::to_string(block_index.x) + "," + std::to_string(block_index.y) + "," +
           std::to_string(block_index.z) + ") thread (" + std::to_string(f.index.x) + "," +
           std::to_string(f.index.y) + "," + std::to_string(f.index.z) + ")";
}

// Runs one block to completion; returns an empty string, or what went wrong.
std::string run_block(int threads) {
    Scheduler& s = scheduler();
    for (int i = 0; i < threads; ++i) {
        Fiber& f = s.fibers[i];
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = s.stacks[i];
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &s.main;
        makecontext(&f.context, fiber_entry, 0);
        f.state = State::READY;
        f.index = dim3(i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y));
    }
    bool forward = true;
    for (;;) {
        for (int k = 0; k < threads; ++k) {
            const int i = forward ? k : threads - 1 - k;
            if (s.fibers[i].state != State::READY) continue;
            resume(i);
            if (s.fibers[i].state == State::FAILED) return where(i) + ": " + s.failure;
        }
        forward = !forward;
        int done = 0, at_block = 0;
        for (int i = 0; i < threads; ++i) {
            done += s.fibers[i].state == State::DONE;
            at_block += s.fibers[i].state == State::BLOCK_BARRIER;
        }
        if (done == threads) return "";
        bool released = false;
        for (int w = 0; w * 32 < threads; ++w) {
            const int first = w * 32, last = std::min(threads, first + 32);
            int waiting = 0, finished = 0;
            for (int i = first; i < last; ++i) {
                waiting += s.fibers[i].state == State::WARP_BARRIER;
                finished += s.fibers[i].state == State::DONE;
            }
            if (waiting == last - first) {
                for (int i = first; i < last; ++i) s.fibers[i].state = State::READY;
                released = true;
            } else if (waiting > 0 && finished > 0) {
                return where(first) + ": __syncwarp is not reached by every thread of warp " + std::to_string(w);
            }
        }
        if (released) continue;
        if (at_block > 0 && at_block + done == threads) {
            if (done > 0) return where(0) + ": __syncthreads is not reached by every thread of the block";
            for (int i = 0; i < threads; ++i) s.fibers[i].state = State::READY;
            continue;
        }
        return where(0) + ": deadlock, the threads wait at different barriers";
    }
}

void launch_now(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
        set_error(cudaErrorInvalidConfiguration, "block of " + std::to_string(threads) + " threads");
        return;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        set_error(cudaErrorInvalidConfiguration, "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) +
                                                     "," + std::to_string(grid.z) + ")");
        return;
    }
    if (shared_bytes > kMaxStaticSharedBytes) {
        set_error(cudaErrorInvalidConfiguration, "dynamic shared memory above 48 KB without the attribute");
        return;
    }
    ensure_stacks(threads);
    Scheduler& s = scheduler();
    s.body = &body;
    grid_dim = grid;
    block_dim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                block_index = dim3(x, y, z);
                const std::string failure = run_block((int)threads);
                if (!failure.empty()) {
                    set_error(cudaErrorLaunchFailure, failure);
                    return;
                }
            }
}

}  // namespace

void sync_threads() { block_until_released(State::BLOCK_BARRIER); }
void sync_warp() { block_until_released(State::WARP_BARRIER); }

void fail(const char* message) {
    Scheduler& s = scheduler();
    s.failure = message;
    block_until_released(State::FAILED);
    std::abort();  // a failed fiber is never resumed
}

void launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, std::function<void()> body) {
    Capture& c = capture();
    if (c.active && stream == c.stream) {
        c.work.push_back([grid, block, shared_bytes, body]() { launch_now(grid, block, shared_bytes, body); });
        return;
    }
    launch_now(grid, block, shared_bytes, body);
}

}  // namespace pd_emulation

using pd_emulation::capture;

namespace {

// Synchronous calls are not allowed while a stream is being captured; they invalidate the capture.
bool refuse_while_capturing() {
    if (!capture().active) return false;
    pd_emulation::set_error(cudaErrorStreamCaptureUnsupported, "a synchronous call during stream capture");
    return true;
}

// Records a stream operation while its stream is being captured; returns false to run it now.
bool record(cudaStream_t stream, std::function<void()> work) {
    if (!capture().active || stream != capture().stream) return false;
    capture().work.push_back(std::move(work));
    return true;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : pd_emulation::set_error(cudaErrorInvalidDevice, "device " + std::to_string(device));
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    std::memset(properties, 0, sizeof(*properties));
    std::strncpy(properties->name, "CPU emulation of the CUDA programming model", sizeof(properties->name) - 1);
    properties->multiProcessorCount = 132;  // an H100's, so that launch-shape decisions (split-K) are the GPU's
    properties->sharedMemPerBlock = 48 * 1024;
    properties->maxThreadsPerBlock = 1024;
    properties->major = 9;
    return cudaSuccess;
}
cudaError_t cudaGetLastError() {
    const cudaError_t e = pd_emulation::errors().last;
    pd_emulation::errors().last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() { return pd_emulation::errors().last; }

const char* cudaGetErrorString(cudaError_t error) {
    auto& e = pd_emulation::errors();
    switch (error) {
        case cudaSuccess: e.text = "no error"; break;
        case cudaErrorNotReady: e.text = "device not ready"; break;
        case cudaErrorInvalidValue: e.text = "invalid argument"; break;
        case cudaErrorMemoryAllocation: e.text = "out of memory"; break;
        case cudaErrorInvalidConfiguration: e.text = "invalid configuration argument"; break;
        case cudaErrorInvalidDevice: e.text = "invalid device ordinal"; break;
        case cudaErrorLaunchFailure: e.text = "unspecified launch failure"; break;
        case cudaErrorStreamCaptureUnsupported: e.text = "operation not permitted when stream is capturing"; break;
        default: e.text = "error " + std::to_string((int)error); break;
    }
    if (!e.message.empty()) e.text += " (emulation: " + e.message + ")";
    return e.text.c_str();
}
cudaError_t cudaDeviceSynchronize() { return refuse_while_capturing() ? cudaErrorStreamCaptureUnsupported : cudaSuccess; }

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    *pointer = bytes > pd_emulation::kDeviceMemoryBytes ? nullptr : std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    return *pointer ? cudaSuccess : pd_emulation::set_error(cudaErrorMemoryAllocation, "");
}
cudaError_t cudaFree(void* pointer) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    std::free(pointer);
    return cudaSuccess;
}
// Page-locked allocations are recorded, so that cudaFreeHost refuses a pointer cudaMallocHost did not return (the
// runtime does too) instead of freeing it.
namespace {
std::mutex host_allocations_mutex;
std::set<void*>& host_allocations() {
    static std::set<void*> pointers;
    return pointers;
}
}  // namespace
cudaError_t cudaMallocHost(void** pointer, size_t bytes) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    if (!pointer) return pd_emulation::set_error(cudaErrorInvalidValue, "cudaMallocHost: no pointer to set");
    *pointer = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!*pointer) return pd_emulation::set_error(cudaErrorMemoryAllocation, "cudaMallocHost");
    std::lock_guard<std::mutex> lock(host_allocations_mutex);
    host_allocations().insert(*pointer);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void* pointer) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    if (!pointer) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(host_allocations_mutex);
        if (!host_allocations().erase(pointer))
            return pd_emulation::set_error(cudaErrorInvalidValue, "cudaFreeHost: not a pointer from cudaMallocHost");
    }
    std::free(pointer);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void* to, const void* from, size_t bytes, cudaMemcpyKind) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    std::memmove(to, from, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* to, const void* from, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
    if (!record(stream, [=]() { std::memmove(to, from, bytes); })) std::memmove(to, from, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* to, size_t to_pitch, const void* from, size_t from_pitch, size_t width,
                              size_t height, cudaMemcpyKind, cudaStream_t stream) {
    if (width > to_pitch || width > from_pitch) return pd_emulation::set_error(cudaErrorInvalidValue, "pitch < width");
    auto copy = [=]() {
        for (size_t row = 0; row < height; ++row)
            std::memmove(static_cast<char*>(to) + row * to_pitch, static_cast<const char*>(from) + row * from_pitch,
                         width);
    };
    if (!record(stream, copy)) copy();
    return cudaSuccess;
}
cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
    if (refuse_while_capturing()) return cudaErrorStreamCaptureUnsupported;
    std::memset(pointer, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream) {
    if (!record(stream, [=]() { std::memset(pointer, value, bytes); })) std::memset(pointer, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
    *stream = new CUstream_st;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    return refuse_while_capturing() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t* event) {
    *event = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) { return cudaEventCreate(event); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
    return event ? cudaSuccess : pd_emulation::set_error(cudaErrorInvalidValue, "cudaStreamWaitEvent: no event");
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    auto stamp = [event]() { event->time = std::chrono::steady_clock::now(); };
    if (!record(stream, stamp)) stamp();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
    if (capture().active) return pd_emulation::set_error(cudaErrorIllegalState, "capture already active");
    capture().active = true;
    capture().stream = stream;
    capture().work.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    if (!capture().active || stream != capture().stream)
        return pd_emulation::set_error(cudaErrorIllegalState, "no capture on this stream");
    *graph = new CUgraph_st{std::move(capture().work)};
    capture().active = false;
    capture().work.clear();
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    *exec = new CUgraphExec_st{graph->work};
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
    for (auto& work : exec->work) work();
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
