// The [yolo] training loss on the device (cuda/yolo_loss_kernels.cu): the launcher CudaNetwork::yolo_loss calls.
#pragma once

#include "common.cuh"

namespace pd {

// Runs the loss of one head: `output` is the head's training output (batch images of
// n_anchors * (5 + classes) planes of h x w, contiguous), `grad` (same size) receives the gradient
// -delta_normalizer * delta. truths: counts[b] boxes (x, y, w, h, double) and class ids per image, max_truths
// slots per image. Returns the sums YoloLossSums describes; waits for the device.
YoloLossSums launch_yolo_loss(const YoloLossSetup& setup, const float* output, float* grad, int batch, int h, int w,
                              const double* truths, const int* classes, const int* counts, int max_truths,
                              cudaStream_t stream);

}  // namespace pd
