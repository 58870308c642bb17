// [convolutional] on the GPU as an implicit GEMM, per group: C (filters x pixels of the whole batch) =
// A (filters x K, the batch-norm-folded weights) * B (K x pixels, the image patches, gathered on the fly: no
// im2col buffer), K = in_channels/groups * size * size. The epilogue adds the folded bias, applies the activation
// and, for a folded [shortcut], adds the residual and applies the shortcut's activation, then stores the
// precision's type.
//
// Two paths (see cuda/NOTES.md for their versions):
//  * SIMT: 64x64 tiles, float FMA, float weights, any storage type. The simple path every other one is tested
//    against, and the FP32 path.
//  * TENSOR: nvcuda::wmma 16x16x16 tiles, FP16/BF16 operands, FP32 accumulation, 128-pixel tiles of 32..128
//    filters chosen by the filter count. wmma rather than hand-written mma.sync: the fragment layouts stay the
//    compiler's business (a wrong register layout is the classic way for such a kernel to fail), and it compiles
//    to the same HMMA instructions on sm_90; mma.sync/wgmma with hand-placed fragments is the next version.
//
// Split-K: when a layer gives too few blocks to fill the GPU (small maps at small batch), its K range is cut into
// `splits` parts run by separate blocks, which write float partial sums to a workspace; a second kernel adds
// them in a fixed order and runs the epilogue. CudaNetwork::split_k picks auto (the default), never, or a fixed
// count (for the tests).
//
// Host-side preparation (once per parameter change): weights padded to [groups][M_pad][K_pad] with zeros
// (M_pad a multiple of 128, K_pad of 32) so that tile loads need no bounds checks, and a table with one entry
// per k = (channel, ky, kx): the offset of that tap from the patch origin and its (dy, dx); padding entries
// carry a dy that puts every sample outside the image, so they read 0.
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/ops.h"
#include "cuda_layer.cuh"
#include "train_gemm.cuh"
#include "math/activations.h"
#include "math/amp.h"

