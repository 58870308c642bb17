// Baseline x86-64 micro-kernel (SSE2 only): a 4 x 8 tile in plain C++ that the compiler vectorises. It keeps
// CPUs without AVX2 correct; speed there is not a goal.
#include "kernels.h"

namespace pd {
namespace {

template <int MR, int NR>
void fp32_tile(int kc, const float* __restrict a, const float* __restrict b, float* c, long ldc, int rows, int cols,
               bool accumulate) {
    float acc[MR][NR] = {};
    for (int p = 0; p < kc; ++p) {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
        a += MR;
        b += NR;
    }
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0.f) + acc[i][j];
}

}  // namespace

const MicroKernel& generic_kernel(TileWidth width) {
    static const MicroKernel tile = [] {
        MicroKernel k;
        k.mr = 4;
        k.nr = 8;
        k.fp32 = fp32_tile<4, 8>;
        return k;
    }();
    (void)width;
    return tile;
}

}  // namespace pd
