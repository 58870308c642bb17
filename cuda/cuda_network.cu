// The CUDA network (csrc/core/cuda_network.h): the activation plan laid out in one device arena, parameters
// prepared from the host buffer when they change, the forward loop (direct, timed per layer, or replayed from a
// CUDA graph), guard regions for the tests, and timing with CUDA events.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda_layer.cuh"

namespace pd {

std::map<LayerKind, CudaLayerFactory>& cuda_layer_registry() {
    static std::map<LayerKind, CudaLayerFactory> registry;
    return registry;
}

// Any error from the runtime (e.g. 35, no driver, on machines without a GPU) means "no GPU": the engine then
// runs on the CPU.
int cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the error so later calls are not confused by it
        return 0;
    }
    return count;
}

namespace {

constexpr size_t kAlignment = 256;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in float32, float16 and bfloat16

size_t align_up(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// Makes the network's GPU current for the duration of a call and restores the caller's afterwards.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&previous_) != cudaSuccess) {
            cudaGetLastError();
            previous_ = -1;
        }
        PD_CUDA_CHECK(cudaSetDevice(device));
    }
    ~DeviceScope() {
        if (previous_ >= 0) cudaSetDevice(previous_);
    }

private:
    int previous_ = -1;
};

bool same_options(const PlanOptions& a, const PlanOptions& b) {
    return a.alias == b.alias && a.fuse_residual == b.fuse_residual;
}

}  // namespace

struct CudaNetwork::Impl {
    Impl(const Network& host, Precision precision, int device) : host(host), precision(precision), device(device) {}

    ~Impl() {
        if (cudaSetDevice(device) != cudaSuccess) cudaGetLastError();
        release_arena();
        for (cudaEvent_t e : events) cudaEventDestroy(e);
        if (stream) cudaStreamDestroy(stream);
        layers.clear();
        cudaGetLastError();
    }

    const Network& host;
    const Precision precision;
    const int device;
    cudaStream_t stream = nullptr;
    std::vector<std::unique_ptr<CudaLayer>> layers;
    std::vector<const LayerSpec*> specs;

    PlanOptions options;
    bool guard = false;
    ConvAlgorithm algorithm = ConvAlgorithm::AUTO;
    int split_k = 0;
    int sm_count = 1;

    // The plan and its arena, for one (batch, keep_all, keep, options, guard).
    ViewPlan plan;
    bool planned = false;
    int planned_batch = 0;
    bool planned_keep_all = false;
    std::vector<int> planned_keep;
    PlanOptions planned_options;
    bool planned_guard = false;
    char* arena = nullptr;
    size_t arena_size = 0;
    std::vector<size_t> buffer_offset;                     // bytes into the arena
    std::vector<std::pair<size_t, size_t>> guard_regions;  // (offset, bytes), each after a buffer or the input
    std::vector<std::string> guard_owner;                  // what lies before each guard region
    std::vector<DeviceView> views;
    DeviceView input_view;
    DeviceArray<float> staging;   // float32 input before conversion, float32 output after conversion
    DeviceArray<char> workspace;  // layers' scratch (split-K partial sums)
    int batch = 0;                // of the last completed forward pass (0: none)

    bool prepared = false;
    unsigned long long prepared_version = 0;
    float prepared_epsilon = 0.f;
    ConvAlgorithm prepared_algorithm = ConvAlgorithm::AUTO;
    int prepared_split_k = -1;

    cudaGraphExec_t graph = nullptr;
    std::vector<cudaEvent_t> events;  // 2 per layer while profiling, or 2 for timing

    void release_graph() {
        if (graph) cudaGraphExecDestroy(graph);
        graph = nullptr;
    }

    void release_arena() {
        release_graph();
        if (stream && cudaStreamSynchronize(stream) != cudaSuccess) cudaGetLastError();  // nothing may still use it
        if (arena) cudaFree(arena);
        arena = nullptr;
        arena_size = 0;
        planned = false;
        batch = 0;
    }

    size_t element_bytes() const { return precision_bytes(precision); }

