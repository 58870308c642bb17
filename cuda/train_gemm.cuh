// The training GEMMs: C (M x N) = A (M x K) * B (K x N) for each group, float32 storage, with A and B read
// element by element through a "problem" that knows where each operand lives (implicit GEMM: the convolution's
// patches and its transposed gathers are never written out). The convolution (forward, weight gradient, input
// gradient) and [connected] (the same three) are problems of this one engine.
//
// Two kernels:
//  * SIMT: float FMA on 64 x 64 tiles, the FP32 path (operands rounded to `op` on the way into shared memory, so
//    it also computes the mixed-precision products, which tests compare the tensor kernel with).
//  * TENSOR: nvcuda::wmma 16x16x16 with FP16/BF16 operands and FP32 accumulation (mixed precision), 64 x 64
//    tiles of 4 warps, each 32 x 32. The operands are rounded to the half type once, when they enter shared
//    memory: the rounding csrc/math/amp.h defines (round to nearest, ties to even).
//
// Deterministic: every C value is summed by one thread in a fixed order. When the tiles alone would leave the GPU
// idle (a weight gradient has few outputs and a K of batch x pixels), K is cut into `splits` ranges summed by
// separate blocks into a float workspace; a second kernel adds the ranges in order. The split count depends only
// on the shape, the requested split (CudaNetwork::split_k) and the number of multiprocessors, so a run repeats
// itself bit for bit on the same GPU model (another model may split differently and round differently).
//
// A problem P provides:
//   int M; long long N, K; int groups;
//   struct Column;  Column column(int group, long long n) const;   what a thread reuses for one column of B
//   float a(int group, int m, long long k) const;                   called for m < M, k < K only
//   float b(int group, const Column&, long long k) const;           for k < K and a column n < N only
//   void store(int group, int m, long long n, float value) const;   the finished value of C[m][n]
#pragma once

#include <mma.h>

#include <algorithm>

#include "cuda_layer.cuh"
#include "math/amp.h"

