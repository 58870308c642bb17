// Single-precision matrix multiply for the CPU path: C = A * B (+ C when accumulating), row-major, with a fused
// epilogue (per-row bias, then an element-wise activation) applied once a tile of C is complete.
#pragma once

#include <cstddef>

namespace pd {

struct GemmEpilogue {
    const float* row_bias = nullptr;  // one value per row of C, or null
    int activation = 0;               // an element-wise Activation code (LINEAR = none)
};

// A: M x K (lda), B: K x N (ldb), C: M x N (ldc). Threads with OpenMP over tiles of C.
void sgemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
           const GemmEpilogue& epilogue = GemmEpilogue());

}  // namespace pd
