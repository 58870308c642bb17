// Network construction, activation-buffer planning and the forward loop.
#include "network.h"

#include <algorithm>
#include <chrono>

#include "plan.h"

namespace pd {

std::map<std::string, LayerFactory>& layer_registry() {
    static std::map<std::string, LayerFactory> registry;
    return registry;
}

double LayerSpec::get(const std::string& key) const {
    auto it = num.find(key);
    PD_CHECK(it != num.end(), "layer ", index, " (", type, "): missing option '", key, "'");
    return it->second;
}

double LayerSpec::get(const std::string& key, double fallback) const {
    auto it = num.find(key);
    return it == num.end() ? fallback : it->second;
}

const std::vector<double>& LayerSpec::list(const std::string& key) const {
    auto it = lists.find(key);
    PD_CHECK(it != lists.end(), "layer ", index, " (", type, "): missing list option '", key, "'");
    return it->second;
}

const std::string& LayerSpec::text(const std::string& key) const {
    auto it = str.find(key);
    PD_CHECK(it != str.end(), "layer ", index, " (", type, "): missing option '", key, "'");
    return it->second;
}

const TensorRef& LayerSpec::tensor(const std::string& key) const {
    auto it = tensors.find(key);
    PD_CHECK(it != tensors.end(), "layer ", index, " (", type, "): missing parameter tensor '", key, "'");
    return it->second;
}

Network::Network(const std::vector<LayerSpec>& specs, size_t param_count, Shape input)
    : params(param_count, 0.f), input_(input) {
    PD_CHECK(!specs.empty(), "a network needs at least one layer");
    Shape expected = input;
    for (size_t i = 0; i < specs.size(); ++i) {
        const LayerSpec& s = specs[i];
        PD_CHECK(s.index == (int)i, "layer specs out of order at ", i);
        PD_CHECK(s.in.c == expected.c && s.in.h == expected.h && s.in.w == expected.w, "layer ", i,
                 ": input shape does not match the previous layer's output");
        for (int ref : s.inputs) PD_CHECK(ref >= 0 && ref < (int)i, "layer ", i, ": bad input layer ", ref);
        for (const auto& t : s.tensors)
            PD_CHECK(t.second.offset + t.second.size <= param_count, "layer ", i, ": tensor '", t.first,
                     "' lies outside the parameter buffer");
        auto factory = layer_registry().find(s.type);
        PD_CHECK(factory != layer_registry().end(), "layer ", i, ": the engine has no layer type '", s.type, "'");
        layers_.push_back(factory->second(s));
        expected = s.out;
    }
    keep.push_back((int)specs.size() - 1);
}

bool Network::output_available(int i) const {
    if (i < 0 || i >= (int)layers_.size() || batch_ == 0) return false;
    if (planned_keep_all_) return true;
    return std::find(keep.begin(), keep.end(), i) != keep.end();
}

const float* Network::output(int i) const {
    PD_CHECK(output_available(i), "the output of layer ", i, " was not kept by the last forward pass");
    return buffers_[buffer_of_[i]].data();
}

void Network::plan(int batch, bool keep_all) {
    const int n = (int)layers_.size();
    std::vector<const LayerSpec*> specs(n);
    for (int i = 0; i < n; ++i) specs[i] = &layers_[i]->spec;
    const std::vector<int> last = last_reads(specs, keep, keep_all);
    std::vector<Lifetime> lifetimes(n);
    for (int i = 0; i < n; ++i) lifetimes[i] = Lifetime{specs[i]->out.size(), i, last[i]};
    const BufferAssignment assignment = assign_buffers(lifetimes);
    buffer_of_ = assignment.buffer_of;
    buffers_.resize(assignment.capacity.size());
    for (size_t b = 0; b < assignment.capacity.size(); ++b) {
        buffers_[b].resize(assignment.capacity[b] * (size_t)batch);
        buffers_[b].shrink_to_fit();
    }
    size_t workspace = 0;
    for (const auto& l : layers_) workspace = std::max(workspace, l->workspace_floats(batch));
    workspace_.resize(workspace);
    planned_batch_ = batch;
    planned_keep_all_ = keep_all;
}

void Network::forward(const float* input, int batch, bool keep_all) {
    PD_CHECK(batch >= 1, "batch must be at least 1");
    if (batch != planned_batch_ || keep_all != planned_keep_all_ || buffer_of_.empty()) plan(batch, keep_all);
    if (prepared_version_ != params_version || prepared_epsilon_ != bn_epsilon) {
        for (auto& l : layers_) l->prepare(params.data(), bn_epsilon);
        prepared_version_ = params_version;
        prepared_epsilon_ = bn_epsilon;
    }
    batch_ = batch;
    ForwardContext ctx;
    ctx.batch = batch;
    ctx.net = this;
    ctx.workspace = workspace_.data();
    const float* in = input;
    layer_seconds.assign(profile ? layers_.size() : 0, 0.0);
    for (size_t i = 0; i < layers_.size(); ++i) {
        ctx.input = in;
        ctx.output = buffers_[buffer_of_[i]].data();
        const auto start = std::chrono::steady_clock::now();
        layers_[i]->forward(ctx);
        if (profile)
            layer_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        in = ctx.output;
    }
}

}  // namespace pd
