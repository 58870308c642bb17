// [convolutional]: batch-norm folded into the weights and bias once per parameter change (Darknet's
// fuse_conv_batchnorm, computed in double), the folded weights packed for the CPU's micro-kernel, and per image and
// group one packed GEMM whose B operand is packed straight from the input (1x1 convolutions read the image as it
// is; others are unrolled im2col-style block by block), with bias + activation fused into the GEMM. 3x3 stride-1
// convolutions of useful size go through Winograd F(4x4, 3x3) instead (cpu/winograd.h).
// Training runs on the raw parameters with batch statistics (batch-norm and activation in one pass); backward
// is a GEMM on the same columns (weights) and, for the input, a convolution of the output gradient with the
// flipped filters (stride 1) or a GEMM + col2im, with transposed operands copied into the workspace for our
// row-major sgemm.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
#include "../cpu/winograd.h"
#include "../math/activations.h"

namespace pd {
namespace {

// Backward GEMMs over image positions (the weight gradient's sum, the input gradient's columns) take several
// images at once on maps smaller than this: fewer, better-shaped products.
constexpr int kMinPositions = 1024;
// Floats of columns gradient per band in the GEMM + col2im input gradient (within the last-level cache).
constexpr long long kBandFloats = 1 << 20;

class Convolutional : public Layer {
public:
    explicit Convolutional(const LayerSpec& s) : Layer(s), p_(spec.params<ConvolutionalParams>()) {
        PD_CHECK(p_.precision == Precision::FP32 || p_.precision == Precision::BF16, "layer ", s.index,
                 ": the CPU convolution runs fp32 or bf16, not precision code ", (int)p_.precision);
    }

    void prepare(const float* params, float eps) override {
        const size_t per_filter = (size_t)(spec.in.c / p_.groups) * p_.size * p_.size;
        const float* w = params + spec.tensor("weights").offset;
        const float* b = params + spec.tensor("biases").offset;
        weights_.assign(w, w + per_filter * p_.filters);
        bias_.assign(b, b + p_.filters);
        if (p_.batch_norm()) {
            std::vector<double> factor(p_.filters);
            batchnorm_factors(b, params + spec.tensor("scales").offset, params + spec.tensor("rolling_mean").offset,
                              params + spec.tensor("rolling_variance").offset, eps, p_.filters, factor.data(),
                              bias_.data());
            for (int f = 0; f < p_.filters; ++f)
                for (size_t i = 0; i < per_filter; ++i)
                    weights_[f * per_filter + i] = (float)(weights_[f * per_filter + i] * factor[f]);
        }
        // Packed forms are derived from the folded weights when a forward pass first needs them.
        packed_.clear();
        winograd_ = WinogradConv();
    }

    // A 1x1 convolution with stride 1 and no padding multiplies the image itself: no unrolling.
    bool direct() const { return p_.size == 1 && p_.stride_x == 1 && p_.stride_y == 1 && p_.padding == 0; }

    // Winograd F(4x4, 3x3) applies to 3x3, stride 1, undilated, ungrouped convolutions.
    bool winograd_shape() const {
        return p_.size == 3 && p_.stride_x == 1 && p_.stride_y == 1 && p_.dilation == 1 && p_.groups == 1 &&
               winograd_worthwhile(spec.in.c, p_.filters, spec.out.h, spec.out.w);
    }

