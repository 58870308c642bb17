// 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016): each 4x4 output tile costs 36 multiplies per input/output channel pair
// instead of 144, at the price of transforming input tiles (6x6) and output tiles, and of weights 4x larger.
//
//   Y = A^T [ (G g G^T) . (B^T d B) ] A      (g: 3x3 filter, d: 6x6 input tile, Y: 4x4 output tile)
//
// The element-wise products summed over input channels are 36 independent GEMMs (filters x channels times
// channels x tiles), run on the packed GEMM kernels. Rounding: the transforms add up multiples (up to 8) of values
// larger than the result, so the result differs from a direct convolution by a few float32 ulps of those terms
// (about 2.3x the direct convolution's own rounding error with the interpolation points used here); measured on
// whole networks in benchmarks/RESULTS.md.
#pragma once

#include <vector>

#include "gemm.h"

namespace pd {

// Whether a convolution of this shape uses Winograd on the CPU (the checks that the algorithm applies are made by
// the caller: 3x3 kernel, stride 1, dilation 1, one group).
bool winograd_worthwhile(int channels, int filters, int out_h, int out_w);

// Globally disables (or re-enables) the Winograd path, e.g. to compare it with the plain GEMM path.
void set_winograd_enabled(bool enabled);
bool winograd_enabled();
// Sets the working-set budget of one band of tiles (0: the defaults), so tests can force many bands.
void set_winograd_band_floats(size_t floats);

class WinogradConv {
public:
    // Transforms the 3x3 weights (filters x channels x 3 x 3, row-major) into 36 packed matrices.
    void prepare(const float* weights, int filters, int channels, int out_h, int out_w, Isa isa, Precision precision);
    bool prepared() const { return !u_.empty(); }
    Isa isa() const { return u_.empty() ? Isa::Generic : u_.front().isa(); }
    Precision precision() const { return u_.empty() ? Precision::FP32 : u_.front().precision(); }

    // out (batch x filters x out_h x out_w) = activation(conv(in, pad) + bias), `in` batch x channels x h x w.
    // The activation must be element-wise.
    void forward(const float* in, int batch, int height, int width, int pad, float* out, int out_h, int out_w,
                 const float* bias, int activation) const;

private:
    struct Band;
    int filters_ = 0, channels_ = 0;
    std::vector<PackedMatrix> u_;  // the 36 transformed weight matrices, filters x channels each
};

}  // namespace pd
