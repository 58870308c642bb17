// The packed GEMM (see gemm.h). Loop order inside one B block: depth blocks of at most kKernelDepth, then row
// panels of A (one A panel, kc x mr, stays in L1), then the B panels of the block (kc x nc, in L2). Threads never
// write the same element of C: they own disjoint column blocks or disjoint row ranges.
#include "gemm.h"

#include <algorithm>
#include <cstring>

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../math/activations.h"
#include "denormals.h"
#include "ops.h"

namespace pd {
namespace {

// Longest depth one kernel call accumulates before C is written back: long enough that the C round trip is
// negligible, short enough that the A panel and the B block slice stay in L1/L2 (measured: 512 beat longer runs
// on 4608-deep products and equalled them elsewhere).
constexpr int kKernelDepth = 512;
// Target size of the slice of a packed B block that one depth block uses, in floats (384 KB: over a third of a
// Zen 4 core's L2), so that each A panel slice loaded into L1 serves several B panels.
constexpr int kBlockFloats = 96 * 1024;

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int round_up(int v, int to) { return (v + to - 1) / to * to; }

}  // namespace

void PackedMatrix::pack(const float* a, int rows, int depth, long lda, Isa isa, TileWidth width, Precision precision) {
    rows_ = rows;
    depth_ = depth;
    isa_ = isa;
    width_ = width;
    precision_ = precision;
    kernel_ = &micro_kernel(isa, width);
    const int mr = kernel_->mr, panels = (rows + mr - 1) / mr;
    if (!pairs()) {
        const bool round = precision == Precision::BF16;
        bf16_ = AlignedVector<uint32_t>();
        fp32_.assign((size_t)panels * depth * mr, 0.f);
        for (int pnl = 0; pnl < panels; ++pnl) {
            float* out = fp32_.data() + (size_t)pnl * depth * mr;
            for (int i = 0; i < mr && pnl * mr + i < rows; ++i) {
                const float* src = a + (size_t)(pnl * mr + i) * lda;
                for (int p = 0; p < depth; ++p) out[(size_t)p * mr + i] = round ? round_to_bf16(src[p]) : src[p];
            }
        }
        return;
    }
    fp32_ = AlignedVector<float>();
    const int pairs = (depth + 1) / 2;
    bf16_.assign((size_t)panels * pairs * mr, 0u);
    for (int pnl = 0; pnl < panels; ++pnl) {
        uint32_t* out = bf16_.data() + (size_t)pnl * pairs * mr;
        for (int i = 0; i < mr && pnl * mr + i < rows; ++i) {
            const float* src = a + (size_t)(pnl * mr + i) * lda;
            for (int q = 0; q < pairs; ++q) {
                const uint32_t lo = float_to_bf16(src[2 * q]);
                const uint32_t hi = 2 * q + 1 < depth ? float_to_bf16(src[2 * q + 1]) : 0u;
                out[(size_t)q * mr + i] = lo | (hi << 16);
            }
        }
    }
}

void pack_dense_panels(const float* b, long ld, int depth, int col_begin, int cols, int nr, float* out) {
    const int panels = (cols + nr - 1) / nr;
    for (int p = 0; p < depth; ++p) {
        const float* row = b + (size_t)p * ld + col_begin;
        for (int j = 0; j < panels; ++j) {
            float* dst = out + ((size_t)j * depth + p) * nr;
            const int n = std::min(nr, cols - j * nr);
            std::memcpy(dst, row + (size_t)j * nr, sizeof(float) * n);
            if (n < nr) std::memset(dst + n, 0, sizeof(float) * (nr - n));
        }
    }
}

namespace {

// A whole panel row inside the image, with the length and stride known at compile time: straight-line vector code.
template <int N, int S>
__attribute__((always_inline)) inline void copy_run(const float* __restrict src, float* __restrict dst) {
    for (int t = 0; t < N; ++t) dst[t] = src[S * t];
}

// One depth row of an im2col run: run consecutive output columns starting at column x0 of the input row `src`
// (null: the row lies outside the image), stepping stride_x, zero where x falls outside [0, width).
__attribute__((always_inline)) inline void unroll_row(const float* src, int x0, int stride_x, int width, int run,
                                                      float* dst) {
    if (src && x0 >= 0 && x0 + (run - 1) * stride_x < width && (stride_x == 1 || stride_x == 2) &&
        (run == 48 || run == 16)) {  // the common case: a full wide (48) or narrow (16) panel row
        if (run == 48)
            stride_x == 1 ? copy_run<48, 1>(src + x0, dst) : copy_run<48, 2>(src + x0, dst);
        else
            stride_x == 1 ? copy_run<16, 1>(src + x0, dst) : copy_run<16, 2>(src + x0, dst);
        return;
    }
    if (!src) {
        std::memset(dst, 0, sizeof(float) * run);
        return;
    }
    // valid t: 0 <= x0 + t * stride_x < width (divisions only at the image edges)
    int lo = 0, hi = run;
    if (x0 < 0 || x0 + (run - 1) * stride_x >= width) {
        lo = std::clamp(x0 >= 0 ? 0 : (-x0 + stride_x - 1) / stride_x, 0, run);
        hi = std::clamp(width - x0 <= 0 ? 0 : (width - x0 + stride_x - 1) / stride_x, lo, run);
    }
    for (int t = 0; t < lo; ++t) dst[t] = 0.f;
    if (stride_x == 1)
        std::memcpy(dst + lo, src + x0 + lo, sizeof(float) * (hi - lo));
    else if (stride_x == 2)  // a separate loop with a constant stride, which vectorises (even/odd permutes)
        for (int t = lo; t < hi; ++t) dst[t] = src[x0 + 2 * t];
    else
        for (int t = lo; t < hi; ++t) dst[t] = src[x0 + t * stride_x];
    for (int t = hi; t < run; ++t) dst[t] = 0.f;
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void pack_im2col_panels(
    const ConvGeometry& g, const float* image, int col_begin, int cols, int nr, float* out) {
    const int depth = g.depth();
    const int panels = (cols + nr - 1) / nr;
    if (cols < panels * nr) {
        const int tail = panels * nr - cols;
        float* last = out + (size_t)(panels - 1) * depth * nr + (nr - tail);
        for (int p = 0; p < depth; ++p) std::memset(last + (size_t)p * nr, 0, sizeof(float) * tail);
    }
    // Runs of columns that share one output row and one panel: within a run, one depth row is a (strided) slice
    // of one input row. Depth rows outermost, so that consecutive runs read consecutive parts of the same input
    // rows (a few long streams instead of one short stream per channel and kernel row, which starves the
    // prefetchers on large images).
    struct Run {
        int y_base, x_base, len;
        size_t offset;  // of the run's first value in `out`
    };
    thread_local std::vector<Run> runs;
    runs.clear();
    for (int j = 0; j < cols;) {
        const int col = col_begin + j, oy = col / g.out_w, ox = col % g.out_w;
        const int lane = j % nr;
        const int len = std::min({g.out_w - ox, nr - lane, cols - j});
        runs.push_back({oy * g.stride_y - g.pad, ox * g.stride_x - g.pad, len, (size_t)(j / nr) * depth * nr + lane});
        j += len;
    }
    int r = 0;
    for (int ch = 0; ch < g.channels; ++ch) {
        const float* plane = image + (size_t)ch * g.height * g.width;
        for (int ky = 0; ky < g.ksize; ++ky)
            for (int kx = 0; kx < g.ksize; ++kx, ++r)
                for (const Run& run : runs) {
                    const int y = run.y_base + ky * g.dilation;
                    const float* src = (y >= 0 && y < g.height) ? plane + (size_t)y * g.width : nullptr;
                    unroll_row(src, run.x_base + kx * g.dilation, g.stride_x, g.width, run.len,
                               out + run.offset + (size_t)r * nr);
                }
    }
}

namespace {

// fp32_panels_to_bf16 with AVX512_BF16: vcvtne2ps2bf16 rounds 32 values (to nearest even) and one permute
// interleaves each value of depth 2q with the one of depth 2q + 1 below it.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void panels_to_bf16_avx512(const float* in, int depth,
                                                                                  int panels, int nr, uint32_t* out) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                                6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const int pairs = (depth + 1) / 2;
    for (int pnl = 0; pnl < panels; ++pnl) {
        const float* src = in + (size_t)pnl * depth * nr;
        uint32_t* dst = out + (size_t)pnl * pairs * nr;
        for (int q = 0; q < pairs; ++q) {
            const float* lo = src + (size_t)2 * q * nr;
            const bool has_hi = 2 * q + 1 < depth;
            for (int j = 0; j < nr; j += 16) {
                const __m512 hi = has_hi ? _mm512_loadu_ps(lo + nr + j) : _mm512_setzero_ps();
                const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, _mm512_loadu_ps(lo + j));
                _mm512_storeu_si512(dst + (size_t)q * nr + j, _mm512_permutexvar_epi16(interleave, both));
            }
        }
    }
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void fp32_panels_to_bf16(
    const float* in, int depth, int panels, int nr, uint32_t* out) {
    if (nr % 16 == 0 && cpu_has_avx512_bf16()) {
        panels_to_bf16_avx512(in, depth, panels, nr, out);
        return;
    }
    const int pairs = (depth + 1) / 2;
    for (int pnl = 0; pnl < panels; ++pnl) {
        const float* src = in + (size_t)pnl * depth * nr;
        uint32_t* dst = out + (size_t)pnl * pairs * nr;
        for (int q = 0; q < pairs; ++q) {
            const float* lo = src + (size_t)2 * q * nr;
            const bool has_hi = 2 * q + 1 < depth;
            for (int j = 0; j < nr; ++j)
                dst[(size_t)q * nr + j] =
                    (uint32_t)float_to_bf16(lo[j]) | ((has_hi ? (uint32_t)float_to_bf16(lo[nr + j]) : 0u) << 16);
        }
    }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void round_span_to_bf16(float* x,
                                                                                                      size_t n) {
    for (size_t i = 0; i < n; ++i) x[i] = round_to_bf16(x[i]);
}

void gemm_block(const PackedMatrix& a, int m_begin, int m_end, const void* b, int cols, float* c, long ldc,
                const float* bias, int activation) {
    const MicroKernel& k = a.kernel();
    const int mr = k.mr, nr = k.nr, depth = a.kernel_depth();
    const int panels = (cols + nr - 1) / nr;
    const int blocks = std::max(1, (depth + kKernelDepth - 1) / kKernelDepth);
    const int kc_step = (depth + blocks - 1) / blocks;
    const bool bf16 = a.pairs();
    const bool epilogue = bias != nullptr || activation != LINEAR;
    for (int k0 = 0; k0 < depth || k0 == 0; k0 += kc_step) {
        const int kc = std::min(kc_step, depth - k0);
        const bool last = k0 + kc >= depth;
        for (int i = m_begin; i < m_end; i += mr) {
            const int rows = std::min(mr, m_end - i);
            float* c_rows = c + (size_t)i * ldc;
            for (int j = 0; j < panels; ++j) {
                const size_t b_offset = ((size_t)j * depth + k0) * nr;
                if (bf16)
                    k.bf16(kc, a.bf16_panel(i / mr) + (size_t)k0 * mr, static_cast<const uint32_t*>(b) + b_offset,
                           c_rows + (size_t)j * nr, ldc, rows, std::min(nr, cols - j * nr), k0 > 0);
                else
                    k.fp32(kc, a.fp32_panel(i / mr) + (size_t)k0 * mr, static_cast<const float*>(b) + b_offset,
                           c_rows + (size_t)j * nr, ldc, rows, std::min(nr, cols - j * nr), k0 > 0);
            }
            if (last && epilogue)
                for (int r = 0; r < rows; ++r)
                    activate_span(c_rows + (size_t)r * ldc, (size_t)cols, activation, bias ? bias[i + r] : 0.f);
        }
        if (depth == 0) break;
    }
}

void gemm_packed(const PackedMatrix& a, int n, const PanelPacker& pack, float* c, long ldc, const float* bias,
                 int activation) {
    const int m = a.rows(), depth = a.depth();
    if (m <= 0 || n <= 0) return;
    const MicroKernel& k = a.kernel();
    const int mr = k.mr, nr = k.nr, threads = max_threads();
    // Column blocks of about kBlockFloats packed floats; if that leaves fewer than two blocks per thread, narrower
    // blocks, and if the columns still do not go round, the rows are split as well.
    int nc = std::clamp(kBlockFloats / std::max(std::min(depth, kKernelDepth), 1) / nr * nr, nr, 16 * nr);
    if ((n + nc - 1) / nc < 2 * threads) nc = std::max(nr, round_up((n + 2 * threads - 1) / (2 * threads), nr));
    const int col_blocks = (n + nc - 1) / nc;
    const int row_panels = (m + mr - 1) / mr;
    const int row_chunks =
        col_blocks >= 2 * threads ? 1 : std::min(row_panels, (2 * threads + col_blocks - 1) / col_blocks);
    const int chunk_rows = (row_panels + row_chunks - 1) / row_chunks * mr;
    const int tasks = col_blocks * row_chunks;
    const bool bf16 = a.pairs(), round = a.precision() == Precision::BF16 && !bf16;
    const size_t block_floats = (size_t)std::max(depth, 1) * round_up(std::min(nc, n), nr);
    const bool parallel = tasks > 1 && (double)m * n * depth > 2e5;
#pragma omp parallel if (parallel)
    {
        DenormalsAsZero flush;
        static thread_local AlignedVector<float> packed;
        static thread_local AlignedVector<uint32_t> packed_bf16;
        if (packed.size() < block_floats) packed.resize(block_floats);
        if (bf16 && packed_bf16.size() < block_floats) packed_bf16.resize(block_floats);
        int packed_block = -1;
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tasks; ++t) {
            const int block = t / row_chunks, chunk = t % row_chunks;
            const int col0 = block * nc, cols = std::min(nc, n - col0);
            if (block != packed_block) {
                pack(col0, cols, nr, packed.data());
                const int panels = (cols + nr - 1) / nr;
                if (bf16) fp32_panels_to_bf16(packed.data(), depth, panels, nr, packed_bf16.data());
                if (round) round_span_to_bf16(packed.data(), (size_t)panels * nr * depth);
                packed_block = block;
            }
            const int row0 = chunk * chunk_rows, row1 = std::min(m, row0 + chunk_rows);
            if (row0 < row1)
                gemm_block(a, row0, row1, bf16 ? (const void*)packed_bf16.data() : (const void*)packed.data(), cols,
                           c + col0, ldc, bias, activation);
        }
    }
}

void sgemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
           const GemmEpilogue& epilogue) {
    if (M <= 0 || N <= 0) return;
    if (N <= 4 || K <= 0) {
        // Matrix-vector products: packing would cost as much as the product.
#pragma omp parallel for schedule(static) if ((double)M * N * K > 2e5)
        for (int i = 0; i < M; ++i) {
            float* row = C + (size_t)i * ldc;
            for (int j = 0; j < N; ++j) {
                float sum = 0.f;
                for (int p = 0; p < K; ++p) sum += A[(size_t)i * lda + p] * B[(size_t)p * ldb + j];
                row[j] = sum;
            }
            activate_span(row, (size_t)N, epilogue.activation, epilogue.row_bias ? epilogue.row_bias[i] : 0.f);
        }
        return;
    }
    PackedMatrix packed;
    packed.pack(A, M, K, lda, active_isa(), TileWidth::Wide, Precision::FP32);
    gemm_packed(
        packed, N, [&](int col0, int cols, int nr, float* out) { pack_dense_panels(B, ldb, K, col0, cols, nr, out); },
        C, ldc, epilogue.row_bias, epilogue.activation);
}

}  // namespace pd
