// [convolutional]: im2col + GEMM per image and group, with batch-norm folded into the weights and bias once per
// parameter change (Darknet's fuse_conv_batchnorm, computed in double) and bias + activation fused into the GEMM.
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
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
          activation_((int)s.get("activation")) {
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
        if (!batch_normalize_) return;
        std::vector<double> factor(filters_);
        batchnorm_factors(b, params + spec.tensor("scales").offset, params + spec.tensor("rolling_mean").offset,
                          params + spec.tensor("rolling_variance").offset, eps, filters_, factor.data(), bias_.data());
        for (int f = 0; f < filters_; ++f)
            for (size_t i = 0; i < per_filter; ++i)
                weights_[f * per_filter + i] = (float)(weights_[f * per_filter + i] * factor[f]);
    }

    bool direct() const { return size_ == 1 && stride_x_ == 1 && stride_y_ == 1 && padding_ == 0; }

    size_t workspace_floats(int) const override {
        if (direct()) return 0;
        return (size_t)(spec.in.c / groups_) * size_ * size_ * spec.out.h * spec.out.w;
    }

    void forward(const ForwardContext& ctx) override {
        const int in_c = spec.in.c / groups_, out_c = filters_ / groups_;
        const int K = in_c * size_ * size_, N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const bool fuse_activation = !is_channel_activation(activation_);
        for (int b = 0; b < ctx.batch; ++b) {
            for (int g = 0; g < groups_; ++g) {
                const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                float* out = ctx.output + ((size_t)b * filters_ + (size_t)g * out_c) * N;
                const float* columns = image;
                if (!direct()) {
                    im2col(image, in_c, spec.in.h, spec.in.w, size_, padding_ * dilation_, stride_y_, stride_x_,
                           dilation_, spec.out.h, spec.out.w, ctx.workspace);
                    columns = ctx.workspace;
                }
                GemmEpilogue epilogue;
                epilogue.row_bias = bias_.data() + (size_t)g * out_c;
                epilogue.activation = fuse_activation ? activation_ : LINEAR;
                sgemm(out_c, N, K, weights_.data() + (size_t)g * out_c * K, K, columns, N, out, N, epilogue);
            }
        }
        if (!fuse_activation) activate_array(ctx.output, ctx.batch, filters_, (size_t)N, activation_);
    }

private:
    int filters_, size_, stride_x_, stride_y_, dilation_, padding_, groups_;
    bool batch_normalize_;
    int activation_;
    std::vector<float> weights_, bias_;  // batch-norm folded in
};

}  // namespace

PD_REGISTER_LAYER("convolutional", Convolutional);

}  // namespace pd