    void ensure_plan(int new_batch, bool keep_all) {
        if (planned && new_batch == planned_batch && keep_all == planned_keep_all && host.keep == planned_keep &&
            same_options(options, planned_options) && guard == planned_guard)
            return;
        release_arena();
        plan = plan_views(specs, host.keep, keep_all, options);
        const size_t bytes = element_bytes();
        const size_t guard_bytes = guard ? kGuardBytes : 0;
        guard_regions.clear();
        guard_owner.clear();
        size_t offset = align_up(guard_bytes);
        if (guard) {
            guard_regions.emplace_back(0, offset);
            guard_owner.push_back("the start of the arena");
        }
        // Each region is followed by its guard: from the region's last byte to the next aligned offset.
        auto place = [&](size_t region_bytes, const std::string& owner) {
            const size_t start = offset, end = start + region_bytes;
            offset = align_up(end + guard_bytes);
            if (guard) {
                guard_regions.emplace_back(end, offset - end);
                guard_owner.push_back(owner);
            }
            return start;
        };
        const size_t input_offset = place(host.input_shape().size() * new_batch * bytes, "the network input");
        buffer_offset.assign(plan.buffers.capacity.size(), 0);
        for (size_t k = 0; k < buffer_offset.size(); ++k) {
            std::string owner = "activation buffer " + std::to_string(k) + " (layers";
            for (size_t i = 0; i < specs.size(); ++i)
                if (plan.buffers.buffer_of[plan.storage[i]] == (int)k) owner += " " + std::to_string(i);
            buffer_offset[k] = place(plan.buffers.capacity[k] * new_batch * bytes, owner + ")");
        }
        arena_size = offset;
        PD_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&arena), arena_size));
        // On the network's stream: it does not synchronise with the legacy default stream (non-blocking).
        if (guard) PD_CUDA_CHECK(cudaMemsetAsync(arena, kGuardByte, arena_size, stream));
        input_view = DeviceView{arena + input_offset, host.input_shape().size()};
        views.assign(specs.size(), DeviceView{});
        for (size_t i = 0; i < specs.size(); ++i) {
            const int storage = plan.storage[i];
            views[i] = DeviceView{arena + buffer_offset[plan.buffers.buffer_of[storage]] + plan.offset[i] * bytes,
                                  plan.storage_size[storage]};
        }
        planned = true;
        planned_batch = new_batch;
        planned_keep_all = keep_all;
        planned_keep = host.keep;
        planned_options = options;
        planned_guard = guard;
    }

    void ensure_prepared() {
        if (prepared && prepared_version == host.params_version && prepared_epsilon == host.bn_epsilon &&
            prepared_algorithm == algorithm && prepared_split_k == split_k)
            return;
        release_graph();  // layers may reallocate their tensors
        prepared = false;
        PrepareContext ctx;
        ctx.params = host.params.data();
        ctx.bn_epsilon = host.bn_epsilon;
        ctx.precision = precision;
        ctx.conv_algorithm = algorithm;
        ctx.split_k = split_k;
        ctx.sm_count = sm_count;
        ctx.stream = stream;
        for (auto& layer : layers) layer->prepare(ctx);
        PD_CUDA_CHECK(cudaStreamSynchronize(stream));
        prepared = true;
        prepared_version = host.params_version;
        prepared_epsilon = host.bn_epsilon;
        prepared_algorithm = algorithm;
        prepared_split_k = split_k;
    }

    // Grows the shared workspace to what the layers need for `run_batch` images (a graph holds its address).
    void ensure_workspace(int run_batch) {
        size_t need = 0;
        for (const auto& layer : layers) need = std::max(need, layer->workspace_bytes(run_batch));
        if (need <= workspace.size() && workspace.data()) return;
        release_graph();
        workspace.resize(need);
    }

    void ensure_events(size_t count) {
        while (events.size() < count) {
            cudaEvent_t e;
            PD_CUDA_CHECK(cudaEventCreate(&e));
            events.push_back(e);
        }
    }

    // Enqueues every layer that runs; with `timed`, brackets each with events 2i and 2i + 1.
    void enqueue_layers(int run_batch, bool timed) {
        CudaContext ctx;
        ctx.batch = run_batch;
        ctx.precision = precision;
        ctx.views = &views;
        ctx.specs = &specs;
        ctx.workspace = workspace.data();
        ctx.stream = stream;
        for (size_t i = 0; i < layers.size(); ++i) {
            if (!plan.runs[i]) continue;
            ctx.input = i == 0 ? input_view : views[i - 1];
            ctx.output = views[i];
            const int residual = plan.residual[i];
            ctx.residual = residual >= 0 ? views[residual] : DeviceView{};
            ctx.residual_activation = residual >= 0 ? (int)specs[i + 1]->params<ShortcutParams>().activation : 0;
            if (timed) PD_CUDA_CHECK(cudaEventRecord(events[2 * i], stream));
            layers[i]->forward(ctx);
            if (timed) PD_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], stream));
        }
    }

    void capture(int run_batch) {
        cudaGraph_t captured = nullptr;
        PD_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            enqueue_layers(run_batch, false);
        } catch (...) {
            if (cudaStreamEndCapture(stream, &captured) == cudaSuccess && captured) cudaGraphDestroy(captured);
            cudaGetLastError();
            throw;
        }
        PD_CUDA_CHECK(cudaStreamEndCapture(stream, &captured));
        const cudaError_t status = cudaGraphInstantiate(&graph, captured, 0);
        cudaGraphDestroy(captured);
        if (status != cudaSuccess) graph = nullptr;
        PD_CUDA_CHECK(status);
    }

    // Enqueues one pass over the layers: profiled per layer, replayed from the graph, or launched directly.
    void run(int run_batch, bool use_graph, bool profile) {
        if (profile) {
            ensure_events(2 * layers.size());
            enqueue_layers(run_batch, true);
            return;
        }
        if (use_graph) {
            if (!graph) capture(run_batch);
            PD_CUDA_CHECK(cudaGraphLaunch(graph, stream));
            return;
        }
        enqueue_layers(run_batch, false);
    }

    void poison() {
        for (size_t k = 0; k < buffer_offset.size(); ++k)
            PD_CUDA_CHECK(cudaMemsetAsync(arena + buffer_offset[k], kPoisonByte,
                                          plan.buffers.capacity[k] * planned_batch * element_bytes(), stream));
    }

    void check_guards() {
        std::vector<unsigned char> bytes;
        for (size_t g = 0; g < guard_regions.size(); ++g) {
            bytes.resize(guard_regions[g].second);
            PD_CUDA_CHECK(cudaMemcpyAsync(bytes.data(), arena + guard_regions[g].first, bytes.size(),
                                          cudaMemcpyDeviceToHost, stream));
            PD_CUDA_CHECK(cudaStreamSynchronize(stream));
            for (size_t j = 0; j < bytes.size(); ++j)
                if (bytes[j] != kGuardByte)
                    throw CudaError("guard check: a kernel wrote into the guard region " + std::to_string(j) +
                                    " bytes past the end of " + guard_owner[g]);
        }
    }
};

