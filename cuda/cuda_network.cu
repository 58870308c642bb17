// The CUDA network (csrc/core/cuda_network.h): the activation plan laid out in one device arena, parameters
// prepared from the host buffer when they change, the forward loop (direct, timed per layer, or replayed from a
// CUDA graph), guard regions for the tests, and timing with CUDA events.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "cuda_layer.cuh"
#include "yolo_loss.cuh"

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

void cuda_set_device(int device) {
    PD_CHECK(device >= 0 && device < cuda_device_count(), "CUDA device ", device, " does not exist (",
             cuda_device_count(), " found)");
    PD_CUDA_CHECK(cudaSetDevice(device));
}

namespace {

constexpr size_t kAlignment = 256;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in float32, float16 and bfloat16

size_t align_up(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

bool same_options(const PlanOptions& a, const PlanOptions& b) {
    return a.alias == b.alias && a.fuse_residual == b.fuse_residual;
}

}  // namespace

// The device parameters and their gradients with the state of the copy rule, shared by the CUDA networks of one
// cfg at several input sizes (multi-scale training): a size change moves no parameters.
struct CudaTrainParams {
    DeviceArray<float> params, grads;
    bool grads_ready = false;
    bool uploaded = false;                    // params holds the host parameters of uploaded_version (or newer)
    unsigned long long uploaded_version = 0;  // host params_version at the last upload
    long long uploads = 0, downloads = 0;     // for the tests: parameter copies between host and device
};

struct CudaNetwork::Impl {
    Impl(const Network& host, Precision precision, int device, std::shared_ptr<CudaTrainParams> shared)
        : host(host),
          precision(precision),
          device(device),
          shared(shared ? std::move(shared) : std::make_shared<CudaTrainParams>()),
          d_params(this->shared->params),
          d_grads(this->shared->grads),
          grads_ready(this->shared->grads_ready),
          params_uploaded(this->shared->uploaded),
          uploaded_version(this->shared->uploaded_version) {}

