// Activations on the GPU. The formulas are the ones the CPU uses (csrc/math/activations.h), so the CPU tests cover
// the math and the GPU tests only need to catch indexing mistakes.
#include <vector>

#include "cuda_layer.cuh"
#include "math/activations.h"

namespace pd {
namespace {

template <typename T>
__global__ void activate_view_kernel(T* data, size_t stride, int batch, size_t count, int activation) {
    for (int b = blockIdx.y; b < batch; b += gridDim.y) {
        T* image = data + (size_t)b * stride;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
            image[i] = from_float<T>(activate(to_float(image[i]), activation));
    }
}

// One thread per pixel: the normalize_channels family reads all channels of its pixel.
template <typename T>
__global__ void normalize_channels_kernel(T* data, size_t stride, int batch, int channels, size_t spatial,
                                          int activation) {
    const size_t pixels = (size_t)batch * spatial;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pixels; p += (size_t)gridDim.x * blockDim.x) {
        T* base = data + (p / spatial) * stride + p % spatial;
        normalize_channels_pixel(
            activation, channels, [&](int k) { return to_float(base[(size_t)k * spatial]); },
            [&](int k, float v) { base[(size_t)k * spatial] = from_float<T>(v); });
    }
}

// One thread per pixel: the exact gradient of the normalize_channels family (float32 training buffers).
__global__ void normalize_channels_gradient_kernel(float* grad, const float* output, const float* input, int batch,
                                                   int channels, size_t spatial, int activation) {
    const size_t pixels = (size_t)batch * spatial;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pixels; p += (size_t)gridDim.x * blockDim.x) {
        const size_t base = (p / spatial) * channels * spatial + p % spatial;
        normalize_channels_gradient(activation, channels, spatial, grad + base, output + base,
                                    input ? input + base : nullptr);
    }
}

}  // namespace

void layer_activation_gradient(float* grad, const float* output, const float* input, int batch, int channels,
                               size_t spatial, int activation, cudaStream_t stream) {
    const size_t pixels = (size_t)batch * spatial;
    if (activation == LINEAR || pixels == 0 || channels == 0) return;
    if (!is_channel_activation(activation)) {
        activation_gradient(grad, output, input, pixels * channels, activation, stream);
        return;
    }
    PD_CHECK(input || activation != NORM_CHAN, "normalize_channels: the gradient needs the pre-activation values");
    PD_LAUNCH(grid_for(pixels, 128), 128, 0, stream, normalize_channels_gradient_kernel)(grad, output, input, batch,
                                                                                         channels, spatial, activation);
    PD_CUDA_CHECK_LAUNCH();
}

void activate_view(Precision precision, const DeviceView& view, int batch, int channels, size_t spatial, int activation,
                   cudaStream_t stream) {
    const size_t count = (size_t)channels * spatial;
    if (activation == LINEAR || count == 0 || batch == 0) return;
    const int threads = 256;
    dispatch_precision(precision, [&](auto tag) {
        using T = decltype(tag);
        if (is_channel_activation(activation)) {
            PD_LAUNCH(grid_for((size_t)batch * spatial, threads), threads, 0, stream, normalize_channels_kernel<T>)(
                view.as<T>(), view.stride, batch, channels, spatial, activation);
        } else {
            const dim3 grid(grid_for(count, threads), (unsigned)(batch < 65535 ? batch : 65535));
            PD_LAUNCH(grid, threads, 0, stream, activate_view_kernel<T>)(view.as<T>(), view.stride, batch, count,
                                                                         activation);
        }
        PD_CUDA_CHECK_LAUNCH();
    });
}

// Host round trip used by the CPU/GPU activation parity tests: copies `values` to the GPU, activates them as one
// float32 image, copies them back.
std::vector<float> cuda_activate(const std::vector<float>& values, int activation) {
    PD_CHECK(activation >= 0 && activation < ACTIVATION_COUNT && !is_channel_activation(activation),
             "cuda_activate takes an element-wise activation code, got ", activation);
    std::vector<float> out(values.size());
    if (values.empty()) return out;
    DeviceArray<float> device;
    device.upload(values.data(), values.size(), nullptr);
    activate_view(Precision::FP32, DeviceView{device.data(), values.size()}, 1, 1, values.size(), activation, nullptr);
    PD_CUDA_CHECK(cudaMemcpy(out.data(), device.data(), values.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return out;
}

}  // namespace pd