CudaNetwork::CudaNetwork(const Network& host, Precision precision, int device)
    : impl_(new Impl(host, precision, device)) {
    const int count = cuda_device_count();
    PD_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (this machine has ", count, ")");
    DeviceScope scope(device);
    PD_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
    cudaDeviceProp properties;
    PD_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    impl_->sm_count = properties.multiProcessorCount;
    for (int i = 0; i < host.layer_count(); ++i) {
        const LayerSpec& spec = host.layer(i).spec;
        auto factory = cuda_layer_registry().find(spec.kind);
        PD_CHECK(factory != cuda_layer_registry().end(), "layer ", i, " (", spec.type, ") has no CUDA implementation");
        impl_->layers.push_back(factory->second(spec));
        impl_->specs.push_back(&impl_->layers.back()->spec);
    }
}

CudaNetwork::~CudaNetwork() = default;

void CudaNetwork::forward(const float* input, int batch, bool keep_all) {
    PD_CHECK(batch >= 1, "batch must be at least 1");
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_plan(batch, keep_all);
    m.ensure_prepared();
    m.ensure_workspace(batch);
    m.batch = 0;  // the outputs are not valid until this pass has completed
    const size_t count = (size_t)batch * m.host.input_shape().size();
    if (m.precision == Precision::FP32) {
        PD_CUDA_CHECK(
            cudaMemcpyAsync(m.input_view.data, input, count * sizeof(float), cudaMemcpyHostToDevice, m.stream));
    } else {
        if (m.staging.size() < count) m.staging.resize(count);
        PD_CUDA_CHECK(
            cudaMemcpyAsync(m.staging.data(), input, count * sizeof(float), cudaMemcpyHostToDevice, m.stream));
        convert_from_float(m.precision, m.staging.data(), m.input_view.data, count, m.stream);
    }
    if (m.guard) m.poison();
    m.run(batch, use_graph, profile);
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    if (m.guard) m.check_guards();
    layer_seconds.assign(profile ? m.layers.size() : 0, 0.0);
    if (profile)
        for (size_t i = 0; i < m.layers.size(); ++i) {
            if (!m.plan.runs[i]) continue;
            float ms = 0.f;
            PD_CUDA_CHECK(cudaEventElapsedTime(&ms, m.events[2 * i], m.events[2 * i + 1]));
            layer_seconds[i] = ms * 1e-3;
        }
    m.batch = batch;
}

bool CudaNetwork::output_available(int layer) const {
    const Impl& m = *impl_;
    if (layer < 0 || layer >= (int)m.layers.size() || m.batch == 0) return false;
    return m.planned_keep_all || std::find(m.planned_keep.begin(), m.planned_keep.end(), layer) != m.planned_keep.end();
}

