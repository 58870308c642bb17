// Parallel sums with a fixed order, for the training kernels' reductions (batch-norm statistics and gradients,
// bias, shortcut-weight and scale-factor gradients). A sum that decides bits is never split by float atomics:
// each block adds its values in double in an order that depends only on the shape and the launch
// configuration, so a run repeats bit for bit on the same GPU (a resumed training run equals an uninterrupted
// one).
//
// The shape of a reduction: `segments` independent sums (a channel, a weight group, a scale factor) of `count`
// values each. Pass one: each segment's values are cut into chunks of threads x kReduceValuesPerThread values;
// one block per (segment, chunk); thread t adds the chunk's values t, t + threads, ... in order (coalesced reads),
// then block_sum adds the threads' sums with a fixed tree. A segment of one chunk ends there; otherwise the
// chunks' sums go to scratch and pass two, one block per segment, adds them the same way (thread t the chunks
// t, t + threads, ..., then the tree).
#pragma once

#include <map>

#include "cuda_layer.cuh"

namespace pd {

constexpr int kReduceMaxThreads = 256;
constexpr int kReduceGroups = 16;                // the tree: threads -> 16 group sums -> 1
constexpr int kReduceValuesPerThread = 32;       // values a thread adds before the tree, in pass one
constexpr unsigned kReduceMaxBlocks = 1u << 20;  // blocks beyond this loop (grid-stride over whole blocks)

// The threads of a block adding `count` values: a power of two from 32 to 256, no more than the values need at
// kReduceValuesPerThread each (a small sum does not occupy idle threads).
inline int reduce_threads(size_t count) {
    int threads = 32;
    while (threads < kReduceMaxThreads && (size_t)threads * kReduceValuesPerThread < count) threads *= 2;
    return threads;
}

// The sum over the block of each thread's v[0 .. N), returned in every thread's v. Every thread of the block
// must call it (it has barriers); blockDim.x is a multiple of kReduceGroups, at most kReduceMaxThreads. The
// tree is fixed: thread t's values go to slot t; thread g < 16 adds the blockDim.x / 16 consecutive slots of
// group g in order; every thread then adds the 16 group sums in order. Two barriers; a second call may follow
// at once (each shared array is written only after the barrier that ends the previous call's reads of it).
template <int N>
__device__ void block_sum(double (&v)[N]) {
    __shared__ double slots[N][kReduceMaxThreads];
    __shared__ double groups[N][kReduceGroups];
    const int t = threadIdx.x, width = blockDim.x / kReduceGroups;
    for (int n = 0; n < N; ++n) slots[n][t] = v[n];
    __syncthreads();
    if (t < kReduceGroups)
        for (int n = 0; n < N; ++n) {
            double s = slots[n][t * width];
            for (int k = 1; k < width; ++k) s += slots[n][t * width + k];
            groups[n][t] = s;
        }
    __syncthreads();
    for (int n = 0; n < N; ++n) {
        double s = groups[n][0];
        for (int k = 1; k < kReduceGroups; ++k) s += groups[n][k];
        v[n] = s;
    }
}

// Pass one. term(segment, j, v) adds value j (< count) of `segment` into v[0 .. N) (and may write that
// value's element in place: each is visited once); block (segment, chunk) either hands the segment's sums to
// finish(segment, v) (one chunk) or writes them to partial[(segment * chunks + chunk) * N + n].
template <int N, typename Term, typename Finish>
__global__ void segment_partial_kernel(Term term, Finish finish, size_t segments, size_t count, size_t chunk,
                                       size_t chunks, double* partial) {
    for (size_t block = blockIdx.x; block < segments * chunks; block += gridDim.x) {
        const size_t segment = block / chunks, k = block % chunks;
        const size_t begin = k * chunk, end = begin + chunk < count ? begin + chunk : count;
        double v[N];
        for (int n = 0; n < N; ++n) v[n] = 0.0;
        for (size_t j = begin + threadIdx.x; j < end; j += blockDim.x) term(segment, j, v);
        block_sum(v);
        if (threadIdx.x != 0) continue;
        if (chunks == 1)
            finish(segment, v);
        else
            for (int n = 0; n < N; ++n) partial[block * N + n] = v[n];
    }
}

// Pass two: the chunks' sums of each segment, added in the same fixed way, handed to finish.
template <int N, typename Finish>
__global__ void segment_finish_kernel(Finish finish, const double* partial, size_t segments, size_t chunks) {
    for (size_t segment = blockIdx.x; segment < segments; segment += gridDim.x) {
        double v[N];
        for (int n = 0; n < N; ++n) v[n] = 0.0;
        for (size_t k = threadIdx.x; k < chunks; k += blockDim.x)
            for (int n = 0; n < N; ++n) v[n] += partial[(segment * chunks + k) * N + n];
        block_sum(v);
        if (threadIdx.x == 0) finish(segment, v);
    }
}

// Device scratch of at least `count` doubles for work on `stream` (one buffer per stream and calling thread,
// `slot` 0 or 1 so that one launcher can hold two). Grows only; before it reallocates, the stream is waited for,
// since its queued kernels may still use the old buffer.
double* reduce_scratch(int slot, size_t count, cudaStream_t stream);

// `segments` sums of `count` values each, of N quantities (v[0 .. N), zero where a term adds nothing), in the
// fixed order above: finish(segment, v) gets each segment's sums (thread 0 of one block per segment calls it).
// Nothing runs when there is nothing to add. Term and Finish are small structs with __device__ operator() (copied
// to the kernels).
template <int N, typename Term, typename Finish>
void launch_segment_sums(size_t segments, size_t count, const Term& term, const Finish& finish, cudaStream_t stream) {
    if (segments == 0 || count == 0) return;
    const int threads = reduce_threads(count);
    const size_t chunk = (size_t)threads * kReduceValuesPerThread, chunks = (count + chunk - 1) / chunk;
    double* partial = chunks > 1 ? reduce_scratch(0, segments * chunks * N, stream) : nullptr;
    const size_t blocks = segments * chunks;
    PD_LAUNCH((unsigned)(blocks < kReduceMaxBlocks ? blocks : kReduceMaxBlocks), threads, 0, stream,
              segment_partial_kernel<N, Term, Finish>)(term, finish, segments, count, chunk, chunks, partial);
    PD_CUDA_CHECK_LAUNCH();
    if (chunks == 1) return;
    PD_LAUNCH((unsigned)(segments < kReduceMaxBlocks ? segments : kReduceMaxBlocks), reduce_threads(chunks), 0, stream,
              segment_finish_kernel<N, Finish>)(finish, partial, segments, chunks);
    PD_CUDA_CHECK_LAUNCH();
}

// Value j (< batch * spatial) of channel c of a [batch][channels][spatial] tensor.
__host__ __device__ inline size_t channel_value_index(size_t c, size_t j, size_t channels, size_t spatial) {
    return ((j / spatial) * channels + c) * spatial + j % spatial;
}

}  // namespace pd
