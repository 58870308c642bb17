// A network: the layers, one flat parameter buffer (in .weights file order) with its gradient buffer of the same
// layout, and the activation buffers. For inference, activation buffers are planned once: a layer's output lives
// until its last reader has run, and then its memory is reused, so large networks need a fraction of the memory
// of one buffer per layer. Training keeps every layer's output (backward reads them) in buffers of its own.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "layer.h"

namespace pd {

// Parameters, their gradients and the parameters' version, shared by the networks built from one cfg at
// different input sizes (multi-scale training), so an optimizer sees one pair of flat buffers.
struct ParamStore {
    std::vector<float> params, grads;  // grads stays empty until the first backward pass (or grads_view)
    unsigned long long version = 1;
};

class Network {
public:
    // With `shared`, the network uses those parameters (same count) instead of a fresh zeroed buffer.
    Network(const std::vector<LayerSpec>& specs, size_t param_count, Shape input,
            std::shared_ptr<ParamStore> shared = nullptr);

    // Runs all layers on `batch` images. With keep_all, every layer's output stays readable afterwards.
    void forward(const float* input, int batch, bool keep_all);

    // Output of layer i from the last forward (only guaranteed for kept layers: outputs, or all with keep_all).
    const float* output(int i) const;
    bool output_available(int i) const;
    // Output buffer of layer i during a forward pass (inference or training), for layers that read earlier
    // layers (route, shortcut...).
    const float* live_output(int i) const { return live_[i]; }
    const Layer& layer(int i) const { return *layers_.at(i); }
    int layer_count() const { return (int)layers_.size(); }
    int batch() const { return batch_; }
    Shape input_shape() const { return input_; }

    // ----- training ----------------------------------------------------------------------------------------
    // Runs all layers in training mode (batch statistics, dropout), keeping every output for backward().
    // Batch-norm rolling statistics are updated in `params`, so params_version moves on.
    void forward_train(const float* input, int batch, unsigned long long seed, long long iteration);
    // Backpropagates from gradients given for some layers' outputs (for a [yolo] layer: for its input, see
    // yolo.cpp), in reverse layer order. Parameter gradients are added to `grads`; the input gradient, when
    // input_grad is not null, is added to it (batch x input shape). Darknet's stopbackward and onlyforward apply.
    void backward(const std::vector<std::pair<int, const float*>>& output_grads, float* input_grad);
    int train_batch() const { return train_batch_; }
    // Output of layer i from the last forward_train.
    const float* train_output(int i) const;
    // Gradient buffer of layer i's output during backward(); null when nothing flows back to layer i.
    float* grad_buffer(int i) { return grad_buffers_[i].empty() ? nullptr : grad_buffers_[i].data(); }
    // Allocates the gradient buffer on first use.
    std::vector<float>& grads_buffer();
    void zero_grads();
    const std::shared_ptr<ParamStore>& store() const { return store_; }

private:
    std::shared_ptr<ParamStore> store_;  // declared first: the references below point into it

public:
    std::vector<float>& params;
    float bn_epsilon = 1e-5f;
    // Bumped by anyone who changes `params`; layers re-derive what they cache from them when it changes.
    unsigned long long& params_version;
    std::vector<int> keep;  // layers whose outputs must survive a forward pass (the yolo heads, the last layer)
    // When set, forward(), forward_train() and backward() record each layer's wall time (seconds) in
    // layer_seconds, train_layer_seconds and backward_layer_seconds; a layer that backward skips records 0.
    bool profile = false;
    std::vector<double> layer_seconds, train_layer_seconds, backward_layer_seconds;
    std::vector<double> layer_cpu_seconds;  // with profile: each layer's CPU time, all threads of the process

private:
    void plan(int batch, bool keep_all);
    int backward_stop() const;

    std::vector<std::unique_ptr<Layer>> layers_;
    Shape input_;
    std::vector<std::vector<float>> buffers_;
    std::vector<int> buffer_of_;      // layer -> index into buffers_
    std::vector<const float*> live_;  // layer -> its output buffer in the pass under way
    std::vector<float> workspace_;
    int batch_ = 0;
    bool planned_keep_all_ = false;
    int planned_batch_ = 0;
    unsigned long long prepared_version_ = 0;
    float prepared_epsilon_ = 0.f;

    // Training state: the input and every layer's output of the last forward_train, their gradients.
    std::vector<float> train_input_;
    std::vector<std::vector<float>> train_outputs_, grad_buffers_;
    std::vector<float> train_workspace_;
    int train_batch_ = 0;
    unsigned long long train_seed_ = 0;
    long long train_iteration_ = 0;
};

}  // namespace pd
