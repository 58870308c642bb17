// Winograd F(4x4, 3x3) convolution on the CPU (see winograd.h).
//
// Tiles are processed in bands (a few hundred at a time) so that the transformed inputs and the GEMM results stay
// in the last-level cache. Per band, three phases, each split across the threads: the input transform writes each
// tile's 36 transformed values straight into the packed-panel layout of the 36 GEMMs' right operands; the GEMMs
// (filters x channels times channels x tiles) run on the packed kernels; the output transform turns each tile's 36
// sums into 4x4 outputs, adds the bias, applies the activation and writes the tile into the output image.
// The transforms work on L tiles at once (one vector lane per tile) in plain C++ that the compiler vectorises for
// the instruction set picked at run time.
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../math/activations.h"
#include "denormals.h"
#include "ops.h"

#define PD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace pd {
namespace {

constexpr int kPoints = 36;  // 6 x 6 transformed values per tile
// Transformed inputs plus GEMM results of one band, in floats (24 MB: most of the shared L3, which also holds
// the streamed weights).
constexpr size_t kBandFloats = (size_t)6 << 20;

std::atomic<bool>& enabled_flag() {
    static std::atomic<bool> flag(true);
    return flag;
}

// Band budget when each thread runs its own bands: about half of a Zen 4 core's 1 MB L2.
constexpr size_t kPrivateBandFloats = (size_t)128 << 10;

// A budget set for tests (0: the defaults above), used for both kinds of band.
std::atomic<size_t>& band_override() {
    static std::atomic<size_t> floats(0);
    return floats;
}

// The interpolation points are 0, 1, -1, 2, -1/2 and infinity rather than the usual 0, +-1, +-2: the transforms
// then mix smaller multiples of the values, which halves the rounding error (Barabasz et al., "Error analysis and
// improving the accuracy of Winograd convolution for deep neural networks", 2020; measured in float32 over 256
// channels: mean error 4.7e-6 instead of 8.4e-6, direct convolution 2.0e-6).

// B^T z for one column or row of a 6x6 tile.
#define PD_BT(z0, z1, z2, z3, z4, z5, o0, o1, o2, o3, o4, o5) \
    do {                                                      \
        const float d13 = (z1) - (z3), d42 = (z4) - (z2);     \
        o0 = (z0) + (z4) - 2.f * (z2) + 1.5f * d13;           \
        o1 = (z4) - (z1) - 2.5f * (z2) - 0.5f * (z3);         \
        o2 = (z4) + (z1) + 0.5f * (z2) - 2.5f * (z3);         \
        o3 = d42 - 0.5f * d13;                                \
        o4 = d42 + 2.f * d13;                                 \
        o5 = (z1) + (z5) - 2.f * (z3) + 1.5f * ((z2) - (z4)); \
    } while (0)

// A^T m for one column or row of a tile of sums: 6 values to 4 outputs.
#define PD_AT(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3)     \
    do {                                                  \
        const float s12 = (m1) + (m2), d12 = (m1) - (m2); \
        o0 = (m0) + s12 + (m3) + (m4);                    \
        o1 = d12 + 2.f * (m3) - 0.5f * (m4);              \
        o2 = s12 + 4.f * (m3) + 0.25f * (m4);             \
        o3 = d12 + 8.f * (m3) - 0.125f * (m4) + (m5);     \
    } while (0)

// A run of tiles of one band that lie in one tile row of one image: tiles tx0 .. tx0 + n - 1 of row ty, which are
// band columns t .. t + n - 1.
struct Segment {
    long in_image, out_image;  // offsets of the image in the input and in the output
    int ty, tx0, n, t;
};

// Mask of the first n (0..16) lanes.
__attribute__((target("avx512f"))) inline __mmask16 first_lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1);
}

void deinterleave4_scalar(const float* src, int count, float* p0, float* p1, float* p2, float* p3) {
    for (int m = 0; m < count; ++m) {
        p0[m] = src[4 * m];
        p1[m] = src[4 * m + 1];
        p2[m] = src[4 * m + 2];
        p3[m] = src[4 * m + 3];
    }
}

