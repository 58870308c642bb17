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
#include <cstring>

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

std::atomic<size_t>& band_floats() {
    static std::atomic<size_t> floats(kBandFloats);
    return floats;
}

// B^T z for one column or row of a 6x6 tile (the interpolation points 0, 1, -1, 2, -2 and infinity).
#define PD_BT(z0, z1, z2, z3, z4, z5, o0, o1, o2, o3, o4, o5) \
    do {                                                      \
        o0 = 4.f * (z0) - 5.f * (z2) + (z4);                  \
        o1 = -4.f * ((z1) + (z2)) + (z3) + (z4);              \
        o2 = 4.f * ((z1) - (z2)) - (z3) + (z4);               \
        o3 = -2.f * ((z1) - (z3)) - (z2) + (z4);              \
        o4 = 2.f * ((z1) - (z3)) - (z2) + (z4);               \
        o5 = 4.f * (z1) - 5.f * (z3) + (z5);                  \
    } while (0)

// A^T m for one column or row of a tile of sums: 6 values to 4 outputs.
#define PD_AT(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3)     \
    do {                                                  \
        const float s12 = (m1) + (m2), d12 = (m1) - (m2); \
        const float s34 = (m3) + (m4), d34 = (m3) - (m4); \
        o0 = (m0) + s12 + s34;                            \
        o1 = d12 + 2.f * d34;                             \
        o2 = s12 + 4.f * s34;                             \
        o3 = d12 + 8.f * d34 + (m5);                      \
    } while (0)

// Where each tile of a band comes from and goes to.
struct TileMap {
    std::vector<long> image;  // offset of the tile's image in the input (batch index * channels * h * w)
    std::vector<long> out;    // offset of the tile's image in the output
    std::vector<int> y0, x0;  // top-left input sample (may be negative: padding)
    std::vector<int> oy, ox;  // top-left output sample
};

// Input transform of L tiles (lanes) of one channel: gathers each 6x6 input window (zeros outside the image),
// transforms it, and stores the 36 values at dst + point * point_stride (L consecutive floats each).
template <int L>
PD_CLONES void input_chunk(const float* in, long channel_offset, int height, int width, const TileMap& map, int t0,
                           int count, float* dst, size_t point_stride) {
    float d[kPoints][L];
    for (int l = 0; l < L; ++l) {
        if (l >= count) {
            for (int i = 0; i < kPoints; ++i) d[i][l] = 0.f;
            continue;
        }
        const int t = t0 + l, y0 = map.y0[t], x0 = map.x0[t];
        const float* plane = in + map.image[t] + channel_offset;
        if (y0 >= 0 && x0 >= 0 && y0 + 6 <= height && x0 + 6 <= width) {
            for (int r = 0; r < 6; ++r) {
                const float* row = plane + (long)(y0 + r) * width + x0;
                for (int s = 0; s < 6; ++s) d[r * 6 + s][l] = row[s];
            }
        } else {
            for (int r = 0; r < 6; ++r) {
                const int y = y0 + r;
                const bool row_in = y >= 0 && y < height;
                for (int s = 0; s < 6; ++s) {
                    const int x = x0 + s;
                    d[r * 6 + s][l] = row_in && x >= 0 && x < width ? plane[(long)y * width + x] : 0.f;
                }
            }
        }
    }
    float w[kPoints][L];
    for (int s = 0; s < 6; ++s)
        for (int l = 0; l < L; ++l)
            PD_BT(d[s][l], d[6 + s][l], d[12 + s][l], d[18 + s][l], d[24 + s][l], d[30 + s][l], w[s][l],
                  w[6 + s][l], w[12 + s][l], w[18 + s][l], w[24 + s][l], w[30 + s][l]);
    for (int r = 0; r < 6; ++r) {
        float v[6][L];
        for (int l = 0; l < L; ++l)
            PD_BT(w[r * 6][l], w[r * 6 + 1][l], w[r * 6 + 2][l], w[r * 6 + 3][l], w[r * 6 + 4][l], w[r * 6 + 5][l],
                  v[0][l], v[1][l], v[2][l], v[3][l], v[4][l], v[5][l]);
        for (int s = 0; s < 6; ++s) std::memcpy(dst + (size_t)(r * 6 + s) * point_stride, v[s], sizeof(v[s]));
    }
}

