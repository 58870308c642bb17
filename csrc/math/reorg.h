// [reorg3d]'s two permutations as index maps, written once for the CPU layer (forward and backward) and the CUDA
// kernels. Indices are within one image.
#pragma once

#include <stddef.h>

#include "../core/common.h"

namespace pd {

// Space-to-depth by `stride`: the input index (input c x h x w) of output value (k, j, i). Output channel k takes
// input channel k % c at offset ((k / c) / stride, (k / c) % stride) in each stride x stride block.
PD_HD size_t reorg_source(int k, int j, int i, int c, int h, int w, int stride) {
    const int c2 = k % c, offset = k / c;
    return ((size_t)c2 * h + (j * stride + offset / stride)) * w + (i * stride + offset % stride);
}

// reverse=1, as Darknet computes it: its reorg run with the *output* dimensions (c x h x w) and forward=1, which
// spreads the flat buffer over c / stride^2 channel groups. The output index of the value at flat input index
// (k, j, i), read with the output's dimensions. This permutation is not the inverse of reorg_source; it is kept
// as is so that weights trained with it keep working (the Python side requires stride^4 | c).
PD_HD size_t reorg_reverse_target(int k, int j, int i, int c, int h, int w, int stride) {
    const int groups = c / (stride * stride), c2 = k % groups, offset = k / groups;
    return (size_t)(i * stride + offset % stride) +
           (size_t)w * stride * ((size_t)(j * stride + offset / stride) + (size_t)h * stride * c2);
}

}  // namespace pd