// phase[q][m] -> dst[4m + q] for 4m + q < values. Reads whole blocks of 16 from the phase arrays (room for
// values / 4 rounded up to 16), writes exactly `values` floats.
__attribute__((target("avx512f"))) void interleave4_avx512(const float* p0, const float* p1, const float* p2,
                                                           const float* p3, int values, float* dst) {
    for (int m = 0; 4 * m < values; m += 16, dst += 64) {
        const __m512 a = _mm512_loadu_ps(p0 + m), b = _mm512_loadu_ps(p1 + m);
        const __m512 c = _mm512_loadu_ps(p2 + m), d = _mm512_loadu_ps(p3 + m);
        // per 128-bit lane i: ab_lo = a[4i], b[4i], a[4i+1], b[4i+1]; ab_hi = a[4i+2], b[4i+2], a[4i+3], b[4i+3]
        const __m512 ab_lo = _mm512_unpacklo_ps(a, b), ab_hi = _mm512_unpackhi_ps(a, b);
        const __m512 cd_lo = _mm512_unpacklo_ps(c, d), cd_hi = _mm512_unpackhi_ps(c, d);
        // e holds tiles 4i, f 4i+1, g 4i+2, h 4i+3 in lane i (each lane: the 4 phases of one tile)
        const __m512 e = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab_lo), _mm512_castps_pd(cd_lo)));
        const __m512 f = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab_lo), _mm512_castps_pd(cd_lo)));
        const __m512 g = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab_hi), _mm512_castps_pd(cd_hi)));
        const __m512 h = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab_hi), _mm512_castps_pd(cd_hi)));
        // transpose the 4 x 4 grid of lanes so that output vector j holds tiles 4j .. 4j + 3
        const __m512 ef_lo = _mm512_shuffle_f32x4(e, f, 0x44), ef_hi = _mm512_shuffle_f32x4(e, f, 0xEE);
        const __m512 gh_lo = _mm512_shuffle_f32x4(g, h, 0x44), gh_hi = _mm512_shuffle_f32x4(g, h, 0xEE);
        const int left = values - 4 * m;
        _mm512_mask_storeu_ps(dst, first_lanes(left), _mm512_shuffle_f32x4(ef_lo, gh_lo, 0x88));
        _mm512_mask_storeu_ps(dst + 16, first_lanes(left - 16), _mm512_shuffle_f32x4(ef_lo, gh_lo, 0xDD));
        _mm512_mask_storeu_ps(dst + 32, first_lanes(left - 32), _mm512_shuffle_f32x4(ef_hi, gh_hi, 0x88));
        _mm512_mask_storeu_ps(dst + 48, first_lanes(left - 48), _mm512_shuffle_f32x4(ef_hi, gh_hi, 0xDD));
    }
}

void interleave4_scalar(const float* p0, const float* p1, const float* p2, const float* p3, int values, float* dst) {
    const float* phase[4] = {p0, p1, p2, p3};
    for (int i = 0; i < values; ++i) dst[i] = phase[i % 4][i / 4];
}

// The row passes on whole tile rows, in blocks of 16 tiles (one AVX-512 vector; no scalar remainder, which on
// small maps would be all of the work), with inputs and outputs declared unaliased so that the loops vectorise.
// Every array involved has room for n rounded up to 16 (what lies past n is scratch).
constexpr int kBlock = 16;

__attribute__((always_inline)) inline void bt_row(int n, const float* __restrict p0, const float* __restrict p1,
                                                  const float* __restrict p2, const float* __restrict p3,
                                                  float* __restrict w0, float* __restrict w1, float* __restrict w2,
                                                  float* __restrict w3, float* __restrict w4, float* __restrict w5) {
    for (int m0 = 0; m0 < n; m0 += kBlock)
        for (int m = m0; m < m0 + kBlock; ++m)
            PD_BT(p0[m], p1[m], p2[m], p3[m], p0[m + 1], p1[m + 1], w0[m], w1[m], w2[m], w3[m], w4[m], w5[m]);
}

__attribute__((always_inline)) inline void at_row(int n, const float* __restrict z0, const float* __restrict z1,
                                                  const float* __restrict z2, const float* __restrict z3,
                                                  const float* __restrict z4, const float* __restrict z5,
                                                  float* __restrict y0, float* __restrict y1, float* __restrict y2,
                                                  float* __restrict y3) {
    for (int m0 = 0; m0 < n; m0 += kBlock)
        for (int m = m0; m < m0 + kBlock; ++m)
            PD_AT(z0[m], z1[m], z2[m], z3[m], z4[m], z5[m], y0[m], y1[m], y2[m], y3[m]);
}