    void forward(const ForwardContext& ctx) override {
        const int in_c = spec.in.c / p_.groups, out_c = p_.filters / p_.groups;
        const int N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const bool fuse_activation = !is_channel_activation(p_.activation);
        if (winograd_shape() && winograd_enabled()) {
            if (!winograd_.prepared() || winograd_.isa() != active_isa())
                winograd_.prepare(weights_.data(), p_.filters, spec.in.c, spec.out.h, spec.out.w, active_isa(),
                                  p_.precision);
            winograd_.forward(ctx.input, ctx.batch, spec.in.h, spec.in.w, p_.padding, ctx.output, spec.out.h,
                              spec.out.w, bias_.data(), fuse_activation ? p_.activation : LINEAR);
            if (!fuse_activation) activate_array(ctx.output, ctx.batch, p_.filters, (size_t)N, p_.activation);
            return;
        }
        if (packed_.empty() || packed_.front().isa() != active_isa()) pack_weights();
        ConvGeometry geometry;
        geometry.channels = in_c;
        geometry.height = spec.in.h;
        geometry.width = spec.in.w;
        geometry.ksize = p_.size;
        geometry.pad = p_.pad();
        geometry.stride_y = p_.stride_y;
        geometry.stride_x = p_.stride_x;
        geometry.dilation = p_.dilation;
        geometry.out_h = spec.out.h;
        geometry.out_w = spec.out.w;
        for (int b = 0; b < ctx.batch; ++b) {
            for (int g = 0; g < p_.groups; ++g) {
                const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                float* out = ctx.output + ((size_t)b * p_.filters + (size_t)g * out_c) * N;
                PanelPacker pack;
                if (direct())
                    pack = [&](int col0, int cols, int nr, float* dst) {
                        pack_dense_panels(image, N, in_c, col0, cols, nr, dst);
                    };
                else
                    pack = [&](int col0, int cols, int nr, float* dst) {
                        pack_im2col_panels(geometry, image, col0, cols, nr, dst);
                    };
                gemm_packed(packed_[g], N, pack, out, N, bias_.data() + (size_t)g * out_c,
                            fuse_activation ? p_.activation : LINEAR);
            }
        }
        if (!fuse_activation) activate_array(ctx.output, ctx.batch, p_.filters, (size_t)N, p_.activation);
    }

    void forward_train(const TrainContext& ctx) override {
        PD_CHECK(p_.batch_normalize != 2, "layer ", spec.index,
                 ": cross-iteration batch normalisation (cbn) is not supported in training");
        const int in_c = spec.in.c / p_.groups, out_c = p_.filters / p_.groups;
        const int K = in_c * p_.size * p_.size, N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const float* weights = ctx.params + spec.tensor("weights").offset;
        const float* biases = ctx.params + spec.tensor("biases").offset;
        const bool keep_input = activation_needs_input(p_.activation);
        const bool elementwise = !is_channel_activation(p_.activation);
        const bool fuse_activation = !p_.batch_norm() && !keep_input && elementwise;
        for (int b = 0; b < ctx.batch; ++b)
            for (int g = 0; g < p_.groups; ++g) {
                const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                float* out = ctx.output + ((size_t)b * p_.filters + (size_t)g * out_c) * N;
                const float* columns = image;
                if (!direct()) {
                    unroll(image, in_c, spec.in.h, spec.in.w, p_.size, p_.pad(), p_.stride_y, p_.stride_x, p_.dilation,
                           spec.out.h, spec.out.w, ctx.workspace, (size_t)N);
                    columns = ctx.workspace;
                }
                GemmEpilogue epilogue;
                epilogue.row_bias = p_.batch_norm() ? nullptr : biases + (size_t)g * out_c;
                epilogue.activation = fuse_activation ? p_.activation : LINEAR;
                sgemm(out_c, N, K, weights + (size_t)g * out_c * K, K, columns, N, out, N, epilogue);
            }
        const size_t total = (size_t)ctx.batch * p_.filters * N;
        float* pre = nullptr;
        if (keep_input) {
            pre_activation_.resize(total);
            pre = pre_activation_.data();
        } else {
            pre_activation_.clear();
        }
        if (p_.batch_norm()) {
            // Batch-norm applies an element-wise activation (and keeps its input) in the same pass.
            batch_norm_.forward(ctx.output, ctx.batch, p_.filters, (size_t)N, ctx.params + spec.tensor("scales").offset,
                                biases, ctx.params + spec.tensor("rolling_mean").offset,
                                ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, spec.index,
                                elementwise ? p_.activation : LINEAR, elementwise ? pre : nullptr);
            if (elementwise) return;
        } else if (fuse_activation) {
            return;
        }
        if (pre) std::memcpy(pre, ctx.output, sizeof(float) * total);
        activate_array(ctx.output, ctx.batch, p_.filters, (size_t)N, p_.activation);
    }

