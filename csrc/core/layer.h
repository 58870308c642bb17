// The engine's view of a layer: a spec that the Python side has already validated (shapes, indices, parameter
// offsets), resolved once into its LayerKind and typed parameters (layers/params.h), and a Layer object per type
// that executes it. Layers are created by kind through a registry so that each layer lives in its own file
// (csrc/layers/<name>.cpp).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../layers/params.h"
#include "common.h"
#include "layer_kind.h"

namespace pd {

struct Shape {
    int c = 0, h = 0, w = 0;
    size_t size() const { return (size_t)c * h * w; }
};

struct TensorRef {
    size_t offset = 0, size = 0;
};

// A layer as the Python side describes it: the type's cfg name and its options in untyped maps. resolve_spec
// fills in `kind`, `common` and `parsed` from them; the layers read only those.
struct LayerSpec {
    int index = 0;
    std::string type;
    LayerKind kind = LayerKind::Empty;
    CommonParams common;
    LayerParams parsed;
    Shape in, out;
    std::vector<int> inputs;  // other layers read by this one (route/shortcut/sam/scale_channels)
    std::map<std::string, double> num;
    std::map<std::string, std::vector<double>> lists;
    std::map<std::string, std::string> str;
    std::map<std::string, TensorRef> tensors;

    double get(const std::string& key) const;
    double get(const std::string& key, double fallback) const;
    const std::vector<double>& list(const std::string& key) const;
    const std::string& text(const std::string& key) const;
    const TensorRef& tensor(const std::string& key) const;
    bool has_tensor(const std::string& key) const { return tensors.count(key) != 0; }

    // The parsed options, as the struct of this spec's type.
    template <typename Params>
    const Params& params() const {
        const Params* p = std::get_if<Params>(&parsed);
        PD_CHECK(p, "layer ", index, " (", type, "): its options were not parsed as this layer type's");
        return *p;
    }
};

class Network;

// Everything a forward pass needs besides the layer's own spec.
struct ForwardContext {
    int batch = 1;
    const float* input = nullptr;  // the previous layer's output (or the network input), batch * in.size()
    float* output = nullptr;       // this layer's output, batch * out.size()
    const Network* net = nullptr;
    float* workspace = nullptr;  // scratch shared by all layers, workspace_floats() long
};

// A forward pass in training mode: besides the inference context, the parameters are writable (batch-norm
// moves its rolling statistics) and random decisions (dropout) are keyed by (seed, iteration, layer, element).
struct TrainContext : ForwardContext {
    float* params = nullptr;  // the flat parameter buffer, read directly (no folded copies while training)
    float bn_epsilon = 1e-5f;
    unsigned long long seed = 0;
    long long iteration = 0;
};

// A backward pass through one layer, after a training forward. Layers add (+=) into the gradient buffers, so
// several readers of one output and several backward passes (subdivisions) accumulate.
struct BackwardContext {
    int batch = 1;
    const float* input = nullptr;   // this layer's input in the training forward (the previous layer's output)
    const float* output = nullptr;  // this layer's output in the training forward
    float* output_grad = nullptr;   // dLoss/dOutput; the layer may overwrite it, nobody reads it afterwards
    float* input_grad = nullptr;    // += dLoss/dInput, or null when no earlier layer needs it
    const float* params = nullptr;
    float* grads = nullptr;       // += dLoss/dParams, laid out exactly like params
    bool weight_grads = true;     // false under train_only_bn: batch-norm scales and biases only
    unsigned long long seed = 0;  // the training forward's random key (dropout recomputes its mask)
    long long iteration = 0;
    Network* net = nullptr;      // other layers' training outputs and gradient buffers (route, shortcut...)
    float* workspace = nullptr;  // scratch shared by all layers, backward_workspace_floats() long
};

class Layer {
public:
    explicit Layer(LayerSpec spec) : spec(std::move(spec)) {}
    virtual ~Layer() = default;

    // Called before a forward pass whenever the parameters may have changed (e.g. to fold batch-norm).
    virtual void prepare(const float* params, float bn_epsilon) {
        (void)params;
        (void)bn_epsilon;
    }
    virtual void forward(const ForwardContext& ctx) = 0;
    // Scratch floats this layer needs for one forward pass of `batch` images.
    virtual size_t workspace_floats(int batch) const {
        (void)batch;
        return 0;
    }

    // Forward in training mode, keeping what backward() needs. Layers without training behaviour of their own
    // run their inference forward.
    virtual void forward_train(const TrainContext& ctx) { forward(ctx); }
    // Backward after forward_train. A layer type without one says so rather than return a wrong gradient.
    virtual void backward(const BackwardContext& ctx);
    // Scratch floats backward() needs for `batch` images (forward_train uses workspace_floats()).
    virtual size_t backward_workspace_floats(int batch) const {
        (void)batch;
        return 0;
    }
    // Whether the layer reads the previous layer's output (route reads only its listed layers).
    virtual bool reads_previous_output() const { return true; }

    const LayerSpec spec;
};

using LayerFactory = std::function<std::unique_ptr<Layer>(const LayerSpec&)>;

// Registry of layer types by kind; each layer file registers itself with PD_REGISTER_LAYER.
std::map<LayerKind, LayerFactory>& layer_registry();

struct LayerRegistration {
    LayerRegistration(LayerKind kind, LayerFactory factory) { layer_registry()[kind] = std::move(factory); }
};

#define PD_CONCAT_INNER(a, b) a##b
#define PD_CONCAT(a, b) PD_CONCAT_INNER(a, b)

#define PD_REGISTER_LAYER(kind, cls)                                      \
    static ::pd::LayerRegistration PD_CONCAT(pd_registration_, __LINE__)( \
        kind, [](const ::pd::LayerSpec& s) { return std::unique_ptr<::pd::Layer>(new cls(s)); })

}  // namespace pd
