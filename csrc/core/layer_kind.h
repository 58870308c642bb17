// The layer types the engine runs, by cfg section name. The table in layer_kind.cpp is the one place where the
// engine spells a type's name: a spec's name is resolved to its LayerKind once, when a network is built
// (resolve_spec, layers/params.h), and everything after that (the layer registries, the activation plan)
// compares kinds.
#pragma once

#include <string>

namespace pd {

enum class LayerKind : int {
    Convolutional,
    Connected,
    Maxpool,
    LocalAvgpool,
    Avgpool,
    Route,
    Shortcut,
    Upsample,
    Yolo,
    Softmax,
    Dropout,
    Cost,
    Empty,
    Sam,
    ScaleChannels,
    Reorg3d,
    Batchnorm,
};

// The kind of the cfg section `name`; false when the engine has no such layer type.
bool find_layer_kind(const std::string& name, LayerKind* kind);

// The cfg section name of a kind.
const char* layer_kind_name(LayerKind kind);

}  // namespace pd
