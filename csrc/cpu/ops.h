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

// Max or average over size x size windows placed as Darknet places them (top-left at offset + o*stride);
// positions outside the image are skipped (never the max, not counted in the average).
void pool2d(const float* in, float* out, long long planes, int in_h, int in_w, int out_h, int out_w, int size,
            int stride_y, int stride_x, int offset, bool average);

// Darknet's fuse_conv_batchnorm for n outputs, in double: factor = scale / sqrt(var + eps),
// folded_bias = bias - mean * factor.
void batchnorm_factors(const float* bias, const float* scales, const float* mean, const float* var, float eps,
                       int n, double* factor, float* folded_bias);

// x[i] = activate(x[i] + bias) for an element-wise activation, vectorised for the CPU it runs on.
void activate_span(float* x, size_t n, int activation, float bias = 0.f);

}  // namespace pd