namespace pd {
namespace {

constexpr int kTensorBK = 32;  // K step of the tensor-core tiles (and K padding)
constexpr int kMPad = 128;     // filter padding: the largest tile height
constexpr int kOutsideImage = -(1 << 29);

struct ConvGeometry {
    int in_h = 0, in_w = 0, in_plane = 0;
    int out_w = 0, out_plane = 0;
    int in_c_g = 0;  // input channels per group
    int M = 0;       // filters per group
    int K_pad = 0, M_pad = 0;
    int stride_x = 1, stride_y = 1, pad = 0;
};

template <typename T, typename W>
struct ConvParams {
    const T* in = nullptr;
    long long in_stride = 0;  // elements between images
    T* out = nullptr;
    long long out_stride = 0;
    const T* residual = nullptr;
    long long residual_stride = 0;
    const W* weights = nullptr;   // [groups][M_pad][K_pad]
    const float* bias = nullptr;  // [groups * M]
    const int4* taps = nullptr;   // [K_pad]: x offset from the patch origin, y dy, z dx
    float* partial = nullptr;     // split-K: [splits][groups][M][batch * out_plane] partial sums, else null
    int groups = 1;
    int k_span = 0;  // split-K: K range per split (a multiple of kTensorBK); K_pad without splits
    int batch = 1;
    int activation = 0, residual_activation = 0;
    ConvGeometry g;
};

// Where one output pixel's patch starts: origin element offset (may be negative) and top-left (y, x).
struct PatchOrigin {
    long long base = 0;
    int y0 = 0, x0 = 0;
    bool valid = false;
};

template <typename T, typename W>
__device__ __forceinline__ PatchOrigin patch_origin(const ConvParams<T, W>& p, int group, long long n,
                                                    long long total_n) {
    PatchOrigin o;
    if (n >= total_n) return o;
    const long long b = n / p.g.out_plane;
    const int pixel = (int)(n - b * p.g.out_plane);
    const int oy = pixel / p.g.out_w, ox = pixel - (pixel / p.g.out_w) * p.g.out_w;
    o.y0 = oy * p.g.stride_y - p.g.pad;
    o.x0 = ox * p.g.stride_x - p.g.pad;
    o.base = b * p.in_stride + (long long)group * p.g.in_c_g * p.g.in_plane + (long long)o.y0 * p.g.in_w + o.x0;
    o.valid = true;
    return o;
}

template <typename T, typename W>
__device__ __forceinline__ T gather(const ConvParams<T, W>& p, const PatchOrigin& o, const int4& tap) {
    const int y = o.y0 + tap.y, x = o.x0 + tap.z;
    if (o.valid && (unsigned)y < (unsigned)p.g.in_h && (unsigned)x < (unsigned)p.g.in_w) return p.in[o.base + tap.x];
    return from_float<T>(0.f);
}

// Bias, activation, optional residual; `m` is the filter within the group, `n` the pixel over the batch.
template <typename T, typename W>
__device__ __forceinline__ void store_output(const ConvParams<T, W>& p, int group, int m, long long n, float acc) {
    const long long b = n / p.g.out_plane;
    const long long pixel = n - b * p.g.out_plane;
    const long long channel = (long long)group * p.g.M + m;
    float v = activate(acc + p.bias[channel], p.activation);
    if (p.residual) {
        v += to_float(p.residual[b * p.residual_stride + channel * p.g.out_plane + pixel]);
        v = activate(v, p.residual_activation);
    }
    p.out[b * p.out_stride + channel * p.g.out_plane + pixel] = from_float<T>(v);
}

// The block's group and K range: blockIdx.z = split * groups + group.
struct BlockK {
    int group, split, begin, end;
};

template <typename T, typename W>
__device__ __forceinline__ BlockK block_k(const ConvParams<T, W>& p) {
    BlockK b;
    b.group = blockIdx.z % p.groups;
    b.split = blockIdx.z / p.groups;
    b.begin = b.split * p.k_span;
    b.end = b.begin + p.k_span < p.g.K_pad ? b.begin + p.k_span : p.g.K_pad;
    return b;
}

// The epilogue, or with split-K the partial sum for the reduction kernel.
template <typename T, typename W>
__device__ __forceinline__ void finish(const ConvParams<T, W>& p, const BlockK& b, int m, long long n,
                                       long long total_n, float acc) {
    if (p.partial)
        p.partial[(((long long)b.split * p.groups + b.group) * p.g.M + m) * total_n + n] = acc;
    else
        store_output(p, b.group, m, n, acc);
}

// Split-K second pass: partial sums added in split order, then the epilogue.
template <typename T, typename W>
__global__ void split_k_reduce_kernel(const ConvParams<T, W> p, int splits) {
    const long long total_n = (long long)p.batch * p.g.out_plane;
    const long long per_split = (long long)p.groups * p.g.M * total_n;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < per_split;
         i += (long long)gridDim.x * blockDim.x) {
        float sum = 0.f;
        for (int s = 0; s < splits; ++s) sum += p.partial[s * per_split + i];
        const long long n = i % total_n;
        const int m = (int)((i / total_n) % p.g.M), group = (int)(i / (total_n * p.g.M));
        store_output(p, group, m, n, sum);
    }
}

// ----- SIMT: 64 x 64 tile per block of 256 threads, each thread 4 x 4 outputs strided by 16 -------------------

constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;
static_assert(kSimtBM == kGemmSimtBM && kSimtBN == kGemmSimtBN && kSimtBK == kGemmSimtBK,
              "the inference SIMT tile is the training GEMM's (simt_tile_product)");

template <typename T>
__global__ void __launch_bounds__(kSimtThreads) conv_simt_kernel(const ConvParams<T, float> p) {
    __shared__ float As[kSimtBK][kSimtBM + 4];  // As[k][m]; the padding halves bank conflicts on the stores
    __shared__ float Bs[kSimtBK][kSimtBN];
    const int t = threadIdx.x;
    const BlockK bk = block_k(p);
    const int group = bk.group;
    const int m0 = blockIdx.y * kSimtBM;
    const long long n0 = (long long)blockIdx.x * kSimtBN;
    const long long total_n = (long long)p.batch * p.g.out_plane;
    const float* A = p.weights + (size_t)group * p.g.M_pad * p.g.K_pad;

    // B loads: this thread always fills column t % 64, rows t / 64 + 4e.
    const int load_n = t % kSimtBN;
    const PatchOrigin origin = patch_origin(p, group, n0 + load_n, total_n);

    const int tx = t % 16, ty = t / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    for (int k0 = bk.begin; k0 < bk.end; k0 += kSimtBK) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int idx = t + e * kSimtThreads;
            const int m = idx / kSimtBK, k = idx % kSimtBK;
            As[k][m] = A[(size_t)(m0 + m) * p.g.K_pad + k0 + k];
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int k = t / kSimtBN + 4 * e;
            Bs[k][load_n] = to_float(gather(p, origin, p.taps[k0 + k]));
        }
        __syncthreads();
        simt_tile_product(As, Bs, acc, tx, ty);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= p.g.M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long n = n0 + tx + 16 * j;
            if (n < total_n) finish(p, bk, m, n, total_n, acc[i][j]);
        }
    }
}

// ----- TENSOR: BM x 128 tile per block of 8 warps, each warp WM x WN in 16 x 16 wmma fragments ----------------

template <typename T, int BM, int BN, int WM, int WN>
struct TensorTile {
    static constexpr int BK = kTensorBK;
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int FM = WM / 16, FN = WN / 16;
    // Row pitches in elements: 8 extra 2-byte elements keep 16-byte row alignment and spread the rows over the
    // shared-memory banks; wmma needs ldm % 8 == 0 and 32-byte aligned fragment pointers, which these give.
    static constexpr int A_LD = BK + 8, B_LD = BN + 8;
    static constexpr int A_VECTORS = BM * BK / 8;  // 16-byte vectors of 8 weights per tile
    static constexpr int A_VECTORS_PER_THREAD = (A_VECTORS + THREADS - 1) / THREADS;
    static constexpr int B_ROWS_PER_PASS = THREADS / BN;
    static constexpr int B_PASSES = BK / B_ROWS_PER_PASS;
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "tile shape");
    static_assert(THREADS % BN == 0 && BK % B_ROWS_PER_PASS == 0, "B tile loading");
    static_assert(kMPad % BM == 0, "weights are padded for this tile height");
};

