// CPU emulation (see cuda_runtime.h) of nvcuda::wmma for 16x16x16 tiles: every thread of the warp holds the whole
// tile and computes the whole product (the result is what the warp as a whole holds). Loads and stores check
// the hardware's rules: 32-byte aligned pointers, leading dimensions a multiple of 16 bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulation has the 16x16x16 shape only");
    float value[16][16];  // the fragment's logical matrix: a is M x K, b is K x N, the accumulator M x N
};

namespace detail {
inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
void check(const T* pointer, unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0) pd_emulation::fail("wmma: pointer not 32-byte aligned");
    if ((ldm * sizeof(T)) % 16 != 0) pd_emulation::fail("wmma: leading dimension not a multiple of 16 bytes");
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* pointer, unsigned ldm) {
    static_assert(!std::is_same<Layout, void>::value, "matrix fragments have a layout");
    detail::check(pointer, ldm);
    const bool row = std::is_same<Layout, row_major>::value;
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            f.value[i][j] = detail::as_float(row ? pointer[(size_t)i * ldm + j] : pointer[i + (size_t)j * ldm]);
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, T v) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.value[i][j] = v;
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    // The order in which the hardware adds an MMA's products is unspecified (and not the SIMT loop's): here the
    // 16 products are added as a pairwise tree, then to the accumulator, so results that silently depend on one
    // order differ from a sequential loop's in the emulation too.
    float out[16][16];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float partial[16];
            for (int k = 0; k < 16; ++k) partial[k] = a.value[i][k] * b.value[k][j];
            for (int width = 8; width >= 1; width /= 2)
                for (int k = 0; k < width; ++k) partial[k] += partial[k + width];
            out[i][j] = c.value[i][j] + partial[0];
        }
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) d.value[i][j] = out[i][j];
}

inline void store_matrix_sync(float* pointer, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
    detail::check(pointer, ldm);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            (layout == mem_row_major ? pointer[(size_t)i * ldm + j] : pointer[i + (size_t)j * ldm]) = f.value[i][j];
}

}  // namespace wmma
}  // namespace nvcuda