    // The input gradient of a stride-1 convolution is itself a convolution: of the output gradient, padded by
    // (size - 1) * dilation - pad, with the filters flipped and input and output channels swapped. Computed that
    // way its GEMM sums over out_c * size^2 values into a small in_c x in_plane result, where the columns form
    // (W^T G, then col2im) sums over only out_c values into a result size^2 times larger that col2im re-reads.
    bool transposed_input_gradient() const {
        const int pad = p_.pad(), reach = (p_.size - 1) * p_.dilation;
        return p_.stride_x == 1 && p_.stride_y == 1 && reach >= pad && spec.out.h == spec.in.h + 2 * pad - reach &&
               spec.out.w == spec.in.w + 2 * pad - reach;
    }

    // Output rows per GEMM + col2im band of the input gradient: the band's K x rows*out_w columns fill about
    // kBandFloats.
    int col2im_band() const {
        const long long K = (long long)(spec.in.c / p_.groups) * p_.size * p_.size;
        return (int)std::max(1LL, std::min<long long>(spec.out.h, kBandFloats / (K * spec.out.w)));
    }

    // Images per weight-gradient product: enough for kMinPositions output positions, at most the batch.
    int weight_chunk(int batch) const {
        const int N = spec.out.h * spec.out.w;
        return std::max(1, std::min(batch, (kMinPositions + N - 1) / N));
    }

    // Images per input-gradient product (stride 1): enough for kMinPositions input positions.
    int input_chunk(int batch) const {
        const int in_plane = spec.in.h * spec.in.w;
        return std::max(1, std::min(batch, (kMinPositions + in_plane - 1) / in_plane));
    }

    // Workspace (floats), the largest of the passes:
    //   forward_train   columns K x N
    //   weight gradient columns K x chunk*N, output gradient transposed chunk*N x out_c, product K x out_c
    //   input gradient  flipped weights in_c x out_c*size^2, output-gradient columns out_c*size^2 x chunk*in_plane
    //                   and the product in_c x chunk*in_plane (stride 1); or transposed weights K x out_c and a band of
    //                   the columns gradient, K x band*out_w, for col2im
    size_t backward_workspace_floats(int batch) const override {
        const size_t in_c = (size_t)(spec.in.c / p_.groups), out_c = (size_t)(p_.filters / p_.groups);
        const size_t K = in_c * p_.size * p_.size, N = (size_t)spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const size_t width = (size_t)weight_chunk(batch) * N;
        const size_t weight_pass = K * width + width * out_c + K * out_c;
        const size_t in_width = (size_t)input_chunk(batch) * in_plane;
        const size_t input_pass = transposed_input_gradient()
                                      ? K * out_c + out_c * p_.size * p_.size * in_width + in_c * in_width
                                      : K * out_c + K * (size_t)col2im_band() * spec.out.w;
        return std::max(weight_pass, input_pass);
    }

