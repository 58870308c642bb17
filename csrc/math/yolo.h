// The [yolo] layer's forward transform, written once for the CPU and the CUDA kernels (forward_yolo_layer in
// Darknet): x, y, objectness and class scores go through the logistic unless new_coords=1, then
// x, y <- x * scale_x_y - (scale_x_y - 1) / 2. Entries of one anchor: 0 x, 1 y, 2 w, 3 h, 4 objectness, 5.. classes.
#pragma once

#include "activations.h"

namespace pd {

PD_HD float yolo_scale_xy(float v, float scale_x_y) { return v * scale_x_y - 0.5f * (scale_x_y - 1.f); }

PD_HD float yolo_output(float v, int entry, float scale_x_y, bool new_coords) {
    if (!new_coords && (entry < 2 || entry >= 4)) v = logistic_activate(v);
    if (entry < 2 && scale_x_y != 1.f) v = yolo_scale_xy(v, scale_x_y);
    return v;
}

}  // namespace pd