// Output transform of L tiles of one filter: reads the 36 sums of each tile at src + point * point_stride,
// computes the 4x4 outputs, adds the bias, applies the activation and writes the tiles (clipped at the image edge).
template <int L>
PD_CLONES void output_chunk(const float* src, size_t point_stride, const TileMap& map, int t0, int count,
                            long filter_offset, int out_h, int out_w, float bias, int activation, float* out) {
    float m[kPoints][L];
    for (int i = 0; i < kPoints; ++i) std::memcpy(m[i], src + (size_t)i * point_stride, sizeof(m[i]));
    float t[4][6][L];
    for (int s = 0; s < 6; ++s)
        for (int l = 0; l < L; ++l)
            PD_AT(m[s][l], m[6 + s][l], m[12 + s][l], m[18 + s][l], m[24 + s][l], m[30 + s][l], t[0][s][l],
                  t[1][s][l], t[2][s][l], t[3][s][l]);
    float y[16][L];
    for (int r = 0; r < 4; ++r)
        for (int l = 0; l < L; ++l)
            PD_AT(t[r][0][l], t[r][1][l], t[r][2][l], t[r][3][l], t[r][4][l], t[r][5][l], y[r * 4][l],
                  y[r * 4 + 1][l], y[r * 4 + 2][l], y[r * 4 + 3][l]);
    activate_span(&y[0][0], (size_t)16 * L, activation, bias);
    for (int l = 0; l < count; ++l) {
        const int tile = t0 + l, oy = map.oy[tile], ox = map.ox[tile];
        float* dst = out + map.out[tile] + filter_offset + (long)oy * out_w + ox;
        const int rows = std::min(4, out_h - oy), cols = std::min(4, out_w - ox);
        for (int r = 0; r < rows; ++r)
            for (int s = 0; s < cols; ++s) dst[(long)r * out_w + s] = y[r * 4 + s][l];
    }
}

int round_up(int v, int to) { return (v + to - 1) / to * to; }

}  // namespace

