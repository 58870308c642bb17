// The cfg section name of every layer kind (see layer_kind.h).
#include "layer_kind.h"

namespace pd {
namespace {

struct KindName {
    const char* name;
    LayerKind kind;
};

// [silence] reaches the engine as [empty]: the Python side maps section aliases before it builds the specs.
constexpr KindName kKinds[] = {
    {"convolutional", LayerKind::Convolutional},
    {"connected", LayerKind::Connected},
    {"maxpool", LayerKind::Maxpool},
    {"local_avgpool", LayerKind::LocalAvgpool},
    {"avgpool", LayerKind::Avgpool},
    {"route", LayerKind::Route},
    {"shortcut", LayerKind::Shortcut},
    {"upsample", LayerKind::Upsample},
    {"yolo", LayerKind::Yolo},
    {"softmax", LayerKind::Softmax},
    {"dropout", LayerKind::Dropout},
    {"cost", LayerKind::Cost},
    {"empty", LayerKind::Empty},
    {"sam", LayerKind::Sam},
    {"scale_channels", LayerKind::ScaleChannels},
    {"reorg3d", LayerKind::Reorg3d},
    {"batchnorm", LayerKind::Batchnorm},
};

}  // namespace

bool find_layer_kind(const std::string& name, LayerKind* kind) {
    for (const KindName& k : kKinds)
        if (name == k.name) {
            *kind = k.kind;
            return true;
        }
    return false;
}

const char* layer_kind_name(LayerKind kind) {
    for (const KindName& k : kKinds)
        if (k.kind == kind) return k.name;
    return "?";
}

}  // namespace pd
