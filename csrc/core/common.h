// Shared basics: the host/device annotation for math used by both back ends, and the error type that the
// Python bindings turn into exceptions. Nothing here exits or aborts the process.
#pragma once

#include <stdint.h>

#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define PD_HD __host__ __device__ __forceinline__
#else
#define PD_HD inline
#endif

namespace pd {

// A float's bits and back (the math built on the float format: exp_approx, mixed-precision rounding).
PD_HD uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    return __builtin_bit_cast(uint32_t, x);
#endif
}

PD_HD float float_of_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    return __builtin_bit_cast(float, bits);
#endif
}

// The number format a network computes in, one code for both back ends (and for the Python side's precision
// names, pydarknet/network.py). The CPU runs FP32, or BF16 as bfloat16 weights and inputs of the convolutions with
// float32 sums; CUDA runs all three as the activations' storage and tensor-core operand type.
enum class Precision : int { FP32 = 0, FP16 = 1, BF16 = 2 };

// Raised for inputs the engine cannot run (bad shapes, indices, sizes). Maps to Python's ValueError.
struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

template <typename... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

}  // namespace pd

#define PD_CHECK(cond, ...)                                                  \
    do {                                                                     \
        if (!(cond)) throw ::pd::InvalidArgument(::pd::concat(__VA_ARGS__)); \
    } while (0)
