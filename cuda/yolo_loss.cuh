// The [yolo] training loss on the device (cuda/yolo_loss_kernels.cu): the launcher CudaNetwork::yolo_loss calls.
#pragma once

#include <algorithm>

#include "cuda_layer.cuh"

namespace pd {

// The loss's device buffers, kept by the CUDA network between calls and heads: each grows when a call needs more
// and is never freed per call. `allocations` counts the device allocations made (for the tests).
struct YoloLossScratch {
    template <typename T>
    struct Buffer {
        DeviceArray<T> array;
        T* at_least(size_t count, long long& allocations) {
            count = std::max<size_t>(count, 1);
            if (array.size() < count || !array.data()) {
                array.resize(count);
                ++allocations;
            }
            return array.data();
        }
    };
    Buffer<int> mask, classes, counts, tt;
    Buffer<double> anchors, truths, sums;
    Buffer<float> mult;
    Buffer<char> stats;  // ImageStats (a type private to yolo_loss_kernels.cu)
    Buffer<long long> bbox;
    long long allocations = 0;
};

// Runs the loss of one head: `output` is the head's training output (batch images of
// n_anchors * (5 + classes) planes of h x w, contiguous), `grad` (same size) receives the gradient
// -delta_normalizer * delta. truths: counts[b] boxes (x, y, w, h, double) and class ids per image, max_truths
// slots per image. Returns the sums YoloLossSums describes; waits for the device. The device buffers come from
// `scratch`.
YoloLossSums launch_yolo_loss(const YoloLossSetup& setup, const float* output, float* grad, int batch, int h, int w,
                              const double* truths, const int* classes, const int* counts, int max_truths,
                              cudaStream_t stream, YoloLossScratch& scratch);

}  // namespace pd