    void backward(const BackwardContext& ctx) override {
        const int in_c = spec.in.c / p_.groups, out_c = p_.filters / p_.groups;
        const int K = in_c * p_.size * p_.size, N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const bool elementwise = !is_channel_activation(p_.activation);
        const float* pre = pre_activation_.empty() ? nullptr : pre_activation_.data();
        float* grad = ctx.output_grad;
        float* grad_biases = ctx.grads + spec.tensor("biases").offset;
        if (p_.batch_norm()) {
            if (!elementwise)
                activation_backward(grad, ctx.output, pre, ctx.batch, p_.filters, (size_t)N, p_.activation);
            batch_norm_.backward(grad, ctx.params + spec.tensor("scales").offset,
                                 ctx.grads + spec.tensor("scales").offset, grad_biases, ctx.output, pre,
                                 elementwise ? p_.activation : LINEAR);
        } else {
            activation_backward(grad, ctx.output, pre, ctx.batch, p_.filters, (size_t)N, p_.activation);
            add_channel_sums(grad, ctx.batch, p_.filters, (size_t)N, grad_biases);
        }
        const float* weights = ctx.params + spec.tensor("weights").offset;
        if (ctx.weight_grads) {
            // dW_g (out_c x K) += G (out_c x N) * columns^T, computed as its transpose columns * G^T (the smaller
            // operand is the one transposed). Small maps put several images side by side, so that one product
            // sums over at least kMinPositions positions rather than writing and re-adding K x out_c per image.
            const int chunk = weight_chunk(ctx.batch);
            const size_t width = (size_t)chunk * N;
            float* columns = ctx.workspace;
            float* grad_t = columns + (size_t)K * width;
            float* product = grad_t + width * out_c;
            float* grad_weights = ctx.grads + spec.tensor("weights").offset;
            for (int g = 0; g < p_.groups; ++g)
                for (int b0 = 0; b0 < ctx.batch; b0 += chunk) {
                    const int images = std::min(chunk, ctx.batch - b0);
                    const float* cols = columns;
                    for (int i = 0; i < images; ++i) {
                        const int b = b0 + i;
                        const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                        if (direct() && chunk == 1)
                            cols = image;
                        else
                            unroll(image, in_c, spec.in.h, spec.in.w, p_.size, p_.pad(), p_.stride_y, p_.stride_x,
                                   p_.dilation, spec.out.h, spec.out.w, columns + (size_t)i * N, width);
                        transpose(grad + ((size_t)b * p_.filters + (size_t)g * out_c) * N, out_c, N,
                                  grad_t + (size_t)i * N * out_c);
                    }
                    sgemm(K, out_c, images * N, cols, (int)width, grad_t, out_c, product, out_c);
                    add_transposed(product, K, out_c, grad_weights + (size_t)g * out_c * K);
                }
        }
        if (!ctx.input_grad) return;
        if (transposed_input_gradient()) {
            input_gradient_by_convolution(ctx, weights);
            return;
        }
        // dX: columns gradient (K x N) = W_g^T (K x out_c) * G (out_c x N), folded back onto the image by col2im,
        // a band of output rows at a time so that the columns are still in cache when col2im reads them.
        float* weights_t = ctx.workspace;
        float* columns = weights_t + (size_t)K * out_c;
        const int band = col2im_band();
        for (int g = 0; g < p_.groups; ++g) {
            transpose(weights + (size_t)g * out_c * K, out_c, K, weights_t);
            for (int b = 0; b < ctx.batch; ++b) {
                float* image_grad = ctx.input_grad + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                const float* g_out = grad + ((size_t)b * p_.filters + (size_t)g * out_c) * N;
                for (int oy = 0; oy < spec.out.h; oy += band) {
                    const int rows = std::min(band, spec.out.h - oy), width = rows * spec.out.w;
                    sgemm(K, width, out_c, weights_t, out_c, g_out + (size_t)oy * spec.out.w, N, columns, width);
                    col2im_add(columns, in_c, spec.in.h, spec.in.w, p_.size, p_.pad(), p_.stride_y, p_.stride_x,
                               p_.dilation, spec.out.w, oy, oy + rows, image_grad);
                }
            }
        }
    }

private:
    // dX_g (in_c x in_plane) = W'_g (in_c x out_c*size^2) * unrolled G_g, W'[c][(o*size + ky)*size + kx] =
    // W[o][c][size-1-ky][size-1-kx]; see transposed_input_gradient(). Small maps put several images side by side
    // in one product, as the weight gradient does.
    void input_gradient_by_convolution(const BackwardContext& ctx, const float* weights) {
        const int in_c = spec.in.c / p_.groups, out_c = p_.filters / p_.groups;
        const int taps = p_.size * p_.size, depth = out_c * taps, K = in_c * taps, N = spec.out.h * spec.out.w;
        const int in_plane = spec.in.h * spec.in.w;
        const int pad = (p_.size - 1) * p_.dilation - p_.pad();
        const int chunk = input_chunk(ctx.batch);
        const size_t width = (size_t)chunk * in_plane;
        float* flipped = ctx.workspace;
        float* columns = flipped + (size_t)in_c * depth;
        float* product = columns + (size_t)depth * width;
        for (int g = 0; g < p_.groups; ++g) {
            const float* w = weights + (size_t)g * out_c * K;
#pragma omp parallel for schedule(static) if ((long long)in_c * depth > 65536)
            for (int c = 0; c < in_c; ++c)
                for (int o = 0; o < out_c; ++o) {
                    const float* from = w + (size_t)o * K + (size_t)c * taps;
                    float* to = flipped + (size_t)c * depth + (size_t)o * taps;
                    for (int t = 0; t < taps; ++t) to[t] = from[taps - 1 - t];
                }
            for (int b0 = 0; b0 < ctx.batch; b0 += chunk) {
                const int images = std::min(chunk, ctx.batch - b0);
                const float* cols = columns;
                for (int i = 0; i < images; ++i) {
                    const float* g_out = ctx.output_grad + ((size_t)(b0 + i) * p_.filters + (size_t)g * out_c) * N;
                    if (direct() && chunk == 1)
                        cols = g_out;
                    else
                        unroll(g_out, out_c, spec.out.h, spec.out.w, p_.size, pad, 1, 1, p_.dilation, spec.in.h,
                               spec.in.w, columns + (size_t)i * in_plane, width);
                }
                sgemm(in_c, images * in_plane, depth, flipped, depth, cols, (int)width, product, (int)width);
                // Row c of the product holds channel c of each image in turn.
#pragma omp parallel for collapse(2) schedule(static) if ((long long)images * in_c * in_plane > 65536)
                for (int i = 0; i < images; ++i)
                    for (int c = 0; c < in_c; ++c) {
                        float* dst = ctx.input_grad + ((size_t)(b0 + i) * spec.in.c + (size_t)g * in_c + c) * in_plane;
                        const float* src = product + (size_t)c * width + (size_t)i * in_plane;
                        for (int p = 0; p < in_plane; ++p) dst[p] += src[p];
                    }
            }
        }
    }

    // Packs each group's folded weights for the micro-kernel of the instruction set in use.
    void pack_weights() {
        const int out_c = p_.filters / p_.groups, K = (spec.in.c / p_.groups) * p_.size * p_.size;
        // Few output columns per image: the narrow tile wastes less on padding.
        const TileWidth width = spec.out.h * spec.out.w < 128 ? TileWidth::Narrow : TileWidth::Wide;
        packed_.resize(p_.groups);
        for (int g = 0; g < p_.groups; ++g)
            packed_[g].pack(weights_.data() + (size_t)g * out_c * K, out_c, K, K, active_isa(), width, p_.precision);
    }

    const ConvolutionalParams p_;  // precision: of the multiplies, fp32 or bf16 inputs and weights with float32 sums
    std::vector<float> weights_, bias_;  // batch-norm folded in
    // Training state of the last forward_train.
    BatchNormTrainer batch_norm_;
    std::vector<float> pre_activation_;  // kept only for activations whose gradient needs it
    std::vector<PackedMatrix> packed_;   // weights_ per group, packed
    WinogradConv winograd_;              // weights_ transformed, for the Winograd path
};

}  // namespace

PD_REGISTER_LAYER(LayerKind::Convolutional, Convolutional);

}  // namespace pd