template <int A>
__attribute__((always_inline)) inline void bias_activate(float* __restrict x, int n, float bias) {
    for (int m0 = 0; m0 < n; m0 += kBlock)
        for (int m = m0; m < m0 + kBlock; ++m) x[m] = activate(x[m] + bias, A);
}

#define PD_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))

// B^T z on six vectors of 16 tiles each (the same arithmetic as PD_BT).
PD_AVX512 inline void bt_vectors(const __m512 (&z)[6], __m512 (&o)[6]) {
    const __m512 d13 = _mm512_sub_ps(z[1], z[3]), d42 = _mm512_sub_ps(z[4], z[2]);
    const __m512 two = _mm512_set1_ps(2.f), half = _mm512_set1_ps(0.5f), one5 = _mm512_set1_ps(1.5f),
                 two5 = _mm512_set1_ps(2.5f);
    o[0] = _mm512_fmadd_ps(one5, d13, _mm512_fnmadd_ps(two, z[2], _mm512_add_ps(z[0], z[4])));
    o[1] = _mm512_fnmadd_ps(half, z[3], _mm512_fnmadd_ps(two5, z[2], _mm512_sub_ps(z[4], z[1])));
    o[2] = _mm512_fnmadd_ps(two5, z[3], _mm512_fmadd_ps(half, z[2], _mm512_add_ps(z[4], z[1])));
    o[3] = _mm512_fnmadd_ps(half, d13, d42);
    o[4] = _mm512_fmadd_ps(two, d13, d42);
    o[5] = _mm512_fmadd_ps(one5, _mm512_sub_ps(z[2], z[4]), _mm512_fnmadd_ps(two, z[3], _mm512_add_ps(z[1], z[5])));
}

// Mask of the lanes of a 16-float vector starting at sample `at` whose samples lie in [lo, hi).
__attribute__((target("avx512f"))) inline __mmask16 lanes_within(int at, int lo, int hi) {
    return first_lanes(hi - at) & (__mmask16)~first_lanes(lo - at);
}

// The 16 samples at + 0 .. 15 of a row segment, zero outside [lo, hi); those are never read.
PD_AVX512 inline __m512 load_within(const float* line, int at, int lo, int hi) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(line) + (uintptr_t)((intptr_t)at * 4);
    return _mm512_maskz_loadu_ps(lanes_within(at, lo, hi), reinterpret_cast<const float*>(address));
}

// The row pass of the input transform with AVX-512, 16 tiles per step, all in registers: the step's 64 samples
// (plus the two that the last tile shares with the next step) split into their four phases by permutes, the
// phases shifted by one tile for the last two taps, B^T on the six tap vectors, six stores. Sample i of the row
// segment is at line + i and exists for lo <= i < hi; the others read as zero (masked loads, so `line` may point
// before the row: the samples outside are never touched). w rows have room for n rounded up to 16.
PD_AVX512 void input_rows_avx512(const float* line, int lo, int hi, int n, float* w, size_t stride) {
    const __m512i idx[4] = {_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
                            _mm512_setr_epi32(1, 5, 9, 13, 17, 21, 25, 29, 1, 5, 9, 13, 17, 21, 25, 29),
                            _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 2, 6, 10, 14, 18, 22, 26, 30),
                            _mm512_setr_epi32(3, 7, 11, 15, 19, 23, 27, 31, 3, 7, 11, 15, 19, 23, 27, 31)};
    for (int m = 0; m < n; m += 16) {
        const int at = 4 * m;
        const __m512 v0 = load_within(line, at, lo, hi), v1 = load_within(line, at + 16, lo, hi);
        const __m512 v2 = load_within(line, at + 32, lo, hi), v3 = load_within(line, at + 48, lo, hi);
        const __m512 v4 = load_within(line, at + 64, lo, hi);
        __m512 z[6], o[6];
        for (int q = 0; q < 4; ++q)
            z[q] = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_permutex2var_ps(v0, idx[q], v1),
                                        _mm512_permutex2var_ps(v2, idx[q], v3));
        // taps 4 and 5 of tile l are taps 0 and 1 of tile l + 1
        z[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v4), _mm512_castps_si512(z[0]), 1));
        const __m512i v4_next = _mm512_alignr_epi32(_mm512_castps_si512(v4), _mm512_castps_si512(v4), 1);
        z[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(v4_next, _mm512_castps_si512(z[1]), 1));
        bt_vectors(z, o);
        for (int i = 0; i < 6; ++i) _mm512_storeu_ps(w + i * stride + m, o[i]);
    }
}

