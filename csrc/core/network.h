// A network: the layers, one flat parameter buffer (in .weights file order) and the activation buffers.
// Activation buffers are planned once: a layer's output lives until its last reader has run, and then its
// memory is reused, so large networks need a fraction of the memory of one buffer per layer.
#pragma once

#include <memory>
#include <vector>

#include "layer.h"

namespace pd {

class Network {
public:
    Network(const std::vector<LayerSpec>& specs, size_t param_count, Shape input);

    // Runs all layers on `batch` images. With keep_all, every layer's output stays readable afterwards.
    void forward(const float* input, int batch, bool keep_all);

    // Output of layer i from the last forward (only guaranteed for kept layers: outputs, or all with keep_all).
    const float* output(int i) const;
    bool output_available(int i) const;
    // Output buffer of layer i during a forward pass, for layers that read earlier layers (route, shortcut...).
    const float* live_output(int i) const { return buffers_[buffer_of_[i]].data(); }
    const Layer& layer(int i) const { return *layers_.at(i); }
    int layer_count() const { return (int)layers_.size(); }
    int batch() const { return batch_; }
    Shape input_shape() const { return input_; }

    std::vector<float> params;
    float bn_epsilon = 1e-5f;
    // Bumped by anyone who changes `params`; layers re-derive what they cache from them when it changes.
    unsigned long long params_version = 1;
    std::vector<int> keep;
    bool profile = false;              // when set, forward() records each layer's wall time
    std::vector<double> layer_seconds;  // layers whose outputs must survive a forward pass (the yolo heads, the last layer)
    std::vector<double> layer_cpu_seconds;  // with profile: each layer's CPU time, all threads of the process

private:
    void plan(int batch, bool keep_all);

    std::vector<std::unique_ptr<Layer>> layers_;
    Shape input_;
    std::vector<std::vector<float>> buffers_;
    std::vector<int> buffer_of_;  // layer -> index into buffers_
    std::vector<float> workspace_;
    int batch_ = 0;
    bool planned_keep_all_ = false;
    int planned_batch_ = 0;
    unsigned long long prepared_version_ = 0;
    float prepared_epsilon_ = 0.f;
};

}  // namespace pd
