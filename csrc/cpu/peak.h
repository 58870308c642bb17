// The measured multiply-add peak of this CPU, the yardstick of the benchmark's "% of peak".
#pragma once

namespace pd {

// GFLOP/s of `threads` threads running register-only float32 FMAs with the active instruction set (bf16: the
// AVX512_BF16 dot product, 0 where the CPU lacks it) for about `seconds`.
double measure_peak_gflops(int threads, bool bf16, double seconds);

}  // namespace pd
