// Measures the CPU's float32 FMA throughput (and bf16 dot-product throughput where the CPU has AVX512_BF16): each
// thread runs independent multiply-add chains held in registers, enough of them to cover the FMA latency, so the
// loop is bound by the FMA units alone. The benchmark reports its GFLOP/s as a share of this measured peak.
#include "peak.h"

#include <immintrin.h>

#include <chrono>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"

namespace pd {
namespace {

constexpr int kChains = 12;  // 12 accumulators: 2 FMA pipes x 4-cycle latency x 1.5 headroom

// The loops are opaque to the optimiser (noipa): otherwise it may move the pure arithmetic past the clock reads.
#define PD_LOOP __attribute__((noipa))

PD_LOOP __attribute__((target("avx512f"))) float fma_loop_avx512(long steps) {
    __m512 acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1e-3f * i);
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
    for (long t = 0; t < steps; ++t) {
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 sum = acc[0];
    for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
    return _mm512_reduce_add_ps(sum);
}

PD_LOOP __attribute__((target("avx512f,avx512bf16"))) float bf16_loop_avx512(long steps) {
    __m512 acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1e-3f * i);
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x38d138d1);
    for (long t = 0; t < steps; ++t) {
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    __m512 sum = acc[0];
    for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
    return _mm512_reduce_add_ps(sum);
}

PD_LOOP __attribute__((target("avx2,fma"))) float fma_loop_avx2(long steps) {
    __m256 acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1e-3f * i);
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-4f);
    for (long t = 0; t < steps; ++t) {
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 sum = acc[0];
    for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, sum);
    return out[0];
}

PD_LOOP float scalar_loop(long steps) {
    float acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = 1e-3f * i;
    for (long t = 0; t < steps; ++t)
        for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * 0.999f + 1e-4f;
    float sum = 0.f;
    for (int i = 0; i < kChains; ++i) sum += acc[i];
    return sum;
}

}  // namespace

double measure_peak_gflops(int threads, bool bf16, double seconds) {
    const Isa isa = active_isa();
    if (bf16 && !cpu_has_avx512_bf16()) return 0.0;
    // flops per step per thread: chains x lanes x 2 (bf16: x 2 again, a pair per lane)
    const int lanes = isa == Isa::Avx512 ? 16 : isa == Isa::Avx2 ? 8 : 1;
    const double flops_per_step = bf16 ? kChains * 16 * 4.0 : kChains * lanes * 2.0;
    auto run = [&](long steps) {
        if (bf16) return bf16_loop_avx512(steps);
        if (isa == Isa::Avx512) return fma_loop_avx512(steps);
        if (isa == Isa::Avx2) return fma_loop_avx2(steps);
        return scalar_loop(steps);
    };
    // Calibrate the step count on one thread, then time all threads together.
    long steps = 1 << 16;
    for (;;) {
        const auto t0 = std::chrono::steady_clock::now();
        volatile float sink = run(steps);
        (void)sink;
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (dt > seconds / 4 || steps > (1L << 40)) {
            steps = (long)(steps * seconds / dt) + 1;
            break;
        }
        steps *= 4;
    }
    double elapsed = 0.0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp barrier
        const auto t0 = std::chrono::steady_clock::now();
        volatile float sink = run(steps);
        (void)sink;
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#pragma omp critical
        elapsed = dt > elapsed ? dt : elapsed;
    }
    return flops_per_step * steps * threads / elapsed / 1e9;
}

}  // namespace pd