void set_winograd_enabled(bool enabled) { enabled_flag().store(enabled); }
void set_winograd_band_floats(size_t floats) { band_floats().store(floats ? floats : kBandFloats); }
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
    // U = G g G^T per filter and channel, in double. G rows: (1/4, 0, 0), (-1/6, -1/6, -1/6), (-1/6, 1/6, -1/6),
    // (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1).
    static const double G[6][3] = {{0.25, 0, 0},           {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                   {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
    std::vector<float> u((size_t)kPoints * filters * channels);
    const size_t plane = (size_t)filters * channels;
    for (int f = 0; f < filters; ++f)
        for (int c = 0; c < channels; ++c) {
            const float* g = weights + ((size_t)f * channels + c) * 9;
            double gg[6][3];  // G g
            for (int i = 0; i < 6; ++i)
                for (int j = 0; j < 3; ++j)
                    gg[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < 6; ++i)
                for (int j = 0; j < 6; ++j)
                    u[(size_t)(i * 6 + j) * plane + (size_t)f * channels + c] =
                        (float)(gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2]);
        }
    // Few tiles per image: the narrow tile wastes less on padding columns; otherwise the wide one.
    const int tiles = ((out_h + 3) / 4) * ((out_w + 3) / 4);
    const MicroKernel& wide = micro_kernel(isa, TileWidth::Wide);
    const MicroKernel& narrow = micro_kernel(isa, TileWidth::Narrow);
    auto padded = [&](const MicroKernel& k) {
        return (double)round_up(filters, k.mr) * round_up(tiles, k.nr);
    };
    const TileWidth width = padded(narrow) < padded(wide) ? TileWidth::Narrow : TileWidth::Wide;
    u_.resize(kPoints);
    for (int p = 0; p < kPoints; ++p)
        u_[p].pack(u.data() + (size_t)p * plane, filters, channels, channels, isa, width, precision);
}

void WinogradConv::forward(const float* in, int batch, int height, int width, int pad, float* out, int out_h,
                           int out_w, const float* bias, int activation) const {
    const int C = channels_, K = filters_;
    const MicroKernel& kernel = u_.front().kernel();
    const int nr = kernel.nr;
    const int tiles_y = (out_h + 3) / 4, tiles_x = (out_w + 3) / 4;
    const int per_image = tiles_y * tiles_x, total = batch * per_image;
    // Tiles per band: as many whole panels as fit the band budget, at least one panel.
    const int band_cap = std::max(nr, (int)(band_floats().load() / ((size_t)kPoints * (C + K)) / nr * nr));
    const int band = std::min(band_cap, round_up(total, nr));
    const bool bf16 = u_.front().pairs(), round = precision() == Precision::BF16 && !bf16;
    const int depth = bf16 ? (C + 1) / 2 : C;  // rows of the right operands as the kernels count them

    static thread_local AlignedVector<float> v_buffer, m_buffer;
    static thread_local AlignedVector<uint32_t> v_bf16;
    const size_t v_stride = (size_t)C * band, m_stride = (size_t)K * band;
    if (v_buffer.size() < kPoints * v_stride) v_buffer.resize(kPoints * v_stride);
    if (m_buffer.size() < kPoints * m_stride) m_buffer.resize(kPoints * m_stride);
    if (bf16 && v_bf16.size() < (size_t)kPoints * depth * band) v_bf16.resize((size_t)kPoints * depth * band);
    float* V = v_buffer.data();
    float* M = m_buffer.data();
    uint32_t* Vb = v_bf16.data();

    TileMap map;
    map.image.resize(total);
    map.out.resize(total);
    map.y0.resize(total);
    map.x0.resize(total);
    map.oy.resize(total);
    map.ox.resize(total);
    for (int t = 0; t < total; ++t) {
        const int b = t / per_image, ty = (t % per_image) / tiles_x, tx = t % tiles_x;
        map.image[t] = (long)b * C * height * width;
        map.out[t] = (long)b * K * out_h * out_w;
        map.oy[t] = 4 * ty;
        map.ox[t] = 4 * tx;
        map.y0[t] = 4 * ty - pad;
        map.x0[t] = 4 * tx - pad;
    }
    // Lanes per transform chunk: a chunk must not straddle two panels.
    const int lanes = nr % 16 == 0 ? 16 : 8;
    const long plane_in = (long)height * width, plane_out = (long)out_h * out_w;

#pragma omp parallel
    {
        DenormalsAsZero flush;
        for (int band0 = 0; band0 < total; band0 += band) {
            const int count = std::min(band, total - band0);
            const int cols = round_up(count, nr);
            const int chunks = cols / lanes;
            // 1. input transform into the packed right operands: point p, panel j, channel c at
            //    V[p * v_stride + (j * C + c) * nr + lane]
#pragma omp for schedule(static)
            for (long item = 0; item < (long)C * chunks; ++item) {
                const int c = (int)(item / chunks), chunk = (int)(item % chunks);
                const int first = chunk * lanes, panel = first / nr, lane = first % nr;
                float* dst = V + ((size_t)panel * C + c) * nr + lane;
                if (lanes == 16)
                    input_chunk<16>(in, c * plane_in, height, width, map, band0 + first,
                                    std::max(0, std::min(lanes, count - first)), dst, v_stride);
                else
                    input_chunk<8>(in, c * plane_in, height, width, map, band0 + first,
                                   std::max(0, std::min(lanes, count - first)), dst, v_stride);
            }
            if (bf16 || round) {
#pragma omp for schedule(static)
                for (int p = 0; p < kPoints; ++p) {
                    if (bf16)
                        fp32_panels_to_bf16(V + p * v_stride, C, cols / nr, nr, Vb + (size_t)p * depth * band);
                    else
                        round_span_to_bf16(V + p * v_stride, (size_t)C * cols);
                }
            }
            // 2. the 36 GEMMs: M[p] (K x cols, leading dimension band) = U[p] * V[p]
#pragma omp for schedule(dynamic, 1)
            for (int p = 0; p < kPoints; ++p) {
                const void* right = bf16 ? (const void*)(Vb + (size_t)p * depth * band) : (const void*)(V + p * v_stride);
                gemm_block(u_[p], 0, K, right, cols, M + p * m_stride, band, nullptr, LINEAR);
            }
            // 3. output transform, bias, activation, store
#pragma omp for schedule(static)
            for (long item = 0; item < (long)K * chunks; ++item) {
                const int k = (int)(item / chunks), chunk = (int)(item % chunks);
                const int first = chunk * lanes;
                const int n = std::min(lanes, count - first);
                if (n <= 0) continue;
                const float* src = M + (size_t)k * band + first;
                const float b = bias ? bias[k] : 0.f;
                if (lanes == 16)
                    output_chunk<16>(src, m_stride, map, band0 + first, n, k * plane_out, out_h, out_w, b,
                                     activation, out);
                else
                    output_chunk<8>(src, m_stride, map, band0 + first, n, k * plane_out, out_h, out_w, b,
                                    activation, out);
            }
        }
    }
}

}  // namespace pd