    ~Impl() {
        if (cudaSetDevice(device) != cudaSuccess) cudaGetLastError();
        release_arena();
        release_staging();
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

    // Declared before the references into it below (d_params, d_grads, grads_ready, params_uploaded, ...).
    std::shared_ptr<CudaTrainParams> shared;

    bool prepared = false;
    unsigned long long prepared_version = 0;
    float prepared_epsilon = 0.f;
    ConvAlgorithm prepared_algorithm = ConvAlgorithm::AUTO;
    int prepared_split_k = -1;

    // Training state (float32): the input and every layer's output of the last forward_train, their gradients,
    // the parameters and their gradients, all on the device (the optimizer's buffers: core/cuda_optimizer.h).
    DeviceArray<float> train_input;
    std::vector<std::unique_ptr<DeviceArray<float>>> train_out, grad_buf;
    std::vector<float*> train_ptr, grad_ptr;
    std::vector<DeviceView> train_views;
    DeviceArray<float>& d_params;  // shared->params
    DeviceArray<float>& d_grads;   // shared->grads
    DeviceArray<float> d_input_grad;
    bool& grads_ready;
    // Layers whose gradient buffer a device loss (yolo_loss) filled since the last forward_train; backward
    // starts from it instead of clearing it.
    std::vector<char> device_seeded;
    bool& params_uploaded;                 // d_params holds the host parameters of uploaded_version (or newer)
    unsigned long long& uploaded_version;  // host params_version at the last upload
    int train_batch = 0;
    float* train_input_ptr = nullptr;  // the last forward_train's input: train_input or a staging slot's buffer
    unsigned long long train_seed = 0;
    long long train_iteration = 0;

    // Input staging (stage_input): each slot has a page-locked host buffer, a device buffer and the event its
    // upload on copy_stream records. FREE -> STAGED (stage_input) -> IN_USE (forward_train_staged) -> FREE (the
    // next forward_train of either kind, or clear_staged for a STAGED slot).
    enum class SlotState { FREE, STAGED, IN_USE };
    struct InputSlot {
        float* pinned = nullptr;
        size_t capacity = 0;  // floats in pinned (device may be larger: batches uploaded in place grow only it)
        DeviceArray<float> device;
        cudaEvent_t uploaded = nullptr;
        int batch = 0;
        SlotState state = SlotState::FREE;
        unsigned long long order = 0;  // stage_input's count when staged: the oldest runs first
    };
    InputSlot slots[2];
    cudaStream_t copy_stream = nullptr;
    unsigned long long staged_total = 0;
    long long staged_direct = 0, staged_copied = 0;
    const void* last_upload_source = nullptr;
    YoloLossScratch loss_scratch;  // the device [yolo] loss's buffers, kept between calls

    void release_staging() {
        if (copy_stream && cudaStreamSynchronize(copy_stream) != cudaSuccess) cudaGetLastError();
        for (InputSlot& slot : slots) {
            if (slot.pinned) cudaFreeHost(slot.pinned);
            if (slot.uploaded) cudaEventDestroy(slot.uploaded);
            slot.pinned = nullptr;
            slot.uploaded = nullptr;
            slot.capacity = 0;
            slot.device.release();
            slot.state = SlotState::FREE;
        }
        if (copy_stream) cudaStreamDestroy(copy_stream);
        copy_stream = nullptr;
    }

    void ensure_grads() {
        if (grads_ready) return;
        d_grads.resize(host.params.size());
        PD_CUDA_CHECK(cudaMemsetAsync(d_grads.data(), 0, host.params.size() * sizeof(float), stream));
        grads_ready = true;
    }

    // The device parameters are the reference between uploads: the optimizer and the training forward pass
    // (rolling statistics) change them there; a host change (touch_params) makes the next use upload again.
    void sync_params() {
        const size_t n = host.params.size();
        if (params_uploaded && uploaded_version == host.params_version && d_params.size() == n) return;
        d_params.resize(n);
        PD_CUDA_CHECK(
            cudaMemcpyAsync(d_params.data(), host.params.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
        params_uploaded = true;
        uploaded_version = host.params_version;
        ++shared->uploads;
    }

    // Darknet's backward_network stops at the last layer with stopbackward 1 (or N > iteration).
    int backward_stop() const {
        for (int i = (int)specs.size() - 1; i >= 0; --i) {
            const double stop = specs[i]->common.stopbackward;
            if (stop == 1 || stop > (double)train_iteration) return i;
        }
        return -1;
    }

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

    // Grows the shared workspace to what the layers need for `run_batch` images (a graph holds its address);
    // `training`: also what forward_train and backward need.
    void ensure_workspace(int run_batch, bool training = false) {
        size_t need = 0;
        for (const auto& layer : layers) {
            need = std::max(need, layer->workspace_bytes(run_batch));
            if (training) need = std::max(need, layer->train_workspace_bytes(run_batch));
        }
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

CudaNetwork::CudaNetwork(const Network& host, Precision precision, int device, const CudaNetwork* share_params)
    : impl_(new Impl(host, precision, device, share_params ? share_params->impl_->shared : nullptr)) {
    const int count = cuda_device_count();
    PD_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (this machine has ", count, ")");
    PD_CHECK(
        !share_params || (share_params->impl_->device == device && &share_params->impl_->host.params == &host.params),
        "share_params: the networks must be on one device and share the host parameter buffer");
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

// ----- training ----------------------------------------------------------------------------------------------

std::vector<std::pair<int, std::string>> CudaNetwork::untrainable_layers() const {
    std::vector<std::pair<int, std::string>> out;
    for (size_t i = 0; i < impl_->layers.size(); ++i)
        if (const char* why = impl_->layers[i]->untrainable()) out.emplace_back((int)i, why);
    return out;
}

void CudaNetwork::forward_train(const float* input, int batch, unsigned long long seed, long long iteration) {
    run_forward_train(input, -1, batch, seed, iteration);
}

// input: host images to upload on the compute stream (slot < 0), or null and the staging slot whose upload to
// wait for.
void CudaNetwork::run_forward_train(const float* input, int slot, int batch, unsigned long long seed,
                                    long long iteration) {
    PD_CHECK(batch >= 1, "batch must be at least 1");
    Impl& m = *impl_;
    for (const auto& bad : untrainable_layers())
        PD_CHECK(false, "layer ", bad.first, " (", m.specs[bad.first]->type, ") cannot train on the GPU: ", bad.second);
    DeviceScope scope(m.device);
    m.ensure_prepared();
    m.ensure_workspace(batch, true);
    m.train_batch = 0;  // no backward until this pass has completed
    const int n = (int)m.layers.size();
    m.device_seeded.assign(n, 0);
    const size_t in_count = (size_t)batch * m.host.input_shape().size();
    for (Impl::InputSlot& s : m.slots)  // the pass that read this slot is being replaced
        if (s.state == Impl::SlotState::IN_USE) s.state = Impl::SlotState::FREE;
    if (slot < 0) {
        m.train_input.resize(in_count);
        PD_CUDA_CHECK(
            cudaMemcpyAsync(m.train_input.data(), input, in_count * sizeof(float), cudaMemcpyHostToDevice, m.stream));
        m.train_input_ptr = m.train_input.data();
    } else {
        Impl::InputSlot& staged = m.slots[slot];
        PD_CUDA_CHECK(cudaStreamWaitEvent(m.stream, staged.uploaded, 0));
        staged.state = Impl::SlotState::IN_USE;
        m.train_input_ptr = staged.device.data();
    }
    m.sync_params();
    m.train_out.resize(n);
    m.train_ptr.assign(n, nullptr);
    m.train_views.assign(n, DeviceView{});
    for (int i = 0; i < n; ++i) {
        if (!m.train_out[i]) m.train_out[i].reset(new DeviceArray<float>());
        const size_t size = m.specs[i]->out.size();
        m.train_out[i]->resize(size * batch);
        m.train_ptr[i] = m.train_out[i]->data();
        m.train_views[i] = DeviceView{m.train_ptr[i], size};
    }
    CudaTrainContext ctx;
    ctx.batch = batch;
    ctx.precision = Precision::FP32;
    ctx.views = &m.train_views;
    ctx.specs = &m.specs;
    ctx.workspace = m.workspace.data();
    ctx.stream = m.stream;
    ctx.params = m.d_params.data();
    ctx.bn_epsilon = m.host.bn_epsilon;
    ctx.seed = seed;
    ctx.iteration = iteration;
    ctx.operands = m.precision;  // fp16/bf16 networks train in mixed precision (storage stays float32)
    for (int i = 0; i < n; ++i) {
        ctx.input = i == 0 ? DeviceView{m.train_input_ptr, m.host.input_shape().size()} : m.train_views[i - 1];
        ctx.output = m.train_views[i];
        m.layers[i]->forward_train(ctx);
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    m.train_batch = batch;
    m.train_seed = seed;
    m.train_iteration = iteration;
}

void CudaNetwork::backward(const std::vector<std::pair<int, const float*>>& output_grads, float* input_grad) {
    Impl& m = *impl_;
    PD_CHECK(m.train_batch > 0, "backward needs a forward_train first");
    DeviceScope scope(m.device);
    const int n = (int)m.layers.size(), batch = m.train_batch, stop = m.backward_stop();
    m.ensure_grads();
    m.grad_buf.resize(n);
    m.grad_ptr.assign(n, nullptr);
    for (int i = stop + 1; i < n; ++i) {
        if (!m.grad_buf[i]) m.grad_buf[i].reset(new DeviceArray<float>());
        const size_t count = (size_t)batch * m.specs[i]->out.size();
        m.grad_buf[i]->resize(count);
        m.grad_ptr[i] = m.grad_buf[i]->data();
        if (m.device_seeded[i]) continue;
        PD_CUDA_CHECK(cudaMemsetAsync(m.grad_ptr[i], 0, count * sizeof(float), m.stream));
    }
    std::vector<char> reached(n, 0);
    for (int i = stop + 1; i < n; ++i) reached[i] = m.device_seeded[i];
    m.device_seeded.assign(n, 0);  // a device loss's gradient seeds one backward
    for (const auto& seed : output_grads) {
        PD_CHECK(seed.first >= 0 && seed.first < n, "gradient given for layer ", seed.first, ", which does not exist");
        if (seed.first <= stop) continue;
        PD_CUDA_CHECK(cudaMemcpyAsync(m.grad_ptr[seed.first], seed.second,
                                      (size_t)batch * m.specs[seed.first]->out.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, m.stream));
        reached[seed.first] = 1;
    }
    const size_t in_count = (size_t)batch * m.host.input_shape().size();
    if (input_grad) {
        m.d_input_grad.resize(in_count);
        PD_CUDA_CHECK(cudaMemsetAsync(m.d_input_grad.data(), 0, in_count * sizeof(float), m.stream));
    }
    // Loss scaling (mixed precision): the gradients backward starts from, times loss_scale.
    if (loss_scale != 1.f)
        for (int i = stop + 1; i < n; ++i)
            if (reached[i]) launch_scale(m.grad_ptr[i], (size_t)batch * m.specs[i]->out.size(), loss_scale, m.stream);
    CudaBackwardContext ctx;
    ctx.batch = batch;
    ctx.operands = m.precision;
    ctx.workspace = m.workspace.data();
    ctx.params = m.d_params.data();
    ctx.grads = m.d_grads.data();
    ctx.seed = m.train_seed;
    ctx.iteration = m.train_iteration;
    ctx.outputs = &m.train_ptr;
    ctx.grad_buffers = &m.grad_ptr;
    ctx.specs = &m.specs;
    ctx.stream = m.stream;
    for (int i = n - 1; i > stop; --i) {
        const LayerSpec& spec = *m.specs[i];
        if (!reached[i] || spec.common.onlyforward) continue;
        ctx.input = i == 0 ? m.train_input_ptr : m.train_ptr[i - 1];
        ctx.output = m.train_ptr[i];
        ctx.output_grad = m.grad_ptr[i];
        ctx.input_grad = nullptr;
        if (m.host.layer(i).reads_previous_output()) {
            if (i == 0) {
                ctx.input_grad = input_grad ? m.d_input_grad.data() : nullptr;
            } else if (i - 1 > stop) {
                ctx.input_grad = m.grad_ptr[i - 1];
                reached[i - 1] = 1;
            }
        }
        for (int ref : spec.inputs)
            if (ref > stop) reached[ref] = 1;
        ctx.weight_grads = !spec.common.train_only_bn;
        m.layers[i]->backward(ctx);
    }
    if (input_grad) {
        std::vector<float> device(in_count);
        PD_CUDA_CHECK(cudaMemcpyAsync(device.data(), m.d_input_grad.data(), in_count * sizeof(float),
                                      cudaMemcpyDeviceToHost, m.stream));
        PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
        for (size_t k = 0; k < in_count; ++k) input_grad[k] += device[k];
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

int CudaNetwork::train_batch() const { return impl_->train_batch; }

void CudaNetwork::copy_train_output(int layer, float* destination) const {
    const Impl& m = *impl_;
    PD_CHECK(m.train_batch > 0 && layer >= 0 && layer < layer_count(), "no training output of layer ", layer,
             " (run forward_train first)");
    DeviceScope scope(m.device);
    PD_CUDA_CHECK(cudaMemcpyAsync(destination, m.train_ptr[layer],
                                  (size_t)m.train_batch * m.specs[layer]->out.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

size_t CudaNetwork::param_count() const { return impl_->host.params.size(); }

void CudaNetwork::copy_params(float* destination) const {
    const Impl& m = *impl_;
    PD_CHECK(m.d_params.size() == param_count(), "no device parameters yet (run forward_train first)");
    DeviceScope scope(m.device);
    PD_CUDA_CHECK(cudaMemcpyAsync(destination, m.d_params.data(), param_count() * sizeof(float), cudaMemcpyDeviceToHost,
                                  m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    ++m.shared->downloads;
}

void CudaNetwork::copy_grads(float* destination) const {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    PD_CUDA_CHECK(cudaMemcpyAsync(destination, m.d_grads.data(), param_count() * sizeof(float), cudaMemcpyDeviceToHost,
                                  m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaNetwork::zero_grads() {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.grads_ready = false;
    m.ensure_grads();
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

long long CudaNetwork::first_nonfinite_grad() const {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    return launch_first_nonfinite(m.d_grads.data(), param_count(), m.stream);
}

float* CudaNetwork::grads_device_pointer() {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    return m.d_grads.data();
}

void* CudaNetwork::stream_handle() const { return impl_->stream; }

bool CudaNetwork::stream_idle() const {
    DeviceScope scope(impl_->device);
    const cudaError_t state = cudaStreamQuery(impl_->stream);
    if (state == cudaErrorNotReady) return false;
    PD_CUDA_CHECK(state);
    return true;
}

float* CudaNetwork::train_params() {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.sync_params();
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    return m.d_params.data();
}

float* CudaNetwork::train_grads() {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    return m.d_grads.data();
}

void CudaNetwork::sync_params() { (void)train_params(); }

void CudaNetwork::mark_params_current() {
    Impl& m = *impl_;
    PD_CHECK(m.params_uploaded, "no device parameters yet (run forward_train first)");
    m.uploaded_version = m.host.params_version;
}

void CudaNetwork::set_grads(const float* values) {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    PD_CUDA_CHECK(
        cudaMemcpyAsync(m.d_grads.data(), values, param_count() * sizeof(float), cudaMemcpyHostToDevice, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
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

// ----- the [yolo] loss on the device ------------------------------------------------------------------------

YoloLossSums CudaNetwork::yolo_loss(int layer, const YoloLossSetup& setup, const double* truths, const int* classes,
                                    const int* counts, int max_truths) {
    Impl& m = *impl_;
    PD_CHECK(m.train_batch > 0, "yolo_loss needs a forward_train first");
    const int n = (int)m.layers.size();
    PD_CHECK(layer >= 0 && layer < n, "yolo_loss: layer ", layer, " does not exist");
    const LayerSpec& spec = *m.specs[layer];
    PD_CHECK(spec.kind == LayerKind::Yolo, "yolo_loss: layer ", layer, " is [", spec.type, "], not [yolo]");
    PD_CHECK(!setup.mask.empty() && spec.out.c == (int)setup.mask.size() * (5 + setup.classes), "yolo_loss: layer ",
             layer, " has ", spec.out.c, " channels, the loss options need ", setup.mask.size(), "*(5+", setup.classes,
             ")");
    PD_CHECK(setup.anchors.size() % 2 == 0 && setup.net_w > 0 && setup.net_h > 0, "yolo_loss: bad anchors or size");
    for (int a : setup.mask)
        PD_CHECK(a >= 0 && 2 * (size_t)a < setup.anchors.size(), "yolo_loss: mask entry ", a, " is not an anchor");
    PD_CHECK(setup.class_multipliers.empty() || (int)setup.class_multipliers.size() == setup.classes,
             "yolo_loss: one class multiplier per class");
    const int batch = m.train_batch;
    for (int b = 0; b < batch; ++b)
        PD_CHECK(counts[b] >= 0 && counts[b] <= max_truths, "yolo_loss: image ", b, " has a bad truth count");
    for (size_t k = 0; k < (size_t)batch * max_truths; ++k)
        PD_CHECK(classes[k] >= 0 && classes[k] < setup.classes, "yolo_loss: class ", classes[k], " out of range");
    DeviceScope scope(m.device);
    if ((int)m.grad_buf.size() < n) m.grad_buf.resize(n);
    if (!m.grad_buf[layer]) m.grad_buf[layer].reset(new DeviceArray<float>());
    m.grad_buf[layer]->resize((size_t)batch * spec.out.size());
    m.device_seeded[layer] = 0;  // not a valid gradient until the loss has completed
    const YoloLossSums sums =
        launch_yolo_loss(setup, m.train_ptr[layer], m.grad_buf[layer]->data(), batch, spec.out.h, spec.out.w, truths,
                         classes, counts, max_truths, m.stream, m.loss_scratch);
    m.device_seeded[layer] = 1;
    return sums;
}

}  // namespace pd

namespace pd {

void CudaNetwork::scale_grads(float factor) {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    m.ensure_grads();
    launch_scale(m.d_grads.data(), m.d_grads.size(), factor, m.stream);
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

// ----- training input staging -----

void CudaNetwork::stage_input(const float* input, int batch) {
    PD_CHECK(batch >= 1, "batch must be at least 1");
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    Impl::InputSlot* slot = nullptr;
    for (Impl::InputSlot& s : m.slots)
        if (s.state == Impl::SlotState::FREE) {
            slot = &s;
            break;
        }
    PD_CHECK(slot,
             "stage_input: both staging slots are busy (a staged batch waits to run and the last training pass "
             "still reads the other); run forward_train on the staged batch first");
    const size_t count = (size_t)batch * m.host.input_shape().size();
    if (!m.copy_stream) PD_CUDA_CHECK(cudaStreamCreateWithFlags(&m.copy_stream, cudaStreamNonBlocking));
    if (!slot->uploaded) PD_CUDA_CHECK(cudaEventCreateWithFlags(&slot->uploaded, cudaEventDisableTiming));
    // A FREE slot's last upload has completed (the pass that read it waited for it and was synchronized, or
    // clear_staged waited), so its buffers may be replaced or overwritten.
    if (slot->device.size() < count) slot->device.resize(count);
    // A batch already in page-locked memory (Network.staging_buffer) is uploaded from where it is.
    const float* source = input;
    if (in_pinned_host_buffer(input, count * sizeof(float))) {
        ++m.staged_direct;
    } else {
        if (slot->capacity < count) {
            if (slot->pinned) PD_CUDA_CHECK(cudaFreeHost(slot->pinned));
            slot->pinned = nullptr;
            slot->capacity = 0;
            PD_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&slot->pinned), count * sizeof(float)));
            slot->capacity = count;
        }
        std::memcpy(slot->pinned, input, count * sizeof(float));
        source = slot->pinned;
        ++m.staged_copied;
    }
    m.last_upload_source = source;
    PD_CUDA_CHECK(
        cudaMemcpyAsync(slot->device.data(), source, count * sizeof(float), cudaMemcpyHostToDevice, m.copy_stream));
    PD_CUDA_CHECK(cudaEventRecord(slot->uploaded, m.copy_stream));
    slot->batch = batch;
    slot->state = Impl::SlotState::STAGED;
    slot->order = ++m.staged_total;
}

void CudaNetwork::forward_train_staged(unsigned long long seed, long long iteration) {
    Impl& m = *impl_;
    int oldest = -1;
    for (int k = 0; k < 2; ++k)
        if (m.slots[k].state == Impl::SlotState::STAGED && (oldest < 0 || m.slots[k].order < m.slots[oldest].order))
            oldest = k;
    PD_CHECK(oldest >= 0, "forward_train on the staged input: nothing is staged (call stage_input first)");
    run_forward_train(nullptr, oldest, m.slots[oldest].batch, seed, iteration);
}

int CudaNetwork::staged_count() const {
    int count = 0;
    for (const Impl::InputSlot& s : impl_->slots) count += s.state == Impl::SlotState::STAGED;
    return count;
}

void CudaNetwork::clear_staged() {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    for (Impl::InputSlot& s : m.slots)
        if (s.state == Impl::SlotState::STAGED) {
            PD_CUDA_CHECK(cudaEventSynchronize(s.uploaded));  // its host buffer may be overwritten next
            s.state = Impl::SlotState::FREE;
        }
}

}  // namespace pd

namespace pd {

// ----- page-locked input batches and the shared training state -----

namespace {

// The live PinnedHostBuffers: start address -> bytes.
std::mutex pinned_mutex;
std::map<uintptr_t, size_t>& pinned_ranges() {
    static std::map<uintptr_t, size_t> ranges;
    return ranges;
}

}  // namespace

PinnedHostBuffer::PinnedHostBuffer(size_t bytes, int device) : bytes_(bytes) {
    PD_CHECK(bytes > 0, "a pinned host buffer needs at least one byte");
    DeviceScope scope(device);
    PD_CUDA_CHECK(cudaMallocHost(&data_, bytes));
    std::lock_guard<std::mutex> lock(pinned_mutex);
    pinned_ranges()[reinterpret_cast<uintptr_t>(data_)] = bytes;
}

PinnedHostBuffer::~PinnedHostBuffer() {
    {
        std::lock_guard<std::mutex> lock(pinned_mutex);
        pinned_ranges().erase(reinterpret_cast<uintptr_t>(data_));
    }
    if (cudaFreeHost(data_) != cudaSuccess) cudaGetLastError();
}

bool in_pinned_host_buffer(const void* pointer, size_t bytes) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(pointer);
    std::lock_guard<std::mutex> lock(pinned_mutex);
    const auto& ranges = pinned_ranges();
    auto next = ranges.upper_bound(start);  // the first block starting after `pointer`
    if (next == ranges.begin()) return false;
    const auto block = std::prev(next);
    return start - block->first <= block->second && bytes <= block->second - (start - block->first);
}

long long CudaNetwork::staged_direct() const { return impl_->staged_direct; }
long long CudaNetwork::staged_copied() const { return impl_->staged_copied; }
const void* CudaNetwork::last_upload_source() const { return impl_->last_upload_source; }

bool CudaNetwork::shares_params_with(const CudaNetwork& other) const { return impl_->shared == other.impl_->shared; }
long long CudaNetwork::param_uploads() const { return impl_->shared->uploads; }
long long CudaNetwork::param_downloads() const { return impl_->shared->downloads; }
long long CudaNetwork::loss_scratch_allocations() const { return impl_->loss_scratch.allocations; }

}  // namespace pd