// Per-thread scratch of the transforms.
struct Scratch {
    AlignedVector<float> rows;    // 36 rows per channel (two channels in bf16 pairs): the row-transformed input
                                  // tiles, or 24 rows: the column-transformed sums of one filter (rows of
                                  // band + kBlock, the last kBlock as overrun room)
    AlignedVector<float> line;    // one zero-padded input row (for kernels without AVX-512)
    AlignedVector<float> phases;  // four phase arrays of a row
    void reserve(size_t band, size_t width) {
        if (rows.size() < 2 * kPoints * (band + kBlock)) rows.resize(2 * kPoints * (band + kBlock));
        if (line.size() < 4 * width + 16) line.resize(4 * width + 16);
        if (phases.size() < 4 * (width + 16)) phases.resize(4 * (width + 16));
    }
};

// Row pass of the input transform for one tile row segment and one of its six input rows (r): writes the six
// values B^T d_r of each tile (d_r: the tile's row r, six samples) to w[s' * stride + t + m].
PD_CLONES void input_rows(const float* row, int width, int x0, int n, bool avx512, Scratch& s, float* w,
                          size_t stride) {
    // zero-padded samples x0 .. x0 + 4n + 3, then their four phases
    const int len = 4 * n + 4;
    if (!row) {
        for (int i = 0; i < 6; ++i) std::memset(w + i * stride, 0, sizeof(float) * n);
        return;
    }
    const int lo = std::clamp(-x0, 0, len), hi = std::clamp(width - x0, lo, len);
    if (avx512) {
        input_rows_avx512(reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(row) + (intptr_t)x0 * 4), lo, hi,
                          n, w, stride);
        return;
    }
    const float* line = row + x0;
    if (lo > 0 || hi < len) {  // the tiles reach past the image: a zero-padded copy of the samples
        float* padded = s.line.data();
        if (lo > 0) std::memset(padded, 0, sizeof(float) * lo);
        std::memcpy(padded + lo, row + x0 + lo, sizeof(float) * (hi - lo));
        if (hi < len) std::memset(padded + hi, 0, sizeof(float) * (len - hi));
        line = padded;
    }
    const int pstride = n + 16;
    float* p0 = s.phases.data();
    float *p1 = p0 + pstride, *p2 = p1 + pstride, *p3 = p2 + pstride;
    deinterleave4_scalar(line, n + 1, p0, p1, p2, p3);
    bt_row(n, p0, p1, p2, p3, w, w + stride, w + 2 * stride, w + 3 * stride, w + 4 * stride, w + 5 * stride);
}

// Column pass of the input transform for L tiles: w holds the 36 row-transformed values (w[(r * 6 + s) * stride]),
// the result B^T (d B) goes to dst + point * point_stride (L consecutive floats per point).
template <int L>
PD_CLONES void input_columns(const float* w, size_t stride, float* dst, size_t point_stride) {
    for (int s = 0; s < 6; ++s) {
        float v[6][L];
        const float* col = w + s * stride;
        for (int l = 0; l < L; ++l)
            PD_BT(col[l], col[6 * stride + l], col[12 * stride + l], col[18 * stride + l], col[24 * stride + l],
                  col[30 * stride + l], v[0][l], v[1][l], v[2][l], v[3][l], v[4][l], v[5][l]);
        for (int r = 0; r < 6; ++r) std::memcpy(dst + (size_t)(r * 6 + s) * point_stride, v[r], sizeof(v[r]));
    }
}

#define PD_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,avx512bf16")))

