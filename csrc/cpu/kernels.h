// Register-tile micro-kernels of the CPU GEMM, one set per instruction set (kernels_avx512.cpp, kernels_avx2.cpp,
// kernels_generic.cpp), each compiled for its own target so that the build itself stays baseline x86-64.
#pragma once

#include <cstdint>

#include "isa.h"

namespace pd {

// One register tile shape and its kernels. Packed operands: A as panels of mr rows, stored depth-major
// (a[p * mr + i]); B as panels of nr columns, depth-major (b[p * nr + j]); both zero-padded to full panels.
struct MicroKernel {
    int mr = 0, nr = 0;
    // c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + sum_{p < kc} a[p * mr + i] * b[p * nr + j] for
    // i < rows, j < cols.
    void (*fp32)(int kc, const float* a, const float* b, float* c, long ldc, int rows, int cols,
                 bool accumulate) = nullptr;
    // The same over bf16 pairs: a and b hold two bf16 values per 32-bit word (depth 2p in the low half, 2p + 1 in
    // the high half) and kc counts pairs. Null where the instruction set has no bf16 dot product.
    void (*bf16)(int kc, const uint32_t* a, const uint32_t* b, float* c, long ldc, int rows, int cols,
                 bool accumulate) = nullptr;
};

// Tile shapes: wide tiles for GEMMs with many columns, narrow ones (nr = one vector) for few columns.
enum class TileWidth : int { Wide = 0, Narrow = 1 };

const MicroKernel& avx512_kernel(TileWidth width);
const MicroKernel& avx2_kernel(TileWidth width);
const MicroKernel& generic_kernel(TileWidth width);

inline const MicroKernel& micro_kernel(Isa isa, TileWidth width) {
    switch (isa) {
        case Isa::Avx512: return avx512_kernel(width);
        case Isa::Avx2: return avx2_kernel(width);
        default: return generic_kernel(width);
    }
}

}  // namespace pd
