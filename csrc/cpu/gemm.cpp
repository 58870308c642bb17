// Blocked SGEMM: A and B are packed into register-tile panels and a 6x16 micro-kernel accumulates a tile of C in
// registers. The micro-kernel is plain C++ that the compiler vectorises; the driver is cloned for AVX-512, AVX2
// and baseline x86-64 and the best clone is chosen at run time from the CPU's flags, so one build runs well on
// any x86-64 machine. Threads split C into independent tiles, so no two threads ever write the same element.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

namespace pd {
namespace {

constexpr int MR = 6;     // rows of the register tile
constexpr int NR = 16;    // columns of the register tile
constexpr int KC = 256;   // depth of one packed block
constexpr int MC = 120;   // rows of C per thread tile (multiple of MR)
constexpr int NC = 512;   // columns of C per thread tile (multiple of NR)

// Packs rows [0, mc) x depth [0, kc) of A into MR-row panels, zero-padding the last panel.
inline void pack_a(int mc, int kc, const float* A, int lda, float* out) {
    for (int i0 = 0; i0 < mc; i0 += MR) {
        const int rows = std::min(MR, mc - i0);
        for (int p = 0; p < kc; ++p) {
            for (int i = 0; i < rows; ++i) out[p * MR + i] = A[(size_t)(i0 + i) * lda + p];
            for (int i = rows; i < MR; ++i) out[p * MR + i] = 0.f;
        }
        out += (size_t)MR * kc;
    }
}

// Packs depth [0, kc) x columns [0, nc) of B into NR-column panels, zero-padding the last panel.
inline void pack_b(int kc, int nc, const float* B, int ldb, float* out) {
    for (int j0 = 0; j0 < nc; j0 += NR) {
        const int cols = std::min(NR, nc - j0);
        for (int p = 0; p < kc; ++p) {
            const float* src = B + (size_t)p * ldb + j0;
            float* dst = out + p * NR;
            if (cols == NR) {
                std::memcpy(dst, src, NR * sizeof(float));
            } else {
                for (int j = 0; j < cols; ++j) dst[j] = src[j];
                for (int j = cols; j < NR; ++j) dst[j] = 0.f;
            }
        }
        out += (size_t)NR * kc;
    }
}

// Eight floats: one AVX2 register (the AVX-512 clone uses the 256-bit forms, which run at full rate on the
// CPUs that split 512-bit instructions; the baseline clone uses two SSE registers).
typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// C[rows x cols] (+)= packed A panel (MR x kc) * packed B panel (kc x NR), accumulated in 12 vector registers.
__attribute__((always_inline)) inline void micro_kernel(int kc, const float* __restrict a, const float* __restrict b,
                                                        float* C, int ldc, int rows, int cols, bool accumulate) {
    v8 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = v8{};
    for (int p = 0; p < kc; ++p) {
        const v8 b0 = load8(b + p * NR), b1 = load8(b + p * NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            const float ai = a[p * MR + i];
            const v8 av = {ai, ai, ai, ai, ai, ai, ai, ai};
            acc[i][0] += av * b0;
            acc[i][1] += av * b1;
        }
    }
    if (rows == MR && cols == NR) {
        for (int i = 0; i < MR; ++i) {
            float* c = C + (size_t)i * ldc;
            v8 lo = acc[i][0], hi = acc[i][1];
            if (accumulate) {
                lo += load8(c);
                hi += load8(c + 8);
            }
            std::memcpy(c, &lo, sizeof(lo));
            std::memcpy(c + 8, &hi, sizeof(hi));
        }
        return;
    }
    float tile[MR][NR];
    std::memcpy(tile, acc, sizeof(tile));
    for (int i = 0; i < rows; ++i) {
        float* c = C + (size_t)i * ldc;
        if (accumulate)
            for (int j = 0; j < cols; ++j) c[j] += tile[i][j];
        else
            for (int j = 0; j < cols; ++j) c[j] = tile[i][j];
    }
}

void apply_epilogue(int mc, int nc, float* C, int ldc, const float* bias, int activation) {
    for (int i = 0; i < mc; ++i) activate_span(C + (size_t)i * ldc, nc, activation, bias ? bias[i] : 0.f);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void compute_tile(int mc, int nc, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                  float* packed_a, float* packed_b, const float* bias, int activation) {
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = std::min(KC, K - k0);
        pack_a(mc, kc, A + k0, lda, packed_a);
        pack_b(kc, nc, B + (size_t)k0 * ldb, ldb, packed_b);
        for (int j0 = 0; j0 < nc; j0 += NR) {
            const float* b = packed_b + (size_t)(j0 / NR) * NR * kc;
            for (int i0 = 0; i0 < mc; i0 += MR) {
                const float* a = packed_a + (size_t)(i0 / MR) * MR * kc;
                micro_kernel(kc, a, b, C + (size_t)i0 * ldc + j0, ldc, std::min(MR, mc - i0),
                             std::min(NR, nc - j0), k0 > 0);
            }
        }
    }
    apply_epilogue(mc, nc, C, ldc, bias, activation);
}

}  // namespace

void sgemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
           const GemmEpilogue& epilogue) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; ++i) std::fill(C + (size_t)i * ldc, C + (size_t)i * ldc + N, 0.f);
        apply_epilogue(M, N, C, ldc, epilogue.row_bias, epilogue.activation);
        return;
    }
    // Narrow outputs (small feature maps) get narrower, taller tiles so both threads have work.
    const int nc_block = N >= 2 * NC ? NC : std::max(NR, ((N + 1) / 2 + NR - 1) / NR * NR);
    const int m_tiles = (M + MC - 1) / MC, n_tiles = (N + nc_block - 1) / nc_block;
    const int tiles = m_tiles * n_tiles;
#pragma omp parallel if (tiles > 1 && (double)M * N * K > 2e5)
    {
        static thread_local std::vector<float> packed_a, packed_b;
        packed_a.resize((size_t)MC * KC);
        packed_b.resize((size_t)KC * (nc_block + NR));
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tiles; ++t) {
            const int i0 = (t / n_tiles) * MC, j0 = (t % n_tiles) * nc_block;
            const int mc = std::min(MC, M - i0), nc = std::min(nc_block, N - j0);
            compute_tile(mc, nc, K, A + (size_t)i0 * lda, lda, B + j0, ldb, C + (size_t)i0 * ldc + j0, ldc,
                         packed_a.data(), packed_b.data(), epilogue.row_bias ? epilogue.row_bias + i0 : nullptr,
                         epilogue.activation);
        }
    }
}

}  // namespace pd