// The column pass for two channels at once, in bf16 pairs, for 16 tiles: the results of channel 2q (w0) and
// 2q + 1 (w1; null past the last channel) rounded to bf16 (vcvtne2ps2bf16: to nearest even) and stored as one
// 32-bit word per tile, low half first, as the bf16 kernels read their right operand. Only used with the AVX512_BF16
// kernels, whose panels are multiples of 16 tiles.
PD_AVX512_BF16 void input_columns_pairs(const float* w0, const float* w1, size_t stride, uint32_t* dst,
                                        size_t point_stride) {
    // 16-bit lane 2l takes channel 2q's tile l (element l of the conversion's low half), lane 2l + 1 channel
    // 2q + 1's (element 16 + l of its high half)
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                                6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int s = 0; s < 6; ++s) {
        __m512 z[6], v0[6], v1[6];
        for (int r = 0; r < 6; ++r) z[r] = _mm512_loadu_ps(w0 + (size_t)(6 * r + s) * stride);
        bt_vectors(z, v0);
        if (w1) {
            for (int r = 0; r < 6; ++r) z[r] = _mm512_loadu_ps(w1 + (size_t)(6 * r + s) * stride);
            bt_vectors(z, v1);
        } else {
            for (int r = 0; r < 6; ++r) v1[r] = _mm512_setzero_ps();
        }
        for (int r = 0; r < 6; ++r) {
            const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(v1[r], v0[r]);
            _mm512_storeu_si512(dst + (size_t)(r * 6 + s) * point_stride, _mm512_permutexvar_epi16(interleave, both));
        }
    }
}

// Column pass of the output transform for L tiles of one filter: the 36 sums at src + point * point_stride become
// z[(r' * 6 + s) * stride + l] = (A^T m)[r'][s] for r' < 4.
template <int L>
PD_CLONES void output_columns(const float* src, size_t point_stride, float* z, size_t stride) {
    for (int s = 0; s < 6; ++s) {
        const float* m0 = src + (size_t)s * point_stride;
        float o[4][L];
        for (int l = 0; l < L; ++l)
            PD_AT(m0[l], m0[6 * point_stride + l], m0[12 * point_stride + l], m0[18 * point_stride + l],
                  m0[24 * point_stride + l], m0[30 * point_stride + l], o[0][l], o[1][l], o[2][l], o[3][l]);
        for (int r = 0; r < 4; ++r) std::memcpy(z + (r * 6 + s) * stride, o[r], sizeof(o[r]));
    }
}

// Row pass of the output transform for one tile row segment and output row r': the six column-transformed values
// of each tile (z[s * stride + m]) become its four outputs, written interleaved to out (cols values), then bias and
// activation.
PD_CLONES void output_rows(const float* z, size_t stride, int n, int cols, bool avx512, Scratch& s, float* out,
                           float bias, int activation) {
    const int pstride = n + 16;
    float* y0 = s.phases.data();
    float *y1 = y0 + pstride, *y2 = y1 + pstride, *y3 = y2 + pstride;
    at_row(n, z, z + stride, z + 2 * stride, z + 3 * stride, z + 4 * stride, z + 5 * stride, y0, y1, y2, y3);
    switch (activation) {
#define PD_ACTIVATION_CASE(A)                                           \
    case A:                                                             \
        for (float* y : {y0, y1, y2, y3}) bias_activate<A>(y, n, bias); \
        break;
        PD_FOR_EACH_ELEMENTWISE_ACTIVATION(PD_ACTIVATION_CASE)
#undef PD_ACTIVATION_CASE
        default: break;
    }
    if (avx512)
        interleave4_avx512(y0, y1, y2, y3, cols, out);
    else
        interleave4_scalar(y0, y1, y2, y3, cols, out);
}

int round_up(int v, int to) { return (v + to - 1) / to * to; }

}  // namespace

void set_winograd_enabled(bool enabled) { enabled_flag().store(enabled); }
void set_winograd_band_floats(size_t floats) { band_override().store(floats); }
bool winograd_enabled() { return enabled_flag().load(); }

bool winograd_worthwhile(int channels, int filters, int out_h, int out_w) {
    // The 36 GEMMs need some depth and some rows to run at kernel speed, and tiles that are mostly inside the
    // image; below these, the transforms cost more than the multiplies they save.
    return channels >= 16 && filters >= 16 && out_h >= 8 && out_w >= 8;
}

