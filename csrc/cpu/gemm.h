// The CPU matrix multiply behind convolutions and connected layers: C = A * B with the weights A packed once into
// micro-kernel panels, B packed block by block straight from its source (a dense matrix, or an image unrolled
// im2col-style without ever writing the full column matrix), and the per-row bias and element-wise activation
// applied to each finished strip of C while it is still in cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "../core/common.h"
#include "aligned.h"
#include "isa.h"
#include "kernels.h"

namespace pd {

// Rounds to the nearest bf16 (ties to even), as the AVX512_BF16 conversions do for normal numbers; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
    uint32_t u = __builtin_bit_cast(uint32_t, f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

inline float round_to_bf16(float f) { return __builtin_bit_cast(float, (uint32_t)float_to_bf16(f) << 16); }

// The left operand (weights: rows x depth, row-major with leading dimension lda) packed for one micro-kernel.
// In bf16 precision the values are rounded to bf16 and stored as pairs for the kernel's bf16 dot products; where
// the instruction set has none, they are stored as float32 values that are exactly the bf16 ones and run on the
// fp32 kernel (the right operand is rounded the same way), which gives the same products.
class PackedMatrix {
public:
    void pack(const float* a, int rows, int depth, long lda, Isa isa, TileWidth width, Precision precision);
    bool empty() const { return rows_ == 0; }
    int rows() const { return rows_; }
    int depth() const { return depth_; }
    // Whether the panels hold bf16 pairs (bf16 precision on a kernel with bf16 dot products).
    bool pairs() const { return precision_ == Precision::BF16 && kernel_->bf16 != nullptr; }
    // Depth as the kernels count it: values, or pairs.
    int kernel_depth() const { return pairs() ? (depth_ + 1) / 2 : depth_; }
    Isa isa() const { return isa_; }
    TileWidth width() const { return width_; }
    Precision precision() const { return precision_; }
    const MicroKernel& kernel() const { return *kernel_; }
    // Start of the panel holding rows [panel * mr, panel * mr + mr), depth-major.
    const float* fp32_panel(int panel) const { return fp32_.data() + (size_t)panel * depth_ * kernel_->mr; }
    const uint32_t* bf16_panel(int panel) const { return bf16_.data() + (size_t)panel * kernel_depth() * kernel_->mr; }

private:
    int rows_ = 0, depth_ = 0;
    Isa isa_ = Isa::Generic;
    TileWidth width_ = TileWidth::Wide;
    Precision precision_ = Precision::FP32;
    const MicroKernel* kernel_ = nullptr;
    AlignedVector<float> fp32_;
    AlignedVector<uint32_t> bf16_;
};

// Writes columns [col_begin, col_begin + cols) of B (all `depth` rows) as panels of nr columns, depth-major
// (out[(panel * depth + p) * nr + j]), zero-filling the last panel beyond `cols`.
using PanelPacker = std::function<void(int col_begin, int cols, int nr, float* out)>;

// Packs B from a dense row-major matrix (depth rows, leading dimension ld), e.g. an image for a 1x1 convolution.
void pack_dense_panels(const float* b, long ld, int depth, int col_begin, int cols, int nr, float* out);

// Geometry of a convolution's input unrolling, as Darknet's im2col_cpu_ext: row (ch * ksize + ky) * ksize + kx,
// column oy * out_w + ox samples (oy * stride_y - pad + ky * dilation, ox * stride_x - pad + kx * dilation),
// 0 outside the image.
struct ConvGeometry {
    int channels = 0, height = 0, width = 0, ksize = 1, pad = 0, stride_y = 1, stride_x = 1, dilation = 1;
    int out_h = 0, out_w = 0;
    int depth() const { return channels * ksize * ksize; }
};

void pack_im2col_panels(const ConvGeometry& g, const float* image, int col_begin, int cols, int nr, float* out);

// Converts a packed fp32 block (depth rows) into bf16 pairs along the depth (odd depth: the last pair's high half
// is zero), panel layout kept.
void fp32_panels_to_bf16(const float* in, int depth, int panels, int nr, uint32_t* out);
// Rounds n floats to bf16 values in place (the right operand of bf16 precision without bf16 kernels).
void round_span_to_bf16(float* x, size_t n);

// C[m_begin:m_end, 0:cols) = A[m_begin:m_end, :] * B for one packed B block (fp32 panels, or bf16 pairs when
// a.pairs()), then c = activation(c + bias[row]) on each finished row strip (bias may be null). Single-threaded;
// m_begin must be a multiple of the kernel's mr.
void gemm_block(const PackedMatrix& a, int m_begin, int m_end, const void* b, int cols, float* c, long ldc,
                const float* bias, int activation);

// The whole product C (a.rows() x n, leading dimension ldc) = A * B + epilogue, with B packed block by block by
// `pack`. Threads split the columns, or also the rows when there are too few columns to go round.
void gemm_packed(const PackedMatrix& a, int n, const PanelPacker& pack, float* c, long ldc, const float* bias,
                 int activation);

struct GemmEpilogue {
    const float* row_bias = nullptr;  // one value per row of C, or null
    int activation = 0;               // an element-wise Activation code (LINEAR = none)
};

// For callers without packed weights: C (M x N) = A (M x K, lda) * B (K x N, ldb), then the epilogue per row.
// Packs A on every call (a few columns, e.g. a connected layer's one, skip packing altogether).
void sgemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
           const GemmEpilogue& epilogue = GemmEpilogue());

}  // namespace pd
