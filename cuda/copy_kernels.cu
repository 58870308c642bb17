// Copies between activation views and conversions between float32 and the storage type: network input and
// output, route concatenation where it cannot be written in place, identity layers on the network input.
#include "cuda_layer.cuh"

namespace pd {
namespace {

template <typename T>
__global__ void copy_view_kernel(const T* from, size_t from_stride, T* to, size_t to_stride, int batch, size_t count) {
    for (int b = blockIdx.y; b < batch; b += gridDim.y)
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
            to[(size_t)b * to_stride + i] = from[(size_t)b * from_stride + i];
}

template <typename T>
__global__ void from_float_kernel(const float* from, T* to, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        to[i] = from_float<T>(from[i]);
}

template <typename T>
__global__ void to_float_kernel(const T* from, size_t stride, int batch, size_t count, float* to) {
    for (int b = blockIdx.y; b < batch; b += gridDim.y)
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
            to[(size_t)b * count + i] = to_float(from[(size_t)b * stride + i]);
}

constexpr int kThreads = 256;

dim3 batch_grid(size_t count, int batch) {
    return dim3(grid_for(count, kThreads), (unsigned)(batch < 65535 ? batch : 65535));
}

}  // namespace

void copy_view(Precision precision, const DeviceView& from, const DeviceView& to, int batch, size_t count,
               cudaStream_t stream) {
    if (count == 0 || batch == 0) return;
    dispatch_precision(precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(batch_grid(count, batch), kThreads, 0, stream, copy_view_kernel<T>)(
            from.as<T>(), from.stride, to.as<T>(), to.stride, batch, count);
        PD_CUDA_CHECK_LAUNCH();
    });
}

void convert_from_float(Precision precision, const float* from, void* to, size_t count, cudaStream_t stream) {
    if (count == 0) return;
    dispatch_precision(precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(grid_for(count, kThreads), kThreads, 0, stream, from_float_kernel<T>)(from, static_cast<T*>(to),
                                                                                        count);
        PD_CUDA_CHECK_LAUNCH();
    });
}

void convert_to_float(Precision precision, const DeviceView& from, int batch, size_t count, float* to,
                      cudaStream_t stream) {
    if (count == 0 || batch == 0) return;
    dispatch_precision(precision, [&](auto tag) {
        using T = decltype(tag);
        PD_LAUNCH(batch_grid(count, batch), kThreads, 0, stream, to_float_kernel<T>)(from.as<T>(), from.stride, batch,
                                                                                     count, to);
        PD_CUDA_CHECK_LAUNCH();
    });
}

}  // namespace pd
