// CPU emulation (see cuda_runtime.h): IEEE binary16 with round-to-nearest-even conversions.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

struct __half {
    uint16_t bits;
};
using half = __half;

inline __half __float2half_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return __half{(uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
    if (x >= 0x477ff000u) return __half{(uint16_t)(sign | 0x7c00u)};  // 65520 and above round to infinity
    if (x < 0x38800000u) {  // below the smallest normal half: a multiple of 2^-24, rounded to even
        const float scaled = fabsf(f) * 16777216.f;
        return __half{(uint16_t)(sign | (uint16_t)nearbyintf(scaled))};
    }
    const uint32_t mantissa = x & 0x7fffffu;
    uint32_t h = (((x >> 23) - 112u) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return __half{(uint16_t)(sign | h)};
}

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
    if (exponent == 0) {
        const float v = (float)mantissa / 16777216.f;
        return sign ? -v : v;
    }
    uint32_t x = exponent == 31 ? (sign | 0x7f800000u | (mantissa << 13)) : (sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