void CudaNetwork::copy_output(int layer, float* destination) const {
    PD_CHECK(output_available(layer), "the output of layer ", layer, " was not kept by the last forward pass");
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    const DeviceView& view = m.views[layer];
    const size_t count = m.specs[layer]->out.size();
    if (m.precision == Precision::FP32) {
        PD_CUDA_CHECK(cudaMemcpy2DAsync(destination, count * sizeof(float), view.data, view.stride * sizeof(float),
                                        count * sizeof(float), m.batch, cudaMemcpyDeviceToHost, m.stream));
    } else {
        if (m.staging.size() < count * m.batch) m.staging.resize(count * m.batch);
        convert_to_float(m.precision, view, m.batch, count, m.staging.data(), m.stream);
        PD_CUDA_CHECK(cudaMemcpyAsync(destination, m.staging.data(), count * m.batch * sizeof(float),
                                      cudaMemcpyDeviceToHost, m.stream));
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

int CudaNetwork::batch() const { return impl_->batch; }
int CudaNetwork::layer_count() const { return (int)impl_->layers.size(); }
Shape CudaNetwork::input_shape() const { return impl_->host.input_shape(); }
Shape CudaNetwork::output_shape(int layer) const {
    PD_CHECK(layer >= 0 && layer < layer_count(), "layer index ", layer, " out of range");
    return impl_->specs[layer]->out;
}

std::vector<float> CudaNetwork::time_layers(int warmup, int iterations) {
    Impl& m = *impl_;
    PD_CHECK(m.batch > 0, "time_layers needs a forward pass first (it reuses that pass's input)");
    PD_CHECK(warmup >= 0 && iterations >= 1, "time_layers: warmup >= 0 and iterations >= 1");
    DeviceScope scope(m.device);
    m.ensure_prepared();
    m.ensure_workspace(m.batch);
    const int run_batch = m.batch;
    for (int i = 0; i < warmup; ++i) m.run(run_batch, use_graph, false);
    m.ensure_events(2);
    std::vector<float> ms(iterations);
    for (int i = 0; i < iterations; ++i) {
        PD_CUDA_CHECK(cudaEventRecord(m.events[0], m.stream));
        m.run(run_batch, use_graph, false);
        PD_CUDA_CHECK(cudaEventRecord(m.events[1], m.stream));
        PD_CUDA_CHECK(cudaEventSynchronize(m.events[1]));
        PD_CUDA_CHECK(cudaEventElapsedTime(&ms[i], m.events[0], m.events[1]));
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    if (m.guard) m.check_guards();
    return ms;
}

Precision CudaNetwork::precision() const { return impl_->precision; }
int CudaNetwork::device() const { return impl_->device; }

std::string CudaNetwork::device_name() const {
    cudaDeviceProp properties;
    PD_CUDA_CHECK(cudaGetDeviceProperties(&properties, impl_->device));
    return properties.name;
}

size_t CudaNetwork::arena_bytes() const { return impl_->arena_size; }

const ViewPlan& CudaNetwork::plan() const {
    PD_CHECK(impl_->planned, "no plan yet: run a forward pass first");
    return impl_->plan;
}

void CudaNetwork::set_plan_options(const PlanOptions& options) { impl_->options = options; }
PlanOptions CudaNetwork::plan_options() const { return impl_->options; }
void CudaNetwork::set_conv_algorithm(ConvAlgorithm algorithm) { impl_->algorithm = algorithm; }
ConvAlgorithm CudaNetwork::conv_algorithm() const { return impl_->algorithm; }
void CudaNetwork::set_split_k(int split_k) {
    PD_CHECK(split_k >= 0 && split_k <= 64, "split_k must be 0 (automatic), 1 (never) or the number of splits");
    impl_->split_k = split_k;
}
int CudaNetwork::split_k() const { return impl_->split_k; }
void CudaNetwork::set_guard(bool on) { impl_->guard = on; }
bool CudaNetwork::guard() const { return impl_->guard; }
int CudaNetwork::guard_region_count() const { return (int)impl_->guard_regions.size(); }

void CudaNetwork::damage_guard_region(int region) {
    Impl& m = *impl_;
    PD_CHECK(region >= 0 && region < (int)m.guard_regions.size(), "no guard region ", region);
    DeviceScope scope(m.device);
    const auto& r = m.guard_regions[region];
    PD_CUDA_CHECK(cudaMemsetAsync(m.arena + r.first + r.second / 2, kGuardByte ^ 0xFF, 1, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

}  // namespace pd
