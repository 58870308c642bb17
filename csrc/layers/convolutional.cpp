// [convolutional]: im2col + GEMM per image and group, with batch-norm folded into the weights and bias once per
// parameter change (Darknet's fuse_conv_batchnorm, computed in double) and bias + activation fused into the GEMM.
// Training runs on the raw parameters with batch statistics; backward is GEMMs on the same columns (weights) and
// a GEMM + col2im (input), with transposed operands copied into the workspace for our row-major sgemm.
#include <cmath>
#include <vector>

#include "../core/network.h"
#include "../cpu/gemm.h"
#include "../cpu/ops.h"
#include "../cpu/train_ops.h"
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

    void forward_train(const TrainContext& ctx) override {
        PD_CHECK(spec.get("batch_normalize") != 2, "layer ", spec.index,
                 ": cross-iteration batch normalisation (cbn) is not supported in training");
        const int in_c = spec.in.c / groups_, out_c = filters_ / groups_;
        const int K = in_c * size_ * size_, N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        const float* weights = ctx.params + spec.tensor("weights").offset;
        const float* biases = ctx.params + spec.tensor("biases").offset;
        const bool keep_input = activation_needs_input(activation_);
        const bool fuse_activation = !batch_normalize_ && !keep_input && !is_channel_activation(activation_);
        for (int b = 0; b < ctx.batch; ++b)
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
                epilogue.row_bias = batch_normalize_ ? nullptr : biases + (size_t)g * out_c;
                epilogue.activation = fuse_activation ? activation_ : LINEAR;
                sgemm(out_c, N, K, weights + (size_t)g * out_c * K, K, columns, N, out, N, epilogue);
            }
        const size_t total = (size_t)ctx.batch * filters_ * N;
        if (batch_normalize_)
            batch_norm_.forward(ctx.output, ctx.batch, filters_, (size_t)N, ctx.params + spec.tensor("scales").offset,
                                biases, ctx.params + spec.tensor("rolling_mean").offset,
                                ctx.params + spec.tensor("rolling_variance").offset, ctx.bn_epsilon, spec.index);
        if (keep_input) pre_activation_.assign(ctx.output, ctx.output + total);
        if (!fuse_activation) activate_array(ctx.output, ctx.batch, filters_, (size_t)N, activation_);
    }

    // Workspace layout: [columns K x N][output gradient transposed N x out_c][K x out_c], the last part holding
    // first a weight-gradient product and later the transposed weights.
    size_t backward_workspace_floats(int) const override {
        const size_t K = (size_t)(spec.in.c / groups_) * size_ * size_, N = (size_t)spec.out.h * spec.out.w;
        const size_t out_c = (size_t)(filters_ / groups_);
        return K * N + N * out_c + K * out_c;
    }

    void backward(const BackwardContext& ctx) override {
        const int in_c = spec.in.c / groups_, out_c = filters_ / groups_;
        const int K = in_c * size_ * size_, N = spec.out.h * spec.out.w;
        const size_t in_plane = (size_t)spec.in.h * spec.in.w;
        float* grad = ctx.output_grad;
        activation_backward(grad, ctx.output, pre_activation_.empty() ? nullptr : pre_activation_.data(), ctx.batch,
                            filters_, (size_t)N, activation_);
        float* grad_biases = ctx.grads + spec.tensor("biases").offset;
        if (batch_normalize_) {
            batch_norm_.backward(grad, ctx.params + spec.tensor("scales").offset,
                                 ctx.grads + spec.tensor("scales").offset, grad_biases);
        } else {
#pragma omp parallel for schedule(static) if ((long long)ctx.batch * filters_ * N > 65536)
            for (int f = 0; f < filters_; ++f) {
                double sum = 0.0;
                for (int b = 0; b < ctx.batch; ++b) {
                    const float* g = grad + ((size_t)b * filters_ + f) * N;
                    for (int i = 0; i < N; ++i) sum += g[i];
                }
                grad_biases[f] += (float)sum;
            }
        }
        float* columns = ctx.workspace;
        float* grad_t = columns + (size_t)K * N;
        float* product = grad_t + (size_t)N * out_c;
        const float* weights = ctx.params + spec.tensor("weights").offset;
        if (ctx.weight_grads) {
            // dW_g (out_c x K) += G (out_c x N) * columns^T, computed as its transpose columns * G^T.
            float* grad_weights = ctx.grads + spec.tensor("weights").offset;
            for (int b = 0; b < ctx.batch; ++b)
                for (int g = 0; g < groups_; ++g) {
                    const float* image = ctx.input + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                    const float* cols = image;
                    if (!direct()) {
                        im2col(image, in_c, spec.in.h, spec.in.w, size_, padding_ * dilation_, stride_y_, stride_x_,
                               dilation_, spec.out.h, spec.out.w, columns);
                        cols = columns;
                    }
                    transpose(grad + ((size_t)b * filters_ + (size_t)g * out_c) * N, out_c, N, grad_t);
                    sgemm(K, out_c, N, cols, N, grad_t, out_c, product, out_c);
                    float* gw = grad_weights + (size_t)g * out_c * K;
#pragma omp parallel for schedule(static) if ((long long)out_c * K > 65536)
                    for (int o = 0; o < out_c; ++o)
                        for (int k = 0; k < K; ++k) gw[(size_t)o * K + k] += product[(size_t)k * out_c + o];
                }
        }
        if (!ctx.input_grad) return;
        // dX: columns gradient (K x N) = W_g^T (K x out_c) * G (out_c x N), folded back onto the image by col2im.
        for (int g = 0; g < groups_; ++g) {
            transpose(weights + (size_t)g * out_c * K, out_c, K, product);
            for (int b = 0; b < ctx.batch; ++b) {
                float* image_grad = ctx.input_grad + ((size_t)b * spec.in.c + (size_t)g * in_c) * in_plane;
                sgemm(K, N, out_c, product, out_c, grad + ((size_t)b * filters_ + (size_t)g * out_c) * N, N, columns,
                      N);
                if (direct())
                    add_into(image_grad, columns, (size_t)K * N);
                else
                    col2im_add(columns, in_c, spec.in.h, spec.in.w, size_, padding_ * dilation_, stride_y_, stride_x_,
                               dilation_, spec.out.h, spec.out.w, image_grad);
            }
        }
    }

private:
    int filters_, size_, stride_x_, stride_y_, dilation_, padding_, groups_;
    bool batch_normalize_;
    int activation_;
    std::vector<float> weights_, bias_;  // batch-norm folded in
    // Training state of the last forward_train.
    BatchNormTrainer batch_norm_;
    std::vector<float> pre_activation_;  // kept only for activations whose gradient needs it
};

}  // namespace

PD_REGISTER_LAYER("convolutional", Convolutional);

}  // namespace pd
