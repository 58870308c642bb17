// CPU building blocks shared by several layers: im2col and activation over whole arrays.
#pragma once

#include <cstddef>

namespace pd {

// Unrolls one image (c x h x w) into columns for a convolution as Darknet's im2col_cpu_ext does:
// row (ch*ksize + ky)*ksize + kx, column oy*out_w + ox, sampling (oy*stride_y - pad + ky*dilation,
// ox*stride_x - pad + kx*dilation) and 0 outside the image.
void im2col(const float* image, int c, int h, int w, int ksize, int pad, int stride_y, int stride_x, int dilation,
            int out_h, int out_w, float* columns);

// Applies an activation in place to `batch` blocks of `channels` x `spatial` values. The element-wise ones ignore
// the layout; the normalize_channels family normalises across channels per pixel.
void activate_array(float* x, int batch, int channels, size_t spatial, int activation);

// x[i] = activate(x[i] + bias) for an element-wise activation, vectorised for the CPU it runs on.
void activate_span(float* x, size_t n, int activation, float bias = 0.f);

}  // namespace pd
