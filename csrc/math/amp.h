// Mixed-precision training (cuda/NOTES.md): the operands of a product rounded as an FP16/BF16 tensor-core GEMM
// takes them (round to nearest, ties to even, as __float2half_rn / __float2bfloat16_rn), the product and the
// sum then in float32. Written on the bits so the CPU build, the CUDA emulation and nvcc share one definition.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../core/common.h"

namespace pd {

// x rounded to the nearest value of `precision` (FP32: x itself), returned as a float.
PD_HD float round_to(Precision precision, float x) {
    if (precision == Precision::FP32) return x;
    const uint32_t bits = bits_of(x), magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) return x;  // infinities and NaN stay what they are
    if (precision == Precision::BF16) {
        // Keep the top 16 bits, rounded to even; a carry into the exponent (also to infinity) is right.
        return float_of_bits((bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u);
    }
    if (magnitude >= 0x477ff000u) return copysignf(INFINITY, x);  // 65520 and above round to infinity
    if (magnitude < 0x38800000u) {
        // Below the smallest normal half (2^-14): a multiple of 2^-24, rounded to even (rintf, the default
        // rounding mode). Scaling by powers of two is exact here.
        return rintf(x * 16777216.f) * (1.f / 16777216.f);
    }
    // A normal half: 10 mantissa bits of the float's 23, rounded to even.
    return float_of_bits((bits + 0xfffu + ((bits >> 13) & 1u)) & 0xffffe000u);
}

}  // namespace pd
