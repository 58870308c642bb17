// Network construction, activation-buffer planning, the forward loop and the training passes.
#include "network.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>

#include "plan.h"

#include "../cpu/train_ops.h"

namespace pd {
namespace {

// CPU time used so far by all threads of the process (it excludes time spent waiting for a core).
double process_cpu_seconds() {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

}  // namespace

std::map<LayerKind, LayerFactory>& layer_registry() {
    static std::map<LayerKind, LayerFactory> registry;
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

void Layer::backward(const BackwardContext&) {
    throw InvalidArgument(concat("layer ", spec.index, " (", spec.type, "): this layer type has no backward pass"));
}

Network::Network(const std::vector<LayerSpec>& specs, size_t param_count, Shape input,
                 std::shared_ptr<ParamStore> shared)
    : store_(shared ? std::move(shared) : std::make_shared<ParamStore>()),
      params(store_->params),
      params_version(store_->version),
      input_(input) {
    if (store_->params.empty() && param_count > 0) store_->params.assign(param_count, 0.f);
    PD_CHECK(store_->params.size() == param_count, "shared parameters hold ", store_->params.size(),
             " values but this network has ", param_count);
    PD_CHECK(!specs.empty(), "a network needs at least one layer");
    Shape expected = input;
    for (size_t i = 0; i < specs.size(); ++i) {
        LayerSpec s = specs[i];
        PD_CHECK(s.index == (int)i, "layer specs out of order at ", i);
        PD_CHECK(s.in.c == expected.c && s.in.h == expected.h && s.in.w == expected.w, "layer ", i,
                 ": input shape does not match the previous layer's output");
        for (int ref : s.inputs) PD_CHECK(ref >= 0 && ref < (int)i, "layer ", i, ": bad input layer ", ref);
        for (const auto& t : s.tensors)
            PD_CHECK(t.second.offset + t.second.size <= param_count, "layer ", i, ": tensor '", t.first,
                     "' lies outside the parameter buffer");
        resolve_spec(s);
        auto factory = layer_registry().find(s.kind);
        PD_CHECK(factory != layer_registry().end(), "layer ", i, ": the engine has no layer type '", s.type, "'");
        layers_.push_back(factory->second(s));
        expected = s.out;
    }
    keep.push_back((int)specs.size() - 1);
    live_.assign(layers_.size(), nullptr);
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
    for (size_t i = 0; i < layers_.size(); ++i) live_[i] = buffers_[buffer_of_[i]].data();
    ForwardContext ctx;
    ctx.batch = batch;
    ctx.net = this;
    ctx.workspace = workspace_.data();
    const float* in = input;
    layer_seconds.assign(profile ? layers_.size() : 0, 0.0);
    layer_cpu_seconds.assign(profile ? layers_.size() : 0, 0.0);
    for (size_t i = 0; i < layers_.size(); ++i) {
        ctx.input = in;
        ctx.output = buffers_[buffer_of_[i]].data();
        const auto start = std::chrono::steady_clock::now();
        const double cpu_start = profile ? process_cpu_seconds() : 0.0;
        layers_[i]->forward(ctx);
        if (profile) {
            layer_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            layer_cpu_seconds[i] = process_cpu_seconds() - cpu_start;
        }
        in = ctx.output;
    }
}

// ----- training ----------------------------------------------------------------------------------------------

void Network::forward_train(const float* input, int batch, unsigned long long seed, long long iteration) {
    PD_CHECK(batch >= 1, "batch must be at least 1");
    const int n = (int)layers_.size();
    train_batch_ = 0;  // stays 0 (no backward possible) if a layer throws below
    train_input_.assign(input, input + (size_t)batch * input_.size());
    train_outputs_.resize(n);
    size_t workspace = 0;
    for (int i = 0; i < n; ++i) {
        train_outputs_[i].resize((size_t)batch * layers_[i]->spec.out.size());
        live_[i] = train_outputs_[i].data();
        workspace =
            std::max({workspace, layers_[i]->workspace_floats(batch), layers_[i]->backward_workspace_floats(batch)});
    }
    train_workspace_.resize(workspace);
    TrainContext ctx;
    ctx.batch = batch;
    ctx.net = this;
    ctx.workspace = train_workspace_.data();
    ctx.params = params.data();
    ctx.bn_epsilon = bn_epsilon;
    ctx.seed = seed;
    ctx.iteration = iteration;
    // The rolling statistics change below; inference re-derives its folded weights from them afterwards.
    ++params_version;
    const float* in = train_input_.data();
    train_layer_seconds.assign(profile ? n : 0, 0.0);
    for (int i = 0; i < n; ++i) {
        ctx.input = in;
        ctx.output = train_outputs_[i].data();
        const auto start = std::chrono::steady_clock::now();
        layers_[i]->forward_train(ctx);
        if (profile)
            train_layer_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        in = ctx.output;
    }
    train_batch_ = batch;
    train_seed_ = seed;
    train_iteration_ = iteration;
}

const float* Network::train_output(int i) const {
    PD_CHECK(train_batch_ > 0 && i >= 0 && i < (int)layers_.size(), "no training output of layer ", i,
             " (run forward_train first)");
    return train_outputs_[i].data();
}

std::vector<float>& Network::grads_buffer() {
    if (store_->grads.size() != store_->params.size()) store_->grads.assign(store_->params.size(), 0.f);
    return store_->grads;
}

void Network::zero_grads() { std::fill(grads_buffer().begin(), grads_buffer().end(), 0.f); }

// Darknet's backward_network walks back from the last layer and stops at the first layer whose stopbackward is
// 1, or N > 1 while the iteration is below N: that layer and every layer before it get no gradient.
int Network::backward_stop() const {
    for (int i = (int)layers_.size() - 1; i >= 0; --i) {
        const double stop = layers_[i]->spec.common.stopbackward;
        if (stop == 1 || stop > (double)train_iteration_) return i;
    }
    return -1;
}

void Network::backward(const std::vector<std::pair<int, const float*>>& output_grads, float* input_grad) {
    PD_CHECK(train_batch_ > 0, "backward needs a forward_train first");
    const int n = (int)layers_.size(), batch = train_batch_, stop = backward_stop();
    std::vector<float>& grads = grads_buffer();
    grad_buffers_.resize(n);
    std::vector<char> reached(n, 0);
    // Sized here, zeroed below in one parallel pass (the buffers add up to every layer's output).
    std::vector<std::pair<float*, size_t>> pieces;
    const size_t piece = (size_t)1 << 16;
    for (int i = 0; i < n; ++i) {
        if (i <= stop) {
            std::vector<float>().swap(grad_buffers_[i]);
            continue;
        }
        std::vector<float>& buffer = grad_buffers_[i];
        buffer.resize((size_t)batch * layers_[i]->spec.out.size());
        for (size_t start = 0; start < buffer.size(); start += piece)
            pieces.emplace_back(buffer.data() + start, std::min(piece, buffer.size() - start));
    }
#pragma omp parallel for schedule(static) if (pieces.size() > 1)
    for (long long k = 0; k < (long long)pieces.size(); ++k)
        std::memset(pieces[k].first, 0, pieces[k].second * sizeof(float));
    for (const auto& seed : output_grads) {
        PD_CHECK(seed.first >= 0 && seed.first < n, "gradient given for layer ", seed.first, ", which does not exist");
        if (seed.first <= stop) continue;  // frozen by stopbackward: Darknet never gets there
        add_into(grad_buffers_[seed.first].data(), seed.second, grad_buffers_[seed.first].size());
        reached[seed.first] = 1;
    }
    BackwardContext ctx;
    ctx.batch = batch;
    ctx.params = params.data();
    ctx.grads = grads.data();
    ctx.seed = train_seed_;
    ctx.iteration = train_iteration_;
    ctx.net = this;
    ctx.workspace = train_workspace_.data();
    backward_layer_seconds.assign(profile ? n : 0, 0.0);
    for (int i = n - 1; i > stop; --i) {
        Layer& l = *layers_[i];
        if (!reached[i] || l.spec.common.onlyforward) continue;
        ctx.input = i == 0 ? train_input_.data() : train_outputs_[i - 1].data();
        ctx.output = train_outputs_[i].data();
        ctx.output_grad = grad_buffers_[i].data();
        ctx.input_grad = nullptr;
        if (l.reads_previous_output()) {
            if (i == 0) {
                ctx.input_grad = input_grad;
            } else if (i - 1 > stop) {
                ctx.input_grad = grad_buffers_[i - 1].data();
                reached[i - 1] = 1;
            }
        }
        for (int ref : l.spec.inputs)
            if (ref > stop) reached[ref] = 1;
        ctx.weight_grads = !l.spec.common.train_only_bn;
        const auto start = std::chrono::steady_clock::now();
        l.backward(ctx);
        if (profile)
            backward_layer_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    // An optimizer writes the parameters after this; the next inference forward must not reuse folded copies.
    ++params_version;
}

}  // namespace pd