template <typename T, int BM, int BN, int WM, int WN>
__global__ void __launch_bounds__(TensorTile<T, BM, BN, WM, WN>::THREADS) conv_tensor_kernel(const ConvParams<T, T> p) {
    using Tile = TensorTile<T, BM, BN, WM, WN>;
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(128) T As[BM * Tile::A_LD];                             // As[m][k]
    __shared__ __align__(128) T Bs[Tile::BK * Tile::B_LD];                       // Bs[k][n]
    __shared__ __align__(128) float Cs[Tile::WARPS_M * Tile::WARPS_N][16 * 16];  // one fragment per warp

    const int t = threadIdx.x;
    const int warp = t / 32, lane = t % 32;
    const int warp_m = warp / Tile::WARPS_N, warp_n = warp % Tile::WARPS_N;
    const BlockK bk = block_k(p);
    const int group = bk.group;
    const int m0 = blockIdx.y * BM;
    const long long n0 = (long long)blockIdx.x * BN;
    const long long total_n = (long long)p.batch * p.g.out_plane;
    const T* A = p.weights + (size_t)group * p.g.M_pad * p.g.K_pad;

    const int load_n = t % BN;
    const int load_k = t / BN;
    const PatchOrigin origin = patch_origin(p, group, n0 + load_n, total_n);

    uint4 a_regs[Tile::A_VECTORS_PER_THREAD];
    T b_regs[Tile::B_PASSES];
    // Global -> registers for the tile at k0; issued before the current tile's math so the loads overlap it.
    auto load_tile = [&](int k0) {
#pragma unroll
        for (int e = 0; e < Tile::A_VECTORS_PER_THREAD; ++e) {
            const int v = t + e * Tile::THREADS;
            if (v < Tile::A_VECTORS) {
                const int row = v / (Tile::BK / 8), column = (v % (Tile::BK / 8)) * 8;
                a_regs[e] = *reinterpret_cast<const uint4*>(A + (size_t)(m0 + row) * p.g.K_pad + k0 + column);
            }
        }
#pragma unroll
        for (int e = 0; e < Tile::B_PASSES; ++e)
            b_regs[e] = gather(p, origin, p.taps[k0 + load_k + e * Tile::B_ROWS_PER_PASS]);
    };
    auto store_tile = [&]() {
#pragma unroll
        for (int e = 0; e < Tile::A_VECTORS_PER_THREAD; ++e) {
            const int v = t + e * Tile::THREADS;
            if (v < Tile::A_VECTORS) {
                const int row = v / (Tile::BK / 8), column = (v % (Tile::BK / 8)) * 8;
                *reinterpret_cast<uint4*>(&As[row * Tile::A_LD + column]) = a_regs[e];
            }
        }
#pragma unroll
        for (int e = 0; e < Tile::B_PASSES; ++e)
            Bs[(load_k + e * Tile::B_ROWS_PER_PASS) * Tile::B_LD + load_n] = b_regs[e];
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[Tile::FM][Tile::FN];
#pragma unroll
    for (int i = 0; i < Tile::FM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    if (bk.begin < bk.end) load_tile(bk.begin);
    for (int k0 = bk.begin; k0 < bk.end; k0 += Tile::BK) {
        __syncthreads();  // every warp is done reading the previous tile
        store_tile();
        __syncthreads();
        if (k0 + Tile::BK < bk.end) load_tile(k0 + Tile::BK);
#pragma unroll
        for (int kk = 0; kk < Tile::BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[Tile::FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[Tile::FN];
#pragma unroll
            for (int i = 0; i < Tile::FM; ++i)
                wmma::load_matrix_sync(a[i], &As[(warp_m * WM + i * 16) * Tile::A_LD + kk], Tile::A_LD);
#pragma unroll
            for (int j = 0; j < Tile::FN; ++j)
                wmma::load_matrix_sync(b[j], &Bs[kk * Tile::B_LD + warp_n * WN + j * 16], Tile::B_LD);
#pragma unroll
            for (int i = 0; i < Tile::FM; ++i)
#pragma unroll
                for (int j = 0; j < Tile::FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }

    // Epilogue through shared memory, one fragment at a time: the fragments' register layout is unspecified.
    float* staging = Cs[warp];
#pragma unroll
    for (int i = 0; i < Tile::FM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::FN; ++j) {
            wmma::store_matrix_sync(staging, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int m = m0 + warp_m * WM + i * 16 + e / 16;
                const long long n = n0 + warp_n * WN + j * 16 + e % 16;
                if (m < p.g.M && n < total_n) finish(p, bk, m, n, total_n, staging[e]);
            }
            __syncwarp();
        }
}

template <typename T, int BM, int BN, int WM, int WN>
void launch_tensor(const ConvParams<T, T>& p, int splits, cudaStream_t stream) {
    using Tile = TensorTile<T, BM, BN, WM, WN>;
    const long long total_n = (long long)p.batch * p.g.out_plane;
    const dim3 grid((unsigned)((total_n + BN - 1) / BN), (unsigned)((p.g.M + BM - 1) / BM),
                    (unsigned)(p.groups * splits));
    PD_LAUNCH(grid, Tile::THREADS, 0, stream, conv_tensor_kernel<T, BM, BN, WM, WN>)(p);
    PD_CUDA_CHECK_LAUNCH();
}

template <typename T, typename W>
void launch_reduce(const ConvParams<T, W>& p, int splits, cudaStream_t stream) {
    const size_t outputs = (size_t)p.groups * p.g.M * p.batch * p.g.out_plane;
    PD_LAUNCH(grid_for(outputs, 256), 256, 0, stream, split_k_reduce_kernel<T, W>)(p, splits);
    PD_CUDA_CHECK_LAUNCH();
}

// ----- the layer ---------------------------------------------------------------------------------------------

// ----- training (float32 storage; the products on the training GEMM, cuda/train_gemm.cuh) ------------------
// Mixed precision (FP16/BF16 operands): every multiplied operand (input, weight, output gradient) is rounded to
// that type and the sums stay float32, on the tensor cores.

// The geometry every training kernel needs.
struct TrainGeometry {
    int batch, in_c, in_h, in_w, filters, out_h, out_w, size, stride_y, stride_x, dilation, pad, groups;
    __host__ __device__ int group_in() const { return in_c / groups; }
    __host__ __device__ int group_out() const { return filters / groups; }
};

// The three training products as problems of the training GEMM (cuda/train_gemm.cuh), per group. k walks a
// filter's weights in their stored order (channel, ky, kx); n walks the batch's pixels image after image. Index
// arithmetic that divides is 32-bit (forward_train checks that batch x pixels fits) and the per-k geometry comes
// from tables built in prepare(), so gathering an operand costs no division in the forward and input-gradient
// GEMMs and two 32-bit ones in the weight gradient's.

// Forward: output[f][pixel] = sum over k of W[f][k] * input at tap k of the pixel's window, plus the bias; the sum
// before the activation kept in `pre` when the activation's gradient needs it. taps[k]: the inference table
// (offset from the window's corner, dy, dx).
struct ConvForwardProblem {
    TrainGeometry g;
    const float* input;
    const float* weights;
    const float* biases;
    const int4* taps;
    float* output;
    float* pre;
    int activation;
    int M;  // filters per group
    long long N, K;
    int groups;

    struct Column {
        long long corner;  // the element at the window's top-left corner (may lie outside the image)
        int y0, x0;        // that corner's position
    };
    __device__ Column column(int group, long long n) const {
        const int out_plane = g.out_h * g.out_w, b = (int)n / out_plane, pixel = (int)n - b * out_plane;
        const int oy = pixel / g.out_w, y0 = oy * g.stride_y - g.pad, x0 = (pixel - oy * g.out_w) * g.stride_x - g.pad;
        return Column{
            ((long long)b * g.in_c + (long long)group * g.group_in()) * g.in_h * g.in_w + (long long)y0 * g.in_w + x0,
            y0, x0};
    }
    __device__ float a(int group, int m, long long k) const { return weights[((long long)group * M + m) * K + k]; }
    __device__ float b(int, const Column& c, long long k) const {
        const int4 tap = taps[k];
        const int y = c.y0 + tap.y, x = c.x0 + tap.z;
        if ((unsigned)y >= (unsigned)g.in_h || (unsigned)x >= (unsigned)g.in_w) return 0.f;
        return input[c.corner + tap.x];
    }
    __device__ void store(int group, int m, long long n, float value) const {
        const int out_plane = g.out_h * g.out_w, b = (int)n / out_plane, f = group * M + m;
        const long long id = ((long long)b * g.filters + f) * out_plane + ((int)n - b * out_plane);
        value += biases[f];
        if (pre) pre[id] = value;
        output[id] = activate(value, activation);
    }
};

// Weight gradient: dW[f][k] += sum over the batch's output pixels r of grad[f][r] * the input value tap k of r's
// window met. K is batch x output pixels (few outputs, a long sum: the GEMM that split-K is for).
struct ConvWeightGradProblem {
    TrainGeometry g;
    const float* input;
    const float* grad;
    float* grad_weights;
    int M;  // filters per group
    long long N, K;
    int groups;

    struct Column {
        long long channel;  // the tap's input channel within the group, times the plane
        int dy, dx;         // the tap's offset from an output pixel's scaled position
    };
    __device__ Column column(int, long long n) const {
        const int taps = g.size * g.size, channel = (int)n / taps, tap = (int)n - channel * taps;
        return Column{(long long)channel * g.in_h * g.in_w, tap / g.size * g.dilation - g.pad,
                      tap % g.size * g.dilation - g.pad};
    }
    __device__ float a(int group, int m, long long r) const {
        const int out_plane = g.out_h * g.out_w, b = (int)r / out_plane;
        return grad[((long long)b * g.filters + (long long)group * M + m) * out_plane + ((int)r - b * out_plane)];
    }
    __device__ float b(int group, const Column& c, long long r) const {
        const int out_plane = g.out_h * g.out_w, b = (int)r / out_plane, pixel = (int)r - b * out_plane;
        const int oy = pixel / g.out_w, ox = pixel - oy * g.out_w;
        const int y = oy * g.stride_y + c.dy, x = ox * g.stride_x + c.dx;
        if ((unsigned)y >= (unsigned)g.in_h || (unsigned)x >= (unsigned)g.in_w) return 0.f;
        return input[((long long)b * g.in_c + (long long)group * g.group_in()) * g.in_h * g.in_w + c.channel +
                     (long long)y * g.in_w + x];
    }
    __device__ void store(int group, int m, long long n, float value) const {
        grad_weights[((long long)group * M + m) * N + n] += value;
    }
};

// Input gradient: dX[c][pixel] += sum over (filter, tap) of W[filter][c][tap] * grad[filter] at the output pixel
// whose window put that tap on this pixel (none when the stride skips it): the convolution transposed, gathered.
// back_taps[k], k = (filter, tap) within the group: (filter x output plane, ky x dilation, kx x dilation, filter).
struct ConvInputGradProblem {
    TrainGeometry g;
    const float* weights;
    const float* grad;
    const int4* back_taps;
    float* input_grad;
    int M;  // input channels per group
    long long N, K;
    int groups;

    struct Column {
        long long base;  // the image's gradient of the group's first filter
        int ty, tx;      // the pixel's position plus the padding
    };
    __device__ Column column(int group, long long n) const {
        const int in_plane = g.in_h * g.in_w, b = (int)n / in_plane, pixel = (int)n - b * in_plane;
        const int y = pixel / g.in_w, x = pixel - y * g.in_w;
        return Column{((long long)b * g.filters + (long long)group * g.group_out()) * g.out_h * g.out_w, y + g.pad,
                      x + g.pad};
    }
    __device__ float a(int group, int m, long long k) const {
        const int taps = g.size * g.size, filter = back_taps[k].w, tap = (int)k - filter * taps;
        return weights[(((long long)group * g.group_out() + filter) * M + m) * taps + tap];
    }
    __device__ float b(int, const Column& c, long long k) const {
        const int4 tap = back_taps[k];
        int oy = c.ty - tap.y, ox = c.tx - tap.z;
        if (oy < 0 || ox < 0) return 0.f;
        if (g.stride_y > 1) {
            if (oy % g.stride_y) return 0.f;
            oy /= g.stride_y;
        }
        if (g.stride_x > 1) {
            if (ox % g.stride_x) return 0.f;
            ox /= g.stride_x;
        }
        if (oy >= g.out_h || ox >= g.out_w) return 0.f;
        return grad[c.base + tap.x + (long long)oy * g.out_w + ox];
    }
    __device__ void store(int group, int m, long long n, float value) const {
        const int in_plane = g.in_h * g.in_w, b = (int)n / in_plane;
        input_grad[((long long)b * g.in_c + (long long)group * M + m) * in_plane + ((int)n - b * in_plane)] += value;
    }
};

class CudaConvolutional : public CudaLayer {
public:
    explicit CudaConvolutional(const LayerSpec& s) : CudaLayer(s), p_(spec.params<ConvolutionalParams>()) {
        geometry_.in_h = s.in.h;
        geometry_.in_w = s.in.w;
        geometry_.in_plane = s.in.h * s.in.w;
        geometry_.out_w = s.out.w;
        geometry_.out_plane = s.out.h * s.out.w;
        geometry_.in_c_g = s.in.c / p_.groups;
        geometry_.M = p_.filters / p_.groups;
        geometry_.stride_x = p_.stride_x;
        geometry_.stride_y = p_.stride_y;
        geometry_.pad = p_.pad();
        k_ = geometry_.in_c_g * p_.size * p_.size;
        geometry_.K_pad = (k_ + kTensorBK - 1) / kTensorBK * kTensorBK;
        geometry_.M_pad = (geometry_.M + kMPad - 1) / kMPad * kMPad;
        PD_CHECK((long long)s.in.c * geometry_.in_plane < (1LL << 30) &&
                     (long long)geometry_.out_plane * s.out.c < (1LL << 30),
                 "layer ", s.index, ": the convolution's image is too large for the CUDA kernels");
    }

    void prepare(const PrepareContext& ctx) override {
        sm_count_ = ctx.sm_count;
        split_k_ = ctx.split_k;
        precision_ = ctx.precision;
        algorithm_ = ctx.conv_algorithm;
        if (algorithm_ == ConvAlgorithm::AUTO)
            algorithm_ = ctx.precision == Precision::FP32 ? ConvAlgorithm::SIMT : ConvAlgorithm::TENSOR;
        PD_CHECK(!(algorithm_ == ConvAlgorithm::TENSOR && ctx.precision == Precision::FP32), "layer ", spec.index,
                 ": the tensor-core convolution runs precision fp16 or bf16, not fp32");

        // Batch-norm folded exactly as the CPU layer folds it (in double, then rounded to float).
        const float* w = ctx.params + spec.tensor("weights").offset;
        const float* b = ctx.params + spec.tensor("biases").offset;
        std::vector<float> bias(b, b + p_.filters);
        std::vector<double> factor(p_.filters, 1.0);
        if (p_.batch_norm())
            batchnorm_factors(b, ctx.params + spec.tensor("scales").offset,
                              ctx.params + spec.tensor("rolling_mean").offset,
                              ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, p_.filters,
                              factor.data(), bias.data());
        const int M = geometry_.M, K_pad = geometry_.K_pad, M_pad = geometry_.M_pad;
        std::vector<float> padded((size_t)p_.groups * M_pad * K_pad, 0.f);
        for (int f = 0; f < p_.filters; ++f) {
            const int g = f / M, m = f % M;
            float* row = padded.data() + ((size_t)g * M_pad + m) * K_pad;
            for (int k = 0; k < k_; ++k)
                row[k] = p_.batch_norm() ? (float)(w[(size_t)f * k_ + k] * factor[f]) : w[(size_t)f * k_ + k];
        }
        bias_.upload(bias.data(), bias.size(), ctx.stream);
        if (algorithm_ == ConvAlgorithm::SIMT) {
            weights_float_.upload(padded.data(), padded.size(), ctx.stream);
            weights_.release();
        } else {
            DeviceArray<float> staging;
            staging.upload(padded.data(), padded.size(), ctx.stream);
            weights_.resize(padded.size());
            convert_from_float(ctx.precision, staging.data(), weights_.data(), padded.size(), ctx.stream);
            PD_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
            weights_float_.release();
        }

        std::vector<int4> taps(K_pad);
        for (int k = 0; k < K_pad; ++k) {
            if (k >= k_) {
                taps[k] = make_int4(0, kOutsideImage, 0, 0);
                continue;
            }
            const int c = k / (p_.size * p_.size), ky = (k / p_.size) % p_.size, kx = k % p_.size;
            const int dy = ky * p_.dilation, dx = kx * p_.dilation;
            taps[k] = make_int4(c * geometry_.in_plane + dy * geometry_.in_w + dx, dy, dx, 0);
        }
        taps_.upload(taps.data(), taps.size(), ctx.stream);

        // The training input gradient's table: k = (filter, ky, kx) within a group.
        const int taps_per_filter = p_.size * p_.size;
        std::vector<int4> back_taps((size_t)geometry_.M * taps_per_filter);
        for (int filter = 0; filter < geometry_.M; ++filter)
            for (int tap = 0; tap < taps_per_filter; ++tap)
                back_taps[(size_t)filter * taps_per_filter + tap] = make_int4(
                    filter * geometry_.out_plane, tap / p_.size * p_.dilation, tap % p_.size * p_.dilation, filter);
        back_taps_.upload(back_taps.data(), back_taps.size(), ctx.stream);
    }

    size_t workspace_bytes(int batch) const override {
        const Split split = split_for(batch);
        if (split.count == 1) return 0;
        return sizeof(float) * split.count * p_.groups * geometry_.M * (size_t)batch * geometry_.out_plane;
    }

    void forward(const CudaContext& ctx) override {
        const bool fuse_activation = !is_channel_activation(p_.activation);
        PD_CHECK((long long)ctx.batch * geometry_.out_plane < (1LL << 31), "layer ", spec.index, ": batch ", ctx.batch,
                 " is too large for the CUDA convolution at this size");
        const Split split = split_for(ctx.batch);
        dispatch_precision(ctx.precision, [&](auto tag) {
            using T = decltype(tag);
            if (algorithm_ == ConvAlgorithm::SIMT) {
                const ConvParams<T, float> p = params<T, float>(ctx, weights_float_.data(), fuse_activation, split);
                const long long total_n = (long long)ctx.batch * geometry_.out_plane;
                const dim3 grid((unsigned)((total_n + kSimtBN - 1) / kSimtBN),
                                (unsigned)((geometry_.M + kSimtBM - 1) / kSimtBM), (unsigned)(p_.groups * split.count));
                PD_LAUNCH(grid, kSimtThreads, 0, ctx.stream, conv_simt_kernel<T>)(p);
                PD_CUDA_CHECK_LAUNCH();
                if (split.count > 1) launch_reduce(p, split.count, ctx.stream);
            } else {
                launch_tensor_path<T>(ctx, fuse_activation, split);
            }
        });
        if (!fuse_activation)
            activate_view(ctx.precision, ctx.output, ctx.batch, p_.filters, (size_t)geometry_.out_plane, p_.activation,
                          ctx.stream);
    }

    const char* untrainable() const override {
        if (p_.batch_normalize == 2) return "cross-iteration batch normalisation (cbn) is not supported in training";
        return nullptr;
    }

    // As the CPU's: the convolution (with the element-wise activation when there is no batch-norm), batch-norm
    // fused with an element-wise activation, or the normalize_channels family applied last; the values before
    // the activation kept when its gradient needs them.
    void forward_train(const CudaTrainContext& ctx) override {
        const TrainGeometry g = train_geometry(ctx.batch);
        PD_CHECK((long long)ctx.batch * std::max(spec.in.h * spec.in.w, spec.out.h * spec.out.w) < (1LL << 31),
                 "layer ", spec.index, ": batch ", ctx.batch, " is too large for the CUDA training convolution");
        const size_t total = (size_t)ctx.batch * spec.out.size(), spatial = (size_t)spec.out.h * spec.out.w;
        const int activation = p_.activation;
        const bool elementwise = !is_channel_activation(activation);
        float* pre = nullptr;
        if (activation_needs_input(activation)) {
            pre_activation_.resize(total);
            pre = pre_activation_.data();
        }
        const float* biases = ctx.params + spec.tensor("biases").offset;
        const bool bn = p_.batch_norm();
        const ConvForwardProblem problem = forward_problem(
            g, ctx.input.as<float>(), ctx.params + spec.tensor("weights").offset, bn ? zeros(ctx) : biases,
            ctx.output.as<float>(), bn ? nullptr : pre, bn || !elementwise ? (int)LINEAR : activation);
        launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
        if (bn) {
            PD_CHECK(spatial * ctx.batch > 1, "layer ", spec.index,
                     ": batch normalisation in training needs more than one value per channel (batch ", ctx.batch,
                     " x ", spatial, " positions); use a larger batch");
            xhat_.resize(total);
            inv_std_.resize(p_.filters);
            launch_batchnorm_train(ctx.output.as<float>(), xhat_.data(), elementwise ? pre : nullptr, inv_std_.data(),
                                   ctx.batch, p_.filters, spatial, ctx.params + spec.tensor("scales").offset, biases,
                                   ctx.params + spec.tensor("rolling_mean").offset,
                                   ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon,
                                   elementwise ? activation : (int)LINEAR, spec.index, ctx.stream);
            if (!elementwise && pre)
                PD_CUDA_CHECK(
                    cudaMemcpyAsync(pre, ctx.output.data, total * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
        }
        if (!elementwise)
            activate_view(Precision::FP32, ctx.output, ctx.batch, p_.filters, spatial, activation, ctx.stream);
    }

    void backward(const CudaBackwardContext& ctx) override {
        const TrainGeometry g = train_geometry(ctx.batch);
        const int activation = p_.activation;
        const bool elementwise = !is_channel_activation(activation);
        const float* pre = activation_needs_input(activation) ? pre_activation_.data() : nullptr;
        const size_t spatial = (size_t)spec.out.h * spec.out.w;
        if (!elementwise || !p_.batch_norm())
            layer_activation_gradient(ctx.output_grad, ctx.output, pre, ctx.batch, p_.filters, spatial, activation,
                                      ctx.stream);
        if (p_.batch_norm()) {
            launch_batchnorm_backward(
                ctx.output_grad, ctx.output, elementwise ? pre : nullptr, xhat_.data(), inv_std_.data(), ctx.batch,
                p_.filters, spatial, ctx.params + spec.tensor("scales").offset,
                ctx.grads + spec.tensor("scales").offset, ctx.grads + spec.tensor("biases").offset,
                elementwise ? activation : (int)LINEAR, spec.index, ctx.stream);
        } else {
            launch_channel_sums(ctx.output_grad, ctx.batch, p_.filters, spatial,
                                ctx.grads + spec.tensor("biases").offset, ctx.stream);
        }
        if (ctx.weight_grads) {
            const ConvWeightGradProblem problem =
                weight_grad_problem(g, ctx.input, ctx.output_grad, ctx.grads + spec.tensor("weights").offset);
            launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
        }
        if (ctx.input_grad) {
            const ConvInputGradProblem problem =
                input_grad_problem(g, ctx.params + spec.tensor("weights").offset, ctx.output_grad, ctx.input_grad);
            launch_train_gemm(problem, ctx.operands, plan(problem, ctx.operands), ctx.workspace, ctx.stream);
        }
    }

    // The largest split-K workspace of the three training GEMMs (plans depend on shapes only).
    size_t train_workspace_bytes(int batch) const override {
        const TrainGeometry g = train_geometry(batch);
        const ConvForwardProblem forward = forward_problem(g, nullptr, nullptr, nullptr, nullptr, nullptr, LINEAR);
        const ConvWeightGradProblem weights = weight_grad_problem(g, nullptr, nullptr, nullptr);
        const ConvInputGradProblem inputs = input_grad_problem(g, nullptr, nullptr, nullptr);
        return std::max({train_gemm_workspace(forward, plan(forward, precision_)),
                         train_gemm_workspace(weights, plan(weights, precision_)),
                         train_gemm_workspace(inputs, plan(inputs, precision_))});
    }

private:
    TrainGeometry train_geometry(int batch) const {
        return TrainGeometry{batch,   spec.in.c,   spec.in.h,   spec.in.w,   p_.filters, spec.out.h, spec.out.w,
                             p_.size, p_.stride_y, p_.stride_x, p_.dilation, p_.pad(),   p_.groups};
    }

    ConvForwardProblem forward_problem(const TrainGeometry& g, const float* input, const float* weights,
                                       const float* biases, float* output, float* pre, int activation) const {
        return ConvForwardProblem{g,
                                  input,
                                  weights,
                                  biases,
                                  taps_.data(),
                                  output,
                                  pre,
                                  activation,
                                  g.group_out(),
                                  (long long)g.batch * g.out_h * g.out_w,
                                  (long long)k_,
                                  g.groups};
    }
    ConvWeightGradProblem weight_grad_problem(const TrainGeometry& g, const float* input, const float* grad,
                                              float* grad_weights) const {
        return ConvWeightGradProblem{
            g,       input, grad, grad_weights, g.group_out(), (long long)k_, (long long)g.batch * g.out_h * g.out_w,
            g.groups};
    }
    ConvInputGradProblem input_grad_problem(const TrainGeometry& g, const float* weights, const float* grad,
                                            float* input_grad) const {
        const long long taps = (long long)p_.size * p_.size;
        return ConvInputGradProblem{g,
                                    weights,
                                    grad,
                                    back_taps_.data(),
                                    input_grad,
                                    g.group_in(),
                                    (long long)g.batch * g.in_h * g.in_w,
                                    g.group_out() * taps,
                                    g.groups};
    }
    template <class P>
    GemmPlan plan(const P& problem, Precision operands) const {
        return plan_train_gemm(problem, operands, algorithm_ == ConvAlgorithm::SIMT, split_k_, sm_count_);
    }

    // Zero biases for the convolution before batch-norm (which adds the biases after normalising).
    const float* zeros(const CudaTrainContext& ctx) {
        if (zero_biases_.size() != (size_t)p_.filters) {
            zero_biases_.resize(p_.filters);
            PD_CUDA_CHECK(cudaMemsetAsync(zero_biases_.data(), 0, p_.filters * sizeof(float), ctx.stream));
        }
        return zero_biases_.data();
    }

    DeviceArray<float> pre_activation_;      // the training forward's values before the activation, when needed
    DeviceArray<float> xhat_, zero_biases_;  // batch-norm's normalised values of the last forward_train
    DeviceArray<double> inv_std_;            // and its 1 / sqrt(variance + epsilon) per channel

    struct Split {
        int count = 1;  // blocks along K
        int span = 0;   // K elements per split, a multiple of kTensorBK
    };

    // Rows (filters) x columns (pixels) of the block tile of the chosen kernel.
    int tile_rows() const {
        if (algorithm_ == ConvAlgorithm::SIMT) return kSimtBM;
        return geometry_.M > 64 ? 128 : (geometry_.M > 32 ? 64 : 32);
    }
    int tile_columns() const { return algorithm_ == ConvAlgorithm::SIMT ? kSimtBN : 128; }

    // split_k_: 0 automatic (split when the blocks would not fill the GPU twice over, keeping at least 4 K tiles
    // per split, at most 16 splits), 1 never, n > 1 exactly n (capped by the K tiles), for the tests.
    Split split_for(int batch) const {
        const int k_tiles = geometry_.K_pad / kTensorBK;
        int wanted = 1;
        if (split_k_ > 1) {
            wanted = split_k_;
        } else if (split_k_ == 0) {
            const long long total_n = (long long)batch * geometry_.out_plane;
            const long long blocks = (total_n + tile_columns() - 1) / tile_columns() *
                                     ((geometry_.M + tile_rows() - 1) / tile_rows()) * p_.groups;
            if (blocks < sm_count_ && k_tiles >= 8)
                wanted = (int)std::min<long long>({(2LL * sm_count_ + blocks - 1) / blocks, k_tiles / 4, 16});
        }
        wanted = std::max(1, std::min({wanted, k_tiles, 65535 / p_.groups}));
        const int per_split = (k_tiles + wanted - 1) / wanted;
        Split split;
        split.count = (k_tiles + per_split - 1) / per_split;  // no empty split
        split.span = split.count > 1 ? per_split * kTensorBK : geometry_.K_pad;
        return split;
    }

    template <typename T, typename W>
    ConvParams<T, W> params(const CudaContext& ctx, const void* weights, bool fuse_activation,
                            const Split& split) const {
        ConvParams<T, W> p;
        p.in = ctx.input.as<T>();
        p.in_stride = (long long)ctx.input.stride;
        p.out = ctx.output.as<T>();
        p.out_stride = (long long)ctx.output.stride;
        if (ctx.residual) {
            p.residual = ctx.residual.as<T>();
            p.residual_stride = (long long)ctx.residual.stride;
            p.residual_activation = ctx.residual_activation;
        }
        p.weights = static_cast<const W*>(weights);
        p.bias = bias_.data();
        p.taps = taps_.data();
        p.batch = ctx.batch;
        p.activation = fuse_activation ? p_.activation : LINEAR;
        p.g = geometry_;
        p.groups = p_.groups;
        p.k_span = split.span;
        if (split.count > 1) {
            PD_CHECK(ctx.workspace, "layer ", spec.index, ": split-K needs the network's workspace");
            p.partial = static_cast<float*>(ctx.workspace);
        }
        return p;
    }

    template <typename T>
    void launch_tensor_path(const CudaContext& ctx, bool fuse_activation, const Split& split) {
        if constexpr (std::is_same<T, float>::value) {
            PD_CHECK(false, "layer ", spec.index, ": the tensor-core convolution runs precision fp16 or bf16");
        } else {
            const ConvParams<T, T> p = params<T, T>(ctx, weights_.data(), fuse_activation, split);
            // The tile height follows the filter count, so small layers do not compute mostly padding.
            if (geometry_.M > 64)
                launch_tensor<T, 128, 128, 64, 32>(p, split.count, ctx.stream);
            else if (geometry_.M > 32)
                launch_tensor<T, 64, 128, 32, 32>(p, split.count, ctx.stream);
            else
                launch_tensor<T, 32, 128, 16, 32>(p, split.count, ctx.stream);
            if (split.count > 1) launch_reduce(p, split.count, ctx.stream);
        }
    }

    const ConvolutionalParams p_;
    int k_ = 0;
    ConvGeometry geometry_;
    ConvAlgorithm algorithm_ = ConvAlgorithm::SIMT;
    int sm_count_ = 1, split_k_ = 1;
    Precision precision_ = Precision::FP32;  // the network's: also the training operands' (mixed precision)
    DeviceArray<float> weights_float_;       // SIMT weights
    DeviceArray<short> weights_;             // TENSOR weights, FP16 or BF16 bits
    DeviceArray<float> bias_;
    DeviceArray<int4> taps_;
    DeviceArray<int4> back_taps_;  // the training input gradient's (filter, tap) table
};

}  // namespace

PD_REGISTER_CUDA_LAYER(LayerKind::Convolutional, CudaConvolutional);

}  // namespace pd
