// Darknet's pooling window, written once for the CPU and the CUDA kernels: the window's top-left corner is at
// offset + o * stride (offset = -padding / 2), positions outside the image are skipped, so they never win the
// maximum and are not counted in the average (see maxpool_layer.c and local_avgpool in Darknet).
#pragma once

#include <float.h>

#include "../core/common.h"

namespace pd {

// `load(y, x)` returns the input value at (y, x) as a float; only positions inside the image are loaded.
template <typename Load>
PD_HD float pool_window(const Load& load, int in_h, int in_w, int oy, int ox, int size, int stride_y, int stride_x,
                        int offset, bool average) {
    float best = -FLT_MAX, sum = 0.f;
    int count = 0;
    for (int ky = 0; ky < size; ++ky) {
        const int y = offset + oy * stride_y + ky;
        if (y < 0 || y >= in_h) continue;
        for (int kx = 0; kx < size; ++kx) {
            const int x = offset + ox * stride_x + kx;
            if (x < 0 || x >= in_w) continue;
            const float v = load(y, x);
            best = v > best ? v : best;
            sum += v;
            ++count;
        }
    }
    return average ? (count ? sum / count : 0.f) : best;
}

}  // namespace pd
