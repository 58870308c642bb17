// Darknet's pooling geometry, written once for the CPU and the CUDA kernels: the output is
// (in + padding - size) / stride + 1 long, the window of output o starts at offset + o * stride with
// offset = -padding / 2, and positions outside the image are skipped, so they never win the maximum and are not
// counted in the average (see maxpool_layer.c and local_avgpool in Darknet).
#pragma once

#include <float.h>

#include "../core/common.h"

namespace pd {

// A [maxpool] or [local_avgpool] window: size x size, moved by stride_y / stride_x, starting at `offset`.
struct PoolWindow {
    int size = 1, stride_y = 1, stride_x = 1, offset = 0;
};

// Where Darknet places the first window for a cfg's `padding`.
PD_HD int pool_offset(int padding) { return -padding / 2; }

// Outputs along an axis of `in` positions.
PD_HD int pool_output_size(int in, int size, int stride, int padding) { return (in + padding - size) / stride + 1; }

// The positions [first, last) of output o's window along one axis that lie inside the image's `extent`
// positions; empty when first >= last.
struct PoolSpan {
    int first, last;
};

PD_HD PoolSpan pool_span(int o, int stride, int offset, int size, int extent) {
    const int start = offset + o * stride, end = start + size;
    return PoolSpan{start < 0 ? 0 : start, end < extent ? end : extent};
}

// `load(y, x)` returns the input value at (y, x) as a float; only positions inside the image are loaded, rows
// top to bottom and each row left to right.
template <typename Load>
PD_HD float pool_window(const Load& load, int in_h, int in_w, int oy, int ox, const PoolWindow& window, bool average) {
    const PoolSpan ys = pool_span(oy, window.stride_y, window.offset, window.size, in_h);
    const PoolSpan xs = pool_span(ox, window.stride_x, window.offset, window.size, in_w);
    float best = -FLT_MAX, sum = 0.f;
    int count = 0;
    for (int y = ys.first; y < ys.last; ++y)
        for (int x = xs.first; x < xs.last; ++x) {
            const float v = load(y, x);
            best = v > best ? v : best;
            sum += v;
            ++count;
        }
    return average ? (count ? sum / count : 0.f) : best;
}

}  // namespace pd