void WinogradConv::prepare(const float* weights, int filters, int channels, int out_h, int out_w, Isa isa,
                           Precision precision) {
    filters_ = filters;
    channels_ = channels;
    // U = G g G^T per filter and channel, in double. Row j of G is (1, p, p^2) / prod_{l != j} (p - p_l) for the
    // point p = p_j (0, 1, -1, 2, -1/2), and (0, 0, 1) for infinity.
    static const double G[6][3] = {{1, 0, 0},
                                   {-1. / 3, -1. / 3, -1. / 3},
                                   {1. / 3, -1. / 3, 1. / 3},
                                   {1. / 15, 2. / 15, 4. / 15},
                                   {-16. / 15, 8. / 15, -4. / 15},
                                   {0, 0, 1}};
    std::vector<float> u((size_t)kPoints * filters * channels);
    const size_t plane = (size_t)filters * channels;
    for (int f = 0; f < filters; ++f)
        for (int c = 0; c < channels; ++c) {
            const float* g = weights + ((size_t)f * channels + c) * 9;
            double gg[6][3];  // G g
            for (int i = 0; i < 6; ++i)
                for (int j = 0; j < 3; ++j) gg[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < 6; ++i)
                for (int j = 0; j < 6; ++j)
                    u[(size_t)(i * 6 + j) * plane + (size_t)f * channels + c] =
                        (float)(gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2]);
        }
    // Few tiles per image: the narrow tile wastes less on padding columns; otherwise the wide one.
    const int tiles = ((out_h + 3) / 4) * ((out_w + 3) / 4);
    const MicroKernel& wide = micro_kernel(isa, TileWidth::Wide);
    const MicroKernel& narrow = micro_kernel(isa, TileWidth::Narrow);
    auto padded = [&](const MicroKernel& k) { return (double)round_up(filters, k.mr) * round_up(tiles, k.nr); };
    const TileWidth width = padded(narrow) < padded(wide) ? TileWidth::Narrow : TileWidth::Wide;
    u_.resize(kPoints);
    for (int p = 0; p < kPoints; ++p)
        u_[p].pack(u.data() + (size_t)p * plane, filters, channels, channels, isa, width, precision);
}

namespace {

// The buffers of one band: the transformed inputs V (36 packed right operands, fp32, and their bf16 pairs when the
// kernels take pairs) and the GEMM results M (36 matrices filters x band).
struct BandBuffers {
    AlignedVector<float> v, m;
    AlignedVector<uint32_t> v_pairs;
    void reserve(size_t v_floats, size_t m_floats, size_t pair_words) {
        if (v.size() < v_floats) v.resize(v_floats);
        if (m.size() < m_floats) m.resize(m_floats);
        if (v_pairs.size() < pair_words) v_pairs.resize(pair_words);
    }
};

}  // namespace

// Everything one band needs, and its four steps; each step is a loop over independent items (channels, points,
// filters) that the caller either shares among the threads or runs whole in one thread.
struct WinogradConv::Band {
    const WinogradConv& conv;
    const float* in;
    float* out;
    int height, width, pad, out_h, out_w, tiles_x, per_image;
    const float* bias;
    int activation;
    int C, K, nr, lanes, band, depth;
    bool pairs, round, avx512;
    long plane_in, plane_out;
    size_t v_stride, m_stride;
    float *V = nullptr, *M = nullptr;
    uint32_t* Vb = nullptr;
    int band0 = 0, count = 0, cols = 0;
    std::vector<Segment> segments;

    // Tiles band0 .. band0 + count - 1 (count <= band), as runs within tile rows.
    void select(int first, int n) {
        band0 = first;
        count = n;
        cols = round_up(n, nr);
        segments.clear();
        for (int t = band0; t < band0 + count;) {
            const int b = t / per_image, ty = (t % per_image) / tiles_x, tx = t % tiles_x;
            const int run = std::min(tiles_x - tx, band0 + count - t);
            segments.push_back({(long)b * C * plane_in, (long)b * K * plane_out, ty, tx, run, t - band0});
            t += run;
        }
    }