namespace pd {

// Split-K ranges are whole multiples of the larger tile K (32), so both kernels can run any split.
constexpr int kGemmSplitUnit = 32;

struct GemmSplit {
    int count = 1;
    long long span = 0;  // K per split
};

// requested: 0 automatic, 1 never, n exactly n ranges (fewer when K has fewer units). Automatic splits only a
// GEMM whose tiles would not give every multiprocessor two blocks, into ranges of at least 4 units.
inline GemmSplit choose_gemm_split(long long tiles, long long K, int groups, int requested, int sm_count) {
    const long long units = std::max<long long>(1, (K + kGemmSplitUnit - 1) / kGemmSplitUnit);
    long long wanted = 1;
    if (requested > 1) {
        wanted = requested;
    } else if (requested == 0 && tiles * groups < 2LL * sm_count && units >= 8) {
        wanted = std::min<long long>({(2LL * sm_count + tiles * groups - 1) / (tiles * groups), units / 4, 256});
    }
    wanted = std::max<long long>(1, std::min<long long>({wanted, units, 65535 / groups}));
    const long long per_split = (units + wanted - 1) / wanted;
    GemmSplit split;
    split.count = (int)((units + per_split - 1) / per_split);  // no empty range
    split.span = split.count > 1 ? per_split * kGemmSplitUnit : std::max<long long>(K, 1);
    return split;
}

// ----- SIMT: 64 x 64 tile per block of 256 threads, each thread 4 x 4 values strided by 16 ----------------------

constexpr int kGemmSimtBM = 64, kGemmSimtBN = 64, kGemmSimtBK = 16, kGemmSimtThreads = 256;

// One K tile of a SIMT 64 x 64 product in shared memory (As[k][m], padded rows; Bs[k][n]): thread (tx, ty) of 16 x
// 16 adds to its 4 x 4 values at rows ty + 16 i and columns tx + 16 j. The inference convolution's SIMT kernel
// (cuda/convolutional_kernels.cu) uses it too.
__device__ __forceinline__ void simt_tile_product(const float (&As)[kGemmSimtBK][kGemmSimtBM + 4],
                                                  const float (&Bs)[kGemmSimtBK][kGemmSimtBN], float (&acc)[4][4],
                                                  int tx, int ty) {
#pragma unroll
    for (int kk = 0; kk < kGemmSimtBK; ++kk) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

// The block's group and K range: blockIdx.z = part * groups + group.
struct GemmBlockK {
    int group, part;
    long long begin, end;
};

template <class P>
__device__ __forceinline__ GemmBlockK gemm_block_k(const P& p, const GemmSplit& split) {
    GemmBlockK b;
    b.group = blockIdx.z % p.groups;
    b.part = blockIdx.z / p.groups;
    b.begin = b.part * split.span;
    b.end = b.begin + split.span < p.K ? b.begin + split.span : p.K;
    return b;
}

// The finished value, or with split-K this range's partial sum for the reduction kernel.
template <class P>
__device__ __forceinline__ void gemm_finish(const P& p, const GemmBlockK& b, float* partial, int m, long long n,
                                            float value) {
    if (partial)
        partial[(((long long)b.part * p.groups + b.group) * p.M + m) * p.N + n] = value;
    else
        p.store(b.group, m, n, value);
}

template <class P>
__global__ void __launch_bounds__(kGemmSimtThreads)
    train_gemm_simt_kernel(const P p, const GemmSplit split, float* partial, Precision op) {
    __shared__ float As[kGemmSimtBK][kGemmSimtBM + 4];  // As[k][m]; the padding spreads the stores over banks
    __shared__ float Bs[kGemmSimtBK][kGemmSimtBN];
    const int t = threadIdx.x;
    const GemmBlockK bk = gemm_block_k(p, split);
    const int m0 = blockIdx.y * kGemmSimtBM;
    const long long n0 = (long long)blockIdx.x * kGemmSimtBN;

    // A loads: column k = t % 16 of rows t / 16 + 16 e (consecutive threads read consecutive k: contiguous in
    // every problem's A). B loads: column t % 64 (consecutive pixels) of rows t / 64 + 4 e.
    const int a_k = t % kGemmSimtBK, a_m = t / kGemmSimtBK;
    const int b_n = t % kGemmSimtBN, b_k = t / kGemmSimtBN;
    const bool column_valid = n0 + b_n < p.N;
    const typename P::Column column = p.column(bk.group, column_valid ? n0 + b_n : 0);

    const int tx = t % 16, ty = t / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    // The next tile's operands are read into registers before the current tile's math, so the global loads
    // overlap it; they go to shared memory once every thread is done with the current tile.
    float a_next[4], b_next[4];
    auto fetch = [&](long long k0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = a_m + 16 * e;
            const long long k = k0 + a_k;
            a_next[e] = m0 + m < p.M && k < bk.end ? round_to(op, p.a(bk.group, m0 + m, k)) : 0.f;
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const long long k = k0 + b_k + 4 * e;
            b_next[e] = column_valid && k < bk.end ? round_to(op, p.b(bk.group, column, k)) : 0.f;
        }
    };
    if (bk.begin < bk.end) fetch(bk.begin);
    for (long long k0 = bk.begin; k0 < bk.end; k0 += kGemmSimtBK) {
        __syncthreads();  // every thread is done reading the previous tile
#pragma unroll
        for (int e = 0; e < 4; ++e) As[a_k][a_m + 16 * e] = a_next[e];
#pragma unroll
        for (int e = 0; e < 4; ++e) Bs[b_k + 4 * e][b_n] = b_next[e];
        __syncthreads();
        if (k0 + kGemmSimtBK < bk.end) fetch(k0 + kGemmSimtBK);
        simt_tile_product(As, Bs, acc, tx, ty);
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= p.M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long n = n0 + tx + 16 * j;
            if (n < p.N) gemm_finish(p, bk, partial, m, n, acc[i][j]);
        }
    }
}

