// Each layer type's options as a typed struct, read from the spec's option maps and validated once, when a network
// is built (resolve_spec), and then used by the CPU layer (csrc/layers/<name>.cpp) and the CUDA layer
// (cuda/<name>_kernels.cu) alike, so that neither reads options by key. The Python side (pydarknet/graph.py)
// has validated the cfg already; these checks keep the engine safe on a spec that bypasses it and name the bad
// option instead of reading out of bounds.
#pragma once

#include <variant>

#include "../core/common.h"
#include "../math/activations.h"
#include "../math/pooling.h"

namespace pd {

struct LayerSpec;

// Options every layer type has (Darknet's training switches).
struct CommonParams {
    double stopbackward = 0;     // 1: no gradient to this layer or any before it; N > 1: the same below iteration N
    bool onlyforward = false;    // the layer passes no gradient back
    bool train_only_bn = false;  // only batch-norm scales and biases get gradients
    static CommonParams parse(const LayerSpec& spec);
};

struct ConvolutionalParams {
    int filters, size, stride_x, stride_y, dilation, padding, groups;
    int batch_normalize;  // 0 off, 2 cross-iteration batch-norm (cbn: 1 at inference), any other value on
    Activation activation;
    Precision precision;  // of the CPU's multiplies (the CUDA network has its own)
    bool batch_norm() const { return batch_normalize != 0; }
    int pad() const { return padding * dilation; }  // Darknet pads by padding * dilation
    static ConvolutionalParams parse(const LayerSpec& spec);
};

struct ConnectedParams {
    int outputs;
    int batch_normalize;  // as ConvolutionalParams::batch_normalize
    Activation activation;
    static ConnectedParams parse(const LayerSpec& spec);
};

struct MaxpoolParams {
    PoolWindow window;
    bool depth;  // maxpool_depth=1: the maximum over channels out_channels apart instead of over a window
    static MaxpoolParams parse(const LayerSpec& spec);
};

struct LocalAvgpoolParams {
    PoolWindow window;
    static LocalAvgpoolParams parse(const LayerSpec& spec);
};

struct AvgpoolParams {
    static AvgpoolParams parse(const LayerSpec& spec);
};

struct RouteParams {
    int groups, group_id;  // each listed layer contributes its group_id-th of `groups` channel slices
    static RouteParams parse(const LayerSpec& spec);
};

struct ShortcutParams {
    Activation activation;
    int normalization;  // ShortcutNormalization (math/shortcut.h) of the weights, when the layer has them
    bool weighted;      // weights_type other than none: a "weights" tensor
    static ShortcutParams parse(const LayerSpec& spec);
};

struct UpsampleParams {
    int stride;
    float scale;
    bool reverse;  // a negative stride in the cfg: sum stride x stride blocks instead
    static UpsampleParams parse(const LayerSpec& spec);
};

struct YoloParams {
    int anchors, classes;  // anchors: the mask's length, the boxes per position
    float scale_x_y;
    bool new_coords;
    static YoloParams parse(const LayerSpec& spec);
};

struct SoftmaxParams {
    int groups;
    double temperature;  // the forward pass divides by it in float, the backward pass in double
    static SoftmaxParams parse(const LayerSpec& spec);
};

struct DropoutParams {
    double probability;  // checked to be in [0, 1) only for training: inference is the identity
    bool dropblock;      // not supported in training
    static DropoutParams parse(const LayerSpec& spec);
};

// [cost] and [empty]: the identity.
struct IdentityParams {
    static IdentityParams parse(const LayerSpec& spec);
};

struct SamParams {
    Activation activation;
    static SamParams parse(const LayerSpec& spec);
};

struct ScaleChannelsParams {
    Activation activation;
    bool scale_wh;  // one factor per pixel shared by all channels instead of one per channel
    static ScaleChannelsParams parse(const LayerSpec& spec);
};

struct Reorg3dParams {
    int stride;
    bool reverse;
    static Reorg3dParams parse(const LayerSpec& spec);
};

struct BatchnormParams {
    static BatchnormParams parse(const LayerSpec& spec);
};

// The parsed options of any layer type; monostate until resolve_spec has run.
using LayerParams =
    std::variant<std::monostate, ConvolutionalParams, ConnectedParams, MaxpoolParams, LocalAvgpoolParams, AvgpoolParams,
                 RouteParams, ShortcutParams, UpsampleParams, YoloParams, SoftmaxParams, DropoutParams, IdentityParams,
                 SamParams, ScaleChannelsParams, Reorg3dParams, BatchnormParams>;

// Resolves a spec as the Python side sends it: its type name to its LayerKind, its options to the common and the
// type's parameter struct. Throws InvalidArgument for an unknown type or a bad option.
void resolve_spec(LayerSpec& spec);

}  // namespace pd