    // Row pass of channel c into w (36 rows of `stride`). The row pass of a segment may write up to kBlock - 1
    // values past its end: the next segment, written later, or the row's overrun room (then zeroed up to cols),
    // takes them.
    void input_rows_of(int c, float* w, size_t stride, Scratch& scratch) const {
        for (const Segment& sg : segments) {
            const float* plane = in + sg.in_image + c * plane_in;
            for (int r = 0; r < 6; ++r) {
                const int y = 4 * sg.ty - pad + r;
                const float* row = y >= 0 && y < height ? plane + (long)y * width : nullptr;
                input_rows(row, width, 4 * sg.tx0 - pad, sg.n, avx512, scratch, w + r * 6 * stride + sg.t, stride);
            }
        }
        for (int i = 0; i < kPoints; ++i) std::memset(w + i * stride + count, 0, sizeof(float) * (cols - count));
    }

    // Input transform of channel c: the row pass into the scratch, then the column pass into the packed right
    // operands: point p, panel j, channel c at V[p * v_stride + (j * C + c) * nr + lane].
    void input(int c, Scratch& scratch) const {
        float* w = scratch.rows.data();
        const size_t stride = (size_t)cols + kBlock;
        input_rows_of(c, w, stride, scratch);
        for (int first = 0; first < cols; first += lanes) {
            float* dst = V + ((size_t)(first / nr) * C + c) * nr + first % nr;
            if (lanes == 16)
                input_columns<16>(w + first, stride, dst, v_stride);
            else
                input_columns<8>(w + first, stride, dst, v_stride);
        }
    }

    // In bf16 pairs: input transform of channels 2q and 2q + 1 straight into the pairs of the right operands:
    // point p, panel j, pair q at Vb[p * depth * band + (j * depth + q) * nr + lane].
    void input_pair(int q, Scratch& scratch) const {
        const size_t stride = (size_t)cols + kBlock;
        float* w0 = scratch.rows.data();
        float* w1 = 2 * q + 1 < C ? w0 + kPoints * stride : nullptr;
        input_rows_of(2 * q, w0, stride, scratch);
        if (w1) input_rows_of(2 * q + 1, w1, stride, scratch);
        const size_t point_stride = (size_t)depth * band;
        for (int first = 0; first < cols; first += 16) {
            uint32_t* dst = Vb + ((size_t)(first / nr) * depth + q) * nr + first % nr;
            input_columns_pairs(w0 + first, w1 ? w1 + first : nullptr, stride, dst, point_stride);
        }
    }

    // One item of the input step: a channel, or a pair of channels in bf16 pairs.
    int input_items() const { return pairs ? depth : C; }
    void input_item(int i, Scratch& scratch) const {
        if (pairs)
            input_pair(i, scratch);
        else
            input(i, scratch);
    }

    // bf16 precision on kernels without bf16 pairs: point p's right operand rounded to bf16 values in place.
    void convert(int p) const {
        if (round) round_span_to_bf16(V + p * v_stride, (size_t)C * cols);
    }

    // M[p] (K x cols, leading dimension band) = U[p] * V[p]
    void multiply(int p) const {
        const void* right = pairs ? (const void*)(Vb + (size_t)p * depth * band) : (const void*)(V + p * v_stride);
        gemm_block(conv.u_[p], 0, K, right, cols, M + p * m_stride, band, nullptr, LINEAR);
    }

    // Output transform of filter k: the column pass into the scratch (24 x cols), then the row pass into the output
    // rows with bias and activation.
    void output(int k, Scratch& scratch) const {
        float* z = scratch.rows.data();
        const size_t stride = (size_t)cols + kBlock;
        for (int first = 0; first < count; first += lanes) {
            const float* src = M + (size_t)k * band + first;
            if (lanes == 16)
                output_columns<16>(src, m_stride, z + first, stride);
            else
                output_columns<8>(src, m_stride, z + first, stride);
        }
        const float b = bias ? bias[k] : 0.f;
        for (const Segment& sg : segments) {
            float* plane = out + sg.out_image + k * plane_out;
            const int cols_out = std::min(4 * sg.n, out_w - 4 * sg.tx0);
            for (int r = 0; r < 4 && 4 * sg.ty + r < out_h; ++r)
                output_rows(z + r * 6 * stride + sg.t, stride, sg.n, cols_out, avx512, scratch,
                            plane + (long)(4 * sg.ty + r) * out_w + 4 * sg.tx0, b, activation);
        }
    }
};