// ----- TENSOR: 64 x 64 tile per block of 4 warps (2 x 2), each warp 32 x 32 in 2 x 2 wmma fragments ------------

constexpr int kGemmTensorBM = 64, kGemmTensorBN = 64, kGemmTensorBK = 32, kGemmTensorThreads = 128;
// Row pitches: 8 extra 2-byte elements keep rows 16-byte aligned (wmma: ldm a multiple of 16 bytes, fragment
// pointers 32-byte aligned) and spread them over the shared-memory banks.
constexpr int kGemmTensorALd = kGemmTensorBK + 8, kGemmTensorBLd = kGemmTensorBN + 8;

template <typename T, class P>
__global__ void __launch_bounds__(kGemmTensorThreads)
    train_gemm_tensor_kernel(const P p, const GemmSplit split, float* partial) {
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(128) T As[kGemmTensorBM * kGemmTensorALd];  // As[m][k]
    __shared__ __align__(128) T Bs[kGemmTensorBK * kGemmTensorBLd];  // Bs[k][n]
    __shared__ __align__(128) float Cs[4][16 * 16];                  // one fragment per warp, for the epilogue

    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    const int warp_m = warp / 2, warp_n = warp % 2;
    const GemmBlockK bk = gemm_block_k(p, split);
    const int m0 = blockIdx.y * kGemmTensorBM;
    const long long n0 = (long long)blockIdx.x * kGemmTensorBN;

    // A: column t % 32 of rows t / 32 + 4 e (16 values); B: column t % 64 of rows t / 64 + 2 e (16 values).
    const int a_k = t % kGemmTensorBK, a_m = t / kGemmTensorBK;
    const int b_n = t % kGemmTensorBN, b_k = t / kGemmTensorBN;
    const bool column_valid = n0 + b_n < p.N;
    const typename P::Column column = p.column(bk.group, column_valid ? n0 + b_n : 0);

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    // Register prefetch of the next tile, as in the SIMT kernel (already rounded to T: 16 registers).
    T a_next[16], b_next[16];
    auto fetch = [&](long long k0) {
#pragma unroll
        for (int e = 0; e < 16; ++e) {
            const int m = a_m + 4 * e;
            const long long k = k0 + a_k;
            a_next[e] = from_float<T>(m0 + m < p.M && k < bk.end ? p.a(bk.group, m0 + m, k) : 0.f);
        }
#pragma unroll
        for (int e = 0; e < 16; ++e) {
            const long long k = k0 + b_k + 2 * e;
            b_next[e] = from_float<T>(column_valid && k < bk.end ? p.b(bk.group, column, k) : 0.f);
        }
    };
    if (bk.begin < bk.end) fetch(bk.begin);
    for (long long k0 = bk.begin; k0 < bk.end; k0 += kGemmTensorBK) {
        __syncthreads();  // every warp is done reading the previous tile
#pragma unroll
        for (int e = 0; e < 16; ++e) As[(a_m + 4 * e) * kGemmTensorALd + a_k] = a_next[e];
#pragma unroll
        for (int e = 0; e < 16; ++e) Bs[(b_k + 2 * e) * kGemmTensorBLd + b_n] = b_next[e];
        __syncthreads();
        if (k0 + kGemmTensorBK < bk.end) fetch(k0 + kGemmTensorBK);
#pragma unroll
        for (int kk = 0; kk < kGemmTensorBK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i)
                wmma::load_matrix_sync(a[i], &As[(warp_m * 32 + i * 16) * kGemmTensorALd + kk], kGemmTensorALd);
#pragma unroll
            for (int j = 0; j < 2; ++j)
                wmma::load_matrix_sync(b[j], &Bs[kk * kGemmTensorBLd + warp_n * 32 + j * 16], kGemmTensorBLd);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }

    // Through shared memory, one fragment at a time: the fragments' register layout is unspecified.
    float* staging = Cs[warp];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(staging, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int m = m0 + warp_m * 32 + i * 16 + e / 16;
                const long long n = n0 + warp_n * 32 + j * 16 + e % 16;
                if (m < p.M && n < p.N) gemm_finish(p, bk, partial, m, n, staging[e]);
            }
            __syncwarp();
        }
}

