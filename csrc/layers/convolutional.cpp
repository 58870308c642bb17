// [convolutional]: batch-norm folded into the weights and bias once per parameter change (Darknet's
// fuse_conv_batchnorm, computed in double), the folded weights packed for the CPU's micro-kernel, and per image and
// group one packed GEMM whose B operand is packed straight from the input (1x1 convolutions read the image as it
// is; others are unrolled im2col-style block by block), with bias + activation fused into the GEMM. 3x3 stride-1
// convolutions of useful size go through Winograd F(4x4, 3x3) instead (cpu/winograd.h).
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
#include "../cpu/winograd.h"
#include "../math/activations.h"

namespace pd {
namespace {

class Convolutional : public Layer {
public:
    explicit Convolutional(const LayerSpec& s)
        : Layer(s),
          filters_((int)s.get("filters")),
          size_((int)s.get("size")),
          stride_x_((int)s.get("stride_x")),
          stride_y_((int)s.get("stride_y")),
          dilation_((int)s.get("dilation")),
          padding_((int)s.get("padding")),
          groups_((int)s.get("groups")),
          batch_normalize_(s.get("batch_normalize") != 0),
          activation_((int)s.get("activation")),
          precision_(s.get("precision", 0) != 0 ? Precision::BF16 : Precision::FP32) {
        PD_CHECK(filters_ == s.out.c && groups_ > 0 && s.in.c % groups_ == 0 && filters_ % groups_ == 0,
                 "layer ", s.index, ": inconsistent convolution shape");
        PD_CHECK(s.tensor("weights").size == (size_t)filters_ * (s.in.c / groups_) * size_ * size_,
                 "layer ", s.index, ": weights tensor has the wrong size");
    }

    void prepare(const float* params, float eps) override {
        const size_t per_filter = (size_t)(spec.in.c / groups_) * size_ * size_;
        const float* w = params + spec.tensor("weights").offset;
        const float* b = params + spec.tensor("biases").offset;
        weights_.assign(w, w + per_filter * filters_);
        bias_.assign(b, b + filters_);
        if (batch_normalize_) {
            std::vector<double> factor(filters_);
            batchnorm_factors(b, params + spec.tensor("scales").offset, params + spec.tensor("rolling_mean").offset,
                              params + spec.tensor("rolling_variance").offset, eps, filters_, factor.data(),
                              bias_.data());
            for (int f = 0; f < filters_; ++f)
                for (size_t i = 0; i < per_filter; ++i)
                    weights_[f * per_filter + i] = (float)(weights_[f * per_filter + i] * factor[f]);
        }
        // Packed forms are derived from the folded weights when a forward pass first needs them.
        packed_.clear();
        winograd_ = WinogradConv();
    }

    // A 1x1 convolution with stride 1 and no padding multiplies the image itself: no unrolling.
    bool direct() const { return size_ == 1 && stride_x_ == 1 && stride_y_ == 1 && padding_ == 0; }

    // Winograd F(4x4, 3x3) applies to 3x3, stride 1, undilated, ungrouped convolutions.
    bool winograd_shape() const {
        return size_ == 3 && stride_x_ == 1 && stride_y_ == 1 && dilation_ == 1 && groups_ == 1 &&
               winograd_worthwhile(spec.in.c, filters_, spec.out.h, spec.out.w);
    }

    void forward(const ForwardContext& ctx) override {
        const int in_c = spec.in.c / groups_, out_c = filters_ / groups_;
        const int N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const bool fuse_activation = !is_channel_activation(activation_);
        if (winograd_shape() && winograd_enabled()) {
            if (!winograd_.prepared() || winograd_.isa() != active_isa())
                winograd_.prepare(weights_.data(), filters_, spec.in.c, spec.out.h, spec.out.w, active_isa(),
                                  precision_);
            winograd_.forward(ctx.input, ctx.batch, spec.in.h, spec.in.w, padding_, ctx.output, spec.out.h,
                              spec.out.w, bias_.data(), fuse_activation ? activation_ : LINEAR);
            if (!fuse_activation) activate_array(ctx.output, ctx.batch, filters_, (size_t)N, activation_);
            return;
        }
        if (packed_.empty() || packed_.front().isa() != active_isa()) pack_weights();
        ConvGeometry geometry;
        geometry.channels = in_c;
        geometry.height = spec.in.h;
        geometry.width = spec.in.w;
        geometry.ksize = size_;
        geometry.pad = padding_ * dilation_;
        geometry.stride_y = stride_y_;
        geometry.stride_x = stride_x_;
        geometry.dilation = dilation_;
        geometry.out_h = spec.out.h;
        geometry.out_w = spec.out.w;
        for (int b = 0; b < ctx.batch; ++b) {
            for (int g = 0; g < groups_; ++g) {
                const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                float* out = ctx.output + ((size_t)b * filters_ + (size_t)g * out_c) * N;
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
                            fuse_activation ? activation_ : LINEAR);
            }
        }
        if (!fuse_activation) activate_array(ctx.output, ctx.batch, filters_, (size_t)N, activation_);
    }

private:
    // Packs each group's folded weights for the micro-kernel of the instruction set in use.
    void pack_weights() {
        const int out_c = filters_ / groups_, K = (spec.in.c / groups_) * size_ * size_;
        // Few output columns per image: the narrow tile wastes less on padding.
        const TileWidth width = spec.out.h * spec.out.w < 128 ? TileWidth::Narrow : TileWidth::Wide;
        packed_.resize(groups_);
        for (int g = 0; g < groups_; ++g)
            packed_[g].pack(weights_.data() + (size_t)g * out_c * K, out_c, K, K, active_isa(), width, precision_);
    }

    int filters_, size_, stride_x_, stride_y_, dilation_, padding_, groups_;
    bool batch_normalize_;
    int activation_;
    Precision precision_;  // of the multiplies: fp32, or bf16 inputs and weights with float32 sums
    std::vector<float> weights_, bias_;  // batch-norm folded in
    std::vector<PackedMatrix> packed_;   // weights_ per group, packed
    WinogradConv winograd_;              // weights_ transformed, for the Winograd path
};

}  // namespace

PD_REGISTER_LAYER("convolutional", Convolutional);

}  // namespace pd