void WinogradConv::forward(const float* in, int batch, int height, int width, int pad, float* out, int out_h, int out_w,
                           const float* bias, int activation) const {
    const int C = channels_, K = filters_;
    const int nr = u_.front().kernel().nr;
    const int tiles_y = (out_h + 3) / 4, tiles_x = (out_w + 3) / 4;
    const int per_image = tiles_y * tiles_x, total = batch * per_image;
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
#else
    const int threads = 1;
#endif
    // Bands that fit one core's L2 (with the weights streaming past): when there are enough of them for every
    // thread, each thread runs whole bands on its own, without a barrier; otherwise all threads share one larger
    // band at a time, splitting each step.
    const size_t per_tile = (size_t)kPoints * (C + K), budget = band_override().load();
    const int private_band = std::max(nr, (int)((budget ? budget : kPrivateBandFloats) / per_tile / nr * nr));
    const bool independent = (total + private_band - 1) / private_band >= 2 * threads;
    const int shared_band = std::max(nr, (int)((budget ? budget : kBandFloats) / per_tile / nr * nr));
    const int band = independent ? private_band : std::min(shared_band, round_up(total, nr));

    Band proto{*this,
               in,
               out,
               height,
               width,
               pad,
               out_h,
               out_w,
               tiles_x,
               per_image,
               bias,
               activation,
               C,
               K,
               nr,
               nr % 16 == 0 ? 16 : 8,
               band,
               0,
               false,
               false,
               active_isa() == Isa::Avx512,
               (long)height * width,
               (long)out_h * out_w,
               (size_t)C * band,
               (size_t)K * band,
               nullptr,
               nullptr,
               nullptr,
               0,
               0,
               0,
               {}};
    proto.pairs = u_.front().pairs();
    proto.round = precision() == Precision::BF16 && !proto.pairs;
    proto.depth = proto.pairs ? (C + 1) / 2 : C;
    const size_t v_floats = proto.pairs ? 0 : kPoints * proto.v_stride, m_floats = kPoints * proto.m_stride;
    const size_t pair_words = proto.pairs ? (size_t)kPoints * proto.depth * band : 0;

    if (independent) {
#pragma omp parallel
        {
            DenormalsAsZero flush;
            static thread_local Scratch scratch;
            static thread_local BandBuffers buffers;
            scratch.reserve(band, tiles_x + 1);
            buffers.reserve(v_floats, m_floats, pair_words);
            Band work = proto;
            work.V = buffers.v.data();
            work.M = buffers.m.data();
            work.Vb = buffers.v_pairs.data();
#pragma omp for schedule(dynamic, 1)
            for (int band0 = 0; band0 < total; band0 += band) {
                work.select(band0, std::min(band, total - band0));
                for (int i = 0; i < work.input_items(); ++i) work.input_item(i, scratch);
                for (int p = 0; p < kPoints; ++p) {
                    work.convert(p);
                    work.multiply(p);
                }
                for (int k = 0; k < K; ++k) work.output(k, scratch);
            }
        }
        return;
    }

    static thread_local BandBuffers shared;  // the calling thread's, used by the whole team
    shared.reserve(v_floats, m_floats, pair_words);
    proto.V = shared.v.data();
    proto.M = shared.m.data();
    proto.Vb = shared.v_pairs.data();
#pragma omp parallel
    {
        DenormalsAsZero flush;
        static thread_local Scratch scratch;
        scratch.reserve(band, tiles_x + 1);
        Band work = proto;
        for (int band0 = 0; band0 < total; band0 += band) {
            work.select(band0, std::min(band, total - band0));
#pragma omp for schedule(static)
            for (int i = 0; i < work.input_items(); ++i) work.input_item(i, scratch);
            if (work.round) {
#pragma omp for schedule(static)
                for (int p = 0; p < kPoints; ++p) work.convert(p);
            }
#pragma omp for schedule(dynamic, 1)
            for (int p = 0; p < kPoints; ++p) work.multiply(p);
#pragma omp for schedule(static)
            for (int k = 0; k < K; ++k) work.output(k, scratch);
        }
    }
}

}  // namespace pd
