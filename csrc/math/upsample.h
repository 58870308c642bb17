// [upsample]'s index maps, written once for the CPU layer and the CUDA kernel: nearest-neighbour enlargement by
// `stride` copies coarse position (y / stride, x / stride) to fine position (y, x); the summing downsample
// (negative stride in the cfg) adds each stride x stride block of fine positions into one coarse position.
// Indices are within one plane.
#pragma once

#include <stddef.h>

#include "../core/common.h"

namespace pd {

// The coarse position (a plane `coarse_w` wide) that fine position (y, x) comes from or adds into.
PD_HD size_t upsample_coarse_index(int y, int x, int stride, int coarse_w) {
    return (size_t)(y / stride) * coarse_w + x / stride;
}

// Member (dy, dx) of the block of fine positions (a plane `fine_w` wide) of coarse position (y, x).
PD_HD size_t upsample_fine_index(int y, int x, int dy, int dx, int stride, int fine_w) {
    return (size_t)(y * stride + dy) * fine_w + x * stride + dx;
}

}  // namespace pd
