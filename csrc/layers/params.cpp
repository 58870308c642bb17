// Parsing and validation of each layer type's options (see params.h).
#include "params.h"

#include <cmath>

#include "../core/layer.h"
#include "../math/shortcut.h"

namespace pd {
namespace {

// Limits of the engine's index arithmetic; the Python side allows dimensions up to 1 << 16.
constexpr int kMaxDim = 1 << 16;

// A whole-number option in [low, high].
int whole(const LayerSpec& s, const char* key, int low, int high) {
    const double v = s.get(key);
    PD_CHECK(v == std::floor(v) && v >= low && v <= high, "layer ", s.index, " (", s.type, "): option '", key,
             "' = ", v, " must be a whole number in [", low, ", ", high, "]");
    return (int)v;
}

bool flag(const LayerSpec& s, const char* key) { return s.get(key) != 0; }

// batch_normalize: any non-zero value turns batch-norm on, as in Darknet; 2 is cbn (set by the Python side).
int batch_normalize_option(const LayerSpec& s) {
    const double v = s.get("batch_normalize");
    PD_CHECK(v == std::floor(v) && std::fabs(v) < 2147483648.0, "layer ", s.index, " (", s.type,
             "): option 'batch_normalize' = ", v, " must be a whole number");
    return (int)v;
}

Activation activation_option(const LayerSpec& s) { return (Activation)whole(s, "activation", 0, ACTIVATION_COUNT - 1); }

void expect(const LayerSpec& s, bool ok, const char* what) {
    PD_CHECK(ok, "layer ", s.index, " (", s.type, "): ", what);
}

// [maxpool] and [local_avgpool]: the window, and the output size it gives.
PoolWindow pool_window_of(const LayerSpec& s) {
    PoolWindow w;
    w.size = whole(s, "size", 1, kMaxDim);
    w.stride_y = whole(s, "stride_y", 1, kMaxDim);
    w.stride_x = whole(s, "stride_x", 1, kMaxDim);
    const int padding = whole(s, "padding", 0, kMaxDim);
    w.offset = pool_offset(padding);
    expect(s, s.in.h + padding >= w.size && s.in.w + padding >= w.size, "the input is smaller than the window");
    expect(s,
           s.out.h == pool_output_size(s.in.h, w.size, w.stride_y, padding) &&
               s.out.w == pool_output_size(s.in.w, w.size, w.stride_x, padding),
           "the output size does not match the window");
    return w;
}

}  // namespace

CommonParams CommonParams::parse(const LayerSpec& s) {
    CommonParams p;
    p.stopbackward = s.get("stopbackward", 0);
    p.onlyforward = s.get("onlyforward", 0) != 0;
    p.train_only_bn = s.get("train_only_bn", 0) != 0;
    return p;
}

ConvolutionalParams ConvolutionalParams::parse(const LayerSpec& s) {
    ConvolutionalParams p;
    p.filters = whole(s, "filters", 1, kMaxDim);
    p.size = whole(s, "size", 1, kMaxDim);
    p.stride_x = whole(s, "stride_x", 1, kMaxDim);
    p.stride_y = whole(s, "stride_y", 1, kMaxDim);
    p.dilation = whole(s, "dilation", 1, kMaxDim);
    p.padding = whole(s, "padding", 0, kMaxDim);
    p.groups = whole(s, "groups", 1, kMaxDim);
    p.batch_normalize = batch_normalize_option(s);
    p.activation = activation_option(s);
    p.precision = (Precision)(int)s.get("precision", 0);
    PD_CHECK(p.filters == s.out.c && s.in.c % p.groups == 0 && p.filters % p.groups == 0, "layer ", s.index,
             ": inconsistent convolution shape");
    PD_CHECK(s.tensor("weights").size == (size_t)p.filters * (s.in.c / p.groups) * p.size * p.size, "layer ", s.index,
             ": weights tensor has the wrong size");
    return p;
}

ConnectedParams ConnectedParams::parse(const LayerSpec& s) {
    ConnectedParams p;
    p.outputs = whole(s, "output", 1, 1 << 30);
    p.batch_normalize = batch_normalize_option(s);
    p.activation = activation_option(s);
    expect(s, p.outputs == s.out.c && s.out.h == 1 && s.out.w == 1, "the output shape is not (output, 1, 1)");
    expect(s, s.tensor("weights").size == (size_t)p.outputs * s.in.size(), "weights tensor has the wrong size");
    return p;
}

MaxpoolParams MaxpoolParams::parse(const LayerSpec& s) {
    MaxpoolParams p;
    p.depth = flag(s, "maxpool_depth");
    p.window = pool_window_of(s);
    if (p.depth)
        expect(s, s.out.c >= 1 && s.out.h == s.in.h && s.out.w == s.in.w, "maxpool_depth keeps the size");
    else
        expect(s, s.out.c == s.in.c, "a maxpool keeps the channels");
    return p;
}

LocalAvgpoolParams LocalAvgpoolParams::parse(const LayerSpec& s) {
    LocalAvgpoolParams p;
    p.window = pool_window_of(s);
    expect(s, s.out.c == s.in.c, "a local_avgpool keeps the channels");
    return p;
}

AvgpoolParams AvgpoolParams::parse(const LayerSpec& s) {
    expect(s, s.out.c == s.in.c && s.out.h == 1 && s.out.w == 1, "the output shape is not (channels, 1, 1)");
    return AvgpoolParams{};
}

RouteParams RouteParams::parse(const LayerSpec& s) {
    RouteParams p;
    p.groups = whole(s, "groups", 1, kMaxDim);
    p.group_id = whole(s, "group_id", 0, p.groups - 1);
    expect(s, !s.inputs.empty(), "a route lists no layers");
    return p;
}

ShortcutParams ShortcutParams::parse(const LayerSpec& s) {
    ShortcutParams p;
    p.activation = activation_option(s);
    p.normalization = shortcut_normalization(s.text("weights_normalization"));
    p.weighted = s.has_tensor("weights");
    expect(s, !s.inputs.empty(), "a shortcut lists no layers");
    expect(s, s.out.c == s.in.c && s.out.h == s.in.h && s.out.w == s.in.w, "a shortcut keeps its input's shape");
    if (p.weighted)
        expect(s,
               s.tensor("weights").size % (s.inputs.size() + 1) == 0 &&
                   s.out.size() % (s.tensor("weights").size / (s.inputs.size() + 1)) == 0,
               "the shortcut's weights do not divide its output");
    return p;
}

UpsampleParams UpsampleParams::parse(const LayerSpec& s) {
    UpsampleParams p;
    p.stride = whole(s, "stride", 1, 1024);
    p.scale = (float)s.get("scale");
    p.reverse = flag(s, "reverse");
    if (p.reverse)
        expect(s, s.out.h == s.in.h / p.stride && s.out.w == s.in.w / p.stride,
               "the output size is not input / stride");
    else
        expect(s, s.out.h == s.in.h * p.stride && s.out.w == s.in.w * p.stride,
               "the output size is not input * stride");
    expect(s, s.out.c == s.in.c, "an upsample keeps the channels");
    return p;
}

YoloParams YoloParams::parse(const LayerSpec& s) {
    YoloParams p;
    p.anchors = (int)s.list("mask").size();
    p.classes = whole(s, "classes", 1, 100000);
    p.scale_x_y = (float)s.get("scale_x_y");
    p.new_coords = flag(s, "new_coords");
    expect(s, s.in.c == p.anchors * (5 + p.classes) && s.out.size() == s.in.size(),
           "the input channels are not mask anchors x (5 + classes)");
    return p;
}

SoftmaxParams SoftmaxParams::parse(const LayerSpec& s) {
    SoftmaxParams p;
    p.groups = whole(s, "groups", 1, 1 << 30);
    p.temperature = s.get("temperature");
    expect(s, s.in.size() % p.groups == 0 && s.out.size() == s.in.size(), "groups does not divide the inputs");
    return p;
}

DropoutParams DropoutParams::parse(const LayerSpec& s) {
    DropoutParams p;
    p.probability = s.get("probability");
    p.dropblock = flag(s, "dropblock");
    return p;
}

IdentityParams IdentityParams::parse(const LayerSpec&) { return IdentityParams{}; }

SamParams SamParams::parse(const LayerSpec& s) {
    SamParams p;
    p.activation = activation_option(s);
    expect(s, s.inputs.size() == 1, "a sam layer reads exactly one `from` layer");
    return p;
}

ScaleChannelsParams ScaleChannelsParams::parse(const LayerSpec& s) {
    ScaleChannelsParams p;
    p.activation = activation_option(s);
    p.scale_wh = flag(s, "scale_wh");
    expect(s, s.inputs.size() == 1, "a scale_channels layer reads exactly one `from` layer");
    expect(s, s.in.size() == (p.scale_wh ? (size_t)s.out.h * s.out.w : (size_t)s.out.c),
           "the input holds neither one factor per channel nor (scale_wh) one per pixel");
    return p;
}

Reorg3dParams Reorg3dParams::parse(const LayerSpec& s) {
    Reorg3dParams p;
    p.stride = whole(s, "stride", 1, kMaxDim);
    p.reverse = flag(s, "reverse");
    const int s2 = p.stride * p.stride;
    if (p.reverse)
        expect(s,
               s.in.c % (s2 * s2) == 0 && s.out.c * s2 == s.in.c && s.out.h == s.in.h * p.stride &&
                   s.out.w == s.in.w * p.stride,
               "a reverse reorg needs channels divisible by stride^4 and gives (c / stride^2, h * stride, w * stride)");
    else
        expect(s,
               s.in.h % p.stride == 0 && s.in.w % p.stride == 0 && s.out.c == s.in.c * s2 &&
                   s.out.h * p.stride == s.in.h && s.out.w * p.stride == s.in.w,
               "a reorg needs height and width divisible by stride and gives (c * stride^2, h / stride, w / stride)");
    return p;
}

BatchnormParams BatchnormParams::parse(const LayerSpec& s) {
    expect(s, s.out.size() == s.in.size(), "a batchnorm keeps its input's shape");
    return BatchnormParams{};
}

void resolve_spec(LayerSpec& s) {
    PD_CHECK(find_layer_kind(s.type, &s.kind), "layer ", s.index, ": the engine has no layer type '", s.type, "'");
    s.common = CommonParams::parse(s);
    switch (s.kind) {
        case LayerKind::Convolutional: s.parsed = ConvolutionalParams::parse(s); break;
        case LayerKind::Connected: s.parsed = ConnectedParams::parse(s); break;
        case LayerKind::Maxpool: s.parsed = MaxpoolParams::parse(s); break;
        case LayerKind::LocalAvgpool: s.parsed = LocalAvgpoolParams::parse(s); break;
        case LayerKind::Avgpool: s.parsed = AvgpoolParams::parse(s); break;
        case LayerKind::Route: s.parsed = RouteParams::parse(s); break;
        case LayerKind::Shortcut: s.parsed = ShortcutParams::parse(s); break;
        case LayerKind::Upsample: s.parsed = UpsampleParams::parse(s); break;
        case LayerKind::Yolo: s.parsed = YoloParams::parse(s); break;
        case LayerKind::Softmax: s.parsed = SoftmaxParams::parse(s); break;
        case LayerKind::Dropout: s.parsed = DropoutParams::parse(s); break;
        case LayerKind::Cost:
        case LayerKind::Empty: s.parsed = IdentityParams::parse(s); break;
        case LayerKind::Sam: s.parsed = SamParams::parse(s); break;
        case LayerKind::ScaleChannels: s.parsed = ScaleChannelsParams::parse(s); break;
        case LayerKind::Reorg3d: s.parsed = Reorg3dParams::parse(s); break;
        case LayerKind::Batchnorm: s.parsed = BatchnormParams::parse(s); break;
    }
}

}  // namespace pd