// Split-K second pass: the ranges' partial sums added in range order, then stored.
template <class P>
__global__ void train_gemm_reduce_kernel(const P p, int splits, const float* partial) {
    const long long per_split = (long long)p.groups * p.M * p.N;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < per_split;
         i += (long long)gridDim.x * blockDim.x) {
        float sum = 0.f;
        for (int s = 0; s < splits; ++s) sum += partial[s * per_split + i];
        const long long n = i % p.N;
        const int m = (int)((i / p.N) % p.M), group = (int)(i / (p.N * p.M));
        p.store(group, m, n, sum);
    }
}

// How one GEMM runs: the kernel (tensor cores for FP16/BF16 operands unless SIMT is asked for) and its split.
struct GemmPlan {
    bool tensor = false;
    GemmSplit split;
};

template <class P>
GemmPlan plan_train_gemm(const P& p, Precision op, bool simt_only, int requested_split, int sm_count) {
    GemmPlan plan;
    plan.tensor = op != Precision::FP32 && !simt_only;
    const int bm = plan.tensor ? kGemmTensorBM : kGemmSimtBM, bn = plan.tensor ? kGemmTensorBN : kGemmSimtBN;
    const long long tiles = (p.M + bm - 1) / bm * ((p.N + bn - 1) / bn);
    plan.split = choose_gemm_split(tiles, p.K, p.groups, requested_split, sm_count);
    return plan;
}

// Workspace the plan needs (split-K partial sums), in bytes.
template <class P>
size_t train_gemm_workspace(const P& p, const GemmPlan& plan) {
    return plan.split.count > 1 ? sizeof(float) * plan.split.count * (size_t)p.groups * p.M * p.N : 0;
}

// Runs C = A B of problem p; `workspace` holds at least train_gemm_workspace(p, plan) bytes.
template <class P>
void launch_train_gemm(const P& p, Precision op, const GemmPlan& plan, void* workspace, cudaStream_t stream) {
    if (p.M <= 0 || p.N <= 0) return;
    float* partial = plan.split.count > 1 ? static_cast<float*>(workspace) : nullptr;
    PD_CHECK(plan.split.count == 1 || partial, "a split training GEMM needs the network's workspace");
    const unsigned z = (unsigned)(plan.split.count * p.groups);
    if (plan.tensor) {
        const dim3 grid((unsigned)((p.N + kGemmTensorBN - 1) / kGemmTensorBN),
                        (unsigned)((p.M + kGemmTensorBM - 1) / kGemmTensorBM), z);
        if (op == Precision::BF16)
            PD_LAUNCH(grid, kGemmTensorThreads, 0, stream, train_gemm_tensor_kernel<__nv_bfloat16, P>)(p, plan.split,
                                                                                                       partial);
        else
            PD_LAUNCH(grid, kGemmTensorThreads, 0, stream, train_gemm_tensor_kernel<__half, P>)(p, plan.split, partial);
    } else {
        const dim3 grid((unsigned)((p.N + kGemmSimtBN - 1) / kGemmSimtBN),
                        (unsigned)((p.M + kGemmSimtBM - 1) / kGemmSimtBM), z);
        PD_LAUNCH(grid, kGemmSimtThreads, 0, stream, train_gemm_simt_kernel<P>)(p, plan.split, partial, op);
    }
    PD_CUDA_CHECK_LAUNCH();
    if (plan.split.count > 1) {
        PD_LAUNCH(grid_for((size_t)p.groups * p.M * p.N, 256), 256, 0, stream, train_gemm_reduce_kernel<P>)(
            p, plan.split.count, partial);
        PD_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace pd
