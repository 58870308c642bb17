// The device-resident optimizer (csrc/core/cuda_optimizer.h): Darknet's SGD and Adam updates, the accumulation of
// skipped layers, clip, and the weight EMA as kernels over the flat buffers, with every operation rounded on its
// own as the host optimizer (pydarknet/train/optim.py) computes in float32, so both give the same bits.
#include <math.h>

#include <algorithm>

#include "core/cuda_optimizer.h"
#include "cuda_layer.cuh"

namespace pd {

namespace {

// The last segment starting at or before i (segments sorted by start), or -1 when i lies in none.
__device__ __forceinline__ int find_segment(const OptimizerSegment* segments, int count, size_t i) {
    int lo = 0, hi = count;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (segments[mid].start <= i)
            lo = mid;
        else
            hi = mid;
    }
    return i >= segments[lo].start && i < segments[lo].stop ? lo : -1;
}

// One update per value covered by a segment, in the host optimizer's order of operations (_sgd, _adam,
// _accumulate, then clip).
__global__ void update_kernel(float* params, const float* grads, float* velocity, float* m, float* v, float* pending,
                              const OptimizerSegment* segments, int count, size_t n, OptimizerScalars k) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int found = find_segment(segments, count, i);
        if (found < 0) continue;
        const OptimizerSegment s = segments[found];
        const float g = grads[i];
        float w = params[i];
        switch (s.rule) {
            case OptimizerSegment::ACCUMULATE: velocity[i] = add_rn(velocity[i], -g); continue;
            case OptimizerSegment::ACCUMULATE_ADAM: pending[i] = add_rn(pending[i], -g); continue;
            case OptimizerSegment::ADAM:
            case OptimizerSegment::ADAM_PENDING: {
                float d = -g;
                if (s.rule == OptimizerSegment::ADAM_PENDING) {
                    d = add_rn(pending[i], -g);
                    pending[i] = 0.f;
                }
                float mm = mul_rn(m[i], k.b1), vv = mul_rn(v[i], k.b2);
                d = add_rn(d, mul_rn(k.decay_coef, w));
                mm = add_rn(mm, mul_rn(k.one_minus_b1, d));
                d = mul_rn(d, d);
                vv = add_rn(vv, mul_rn(k.one_minus_b2, d));
                const float m_hat = div_rn(mm, k.correction1), v_hat = div_rn(vv, k.correction2);
                w = add_rn(w, div_rn(mul_rn(s.step, m_hat), add_rn(sqrt_rn(v_hat), k.eps)));
                m[i] = mm;
                v[i] = vv;
                break;
            }
            default: {
                float u = add_rn(velocity[i], -g);
                if (s.rule == OptimizerSegment::SHORTCUT)
                    u = fminf(1.f, fmaxf(-1.f, u));
                else if (s.rule == OptimizerSegment::DECAY)
                    u = add_rn(u, mul_rn(k.decay_coef, w));
                w = add_rn(w, mul_rn(s.step, u));
                velocity[i] = mul_rn(u, k.momentum);
            }
        }
        if (s.clip > 0.f) w = fminf(s.clip, fmaxf(-s.clip, w));
        params[i] = w;
    }
}

// Darknet's ema_update / ema_apply over the ranges (sorted, as segments with PLAIN rules).
__global__ void ema_kernel(float* params, float* ema, const OptimizerSegment* ranges, int count, size_t n, bool init,
                           int action, float alpha, float one_minus_alpha) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (find_segment(ranges, count, i) < 0) continue;
        float e = ema[i];
        const float w = params[i];
        if (init) e = add_rn(mul_rn(0.f, e), mul_rn(1.f, w));
        if (action == 2)
            params[i] = e;
        else if (action == 1)
            e = add_rn(mul_rn(alpha, e), mul_rn(one_minus_alpha, w));
        ema[i] = e;
    }
}

constexpr size_t kCheckChunk = 4096;

// Per chunk c: the first index holding NaN or infinity (or -1) and the sum of squares in double, in index order.
__global__ void check_kernel(const float* values, size_t n, long long* first, double* sums, size_t chunks) {
    for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < chunks; c += (size_t)gridDim.x * blockDim.x) {
        long long found = -1;
        double sum = 0.0;
        const size_t stop = (c + 1) * kCheckChunk < n ? (c + 1) * kCheckChunk : n;
        for (size_t i = c * kCheckChunk; i < stop; ++i) {
            const float x = values[i];
            if (found < 0 && !isfinite(x)) found = (long long)i;
            sum += (double)x * (double)x;
        }
        first[c] = found;
        sums[c] = sum;
    }
}

std::vector<OptimizerSegment> sorted_segments(std::vector<OptimizerSegment> segments, size_t n) {
    std::sort(segments.begin(), segments.end(),
              [](const OptimizerSegment& a, const OptimizerSegment& b) { return a.start < b.start; });
    for (size_t k = 0; k < segments.size(); ++k) {
        PD_CHECK(segments[k].start <= segments[k].stop && segments[k].stop <= n, "optimizer segment [",
                 segments[k].start, ", ", segments[k].stop, ") lies outside the ", n, " parameters");
        PD_CHECK(k == 0 || segments[k - 1].stop <= segments[k].start, "optimizer segments overlap at ",
                 segments[k].start);
        PD_CHECK(segments[k].rule >= 0 && segments[k].rule <= OptimizerSegment::ACCUMULATE_ADAM,
                 "optimizer segment rule ", segments[k].rule, " is unknown");
    }
    return segments;
}

}  // namespace

struct CudaOptimizer::Impl {
    Impl(int device, size_t n) : device(device), n(n) {}
    ~Impl() {
        if (cudaSetDevice(device) != cudaSuccess) cudaGetLastError();
        for (auto& b : buffers) b.release();
        snapshot.release();
        segments.release();
        if (stream) cudaStreamDestroy(stream);
        cudaGetLastError();
    }
    const int device;
    const size_t n;
    cudaStream_t stream = nullptr;
    DeviceArray<float> buffers[BUFFERS];
    bool allocated[BUFFERS] = {};
    DeviceArray<float> snapshot;
    DeviceArray<OptimizerSegment> segments;

    float* buffer(int b) {
        PD_CHECK(b >= 0 && b < BUFFERS, "no optimizer buffer ", b);
        if (!allocated[b]) {
            buffers[b].resize(n);
            PD_CUDA_CHECK(cudaMemsetAsync(buffers[b].data(), 0, n * sizeof(float), stream));
            allocated[b] = true;
        }
        return buffers[b].data();
    }
    int upload_segments(const std::vector<OptimizerSegment>& list) {
        const std::vector<OptimizerSegment> sorted = sorted_segments(list, n);
        if (!sorted.empty()) segments.upload(sorted.data(), sorted.size(), stream);
        return (int)sorted.size();
    }
    void check_network(CudaNetwork& net) const {
        PD_CHECK(net.param_count() == n, "the network has ", net.param_count(), " parameters, the optimizer ", n);
        PD_CHECK(net.device() == device, "the network is on cuda:", net.device(), ", the optimizer on cuda:", device);
    }
};

CudaOptimizer::CudaOptimizer(int device, size_t param_count) : impl_(new Impl(device, param_count)) {
    DeviceScope scope(device);
    PD_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
}

CudaOptimizer::~CudaOptimizer() = default;

size_t CudaOptimizer::param_count() const { return impl_->n; }
int CudaOptimizer::device() const { return impl_->device; }

void CudaOptimizer::download(int buffer, float* destination) const {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    const float* data = m.buffer(buffer);
    PD_CUDA_CHECK(cudaMemcpyAsync(destination, data, m.n * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaOptimizer::upload(int buffer, const float* values) {
    Impl& m = *impl_;
    DeviceScope scope(m.device);
    float* data = m.buffer(buffer);
    PD_CUDA_CHECK(cudaMemcpyAsync(data, values, m.n * sizeof(float), cudaMemcpyHostToDevice, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

std::pair<long long, double> CudaOptimizer::check_grads(CudaNetwork& net) {
    Impl& m = *impl_;
    m.check_network(net);
    const float* grads = net.train_grads();  // the network's own calls end synchronised
    DeviceScope scope(m.device);
    if (m.n == 0) return {-1, 0.0};
    const size_t chunks = (m.n + kCheckChunk - 1) / kCheckChunk;
    DeviceArray<long long> first;
    DeviceArray<double> sums;
    first.resize(chunks);
    sums.resize(chunks);
    PD_LAUNCH(grid_for(chunks, 128), 128, 0, m.stream, check_kernel)(grads, m.n, first.data(), sums.data(), chunks);
    PD_CUDA_CHECK_LAUNCH();
    std::vector<long long> host_first(chunks);
    std::vector<double> host_sums(chunks);
    PD_CUDA_CHECK(
        cudaMemcpyAsync(host_first.data(), first.data(), chunks * sizeof(long long), cudaMemcpyDeviceToHost, m.stream));
    PD_CUDA_CHECK(
        cudaMemcpyAsync(host_sums.data(), sums.data(), chunks * sizeof(double), cudaMemcpyDeviceToHost, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    long long found = -1;
    double sum = 0.0;
    for (size_t c = 0; c < chunks; ++c) {
        if (found < 0 && host_first[c] >= 0) found = host_first[c];
        sum += host_sums[c];
    }
    return {found, sum};
}

void CudaOptimizer::step(CudaNetwork& net, const std::vector<OptimizerSegment>& segments,
                         const OptimizerScalars& scalars) {
    Impl& m = *impl_;
    m.check_network(net);
    float* params = net.train_params();
    const float* grads = net.train_grads();
    DeviceScope scope(m.device);
    bool adam = false, sgd = false;
    for (const auto& s : segments) {
        const bool is_adam = s.rule == OptimizerSegment::ADAM || s.rule == OptimizerSegment::ADAM_PENDING ||
                             s.rule == OptimizerSegment::ACCUMULATE_ADAM;
        adam |= is_adam;
        sgd |= !is_adam;
    }
    float* velocity = sgd ? m.buffer(VELOCITY) : nullptr;
    float* am = adam ? m.buffer(ADAM_M) : nullptr;
    float* av = adam ? m.buffer(ADAM_V) : nullptr;
    float* pending = adam ? m.buffer(ADAM_PENDING) : nullptr;
    const int count = m.upload_segments(segments);
    if (count > 0 && m.n > 0) {
        PD_LAUNCH(grid_for(m.n, 256), 256, 0, m.stream, update_kernel)(params, grads, velocity, am, av, pending,
                                                                       m.segments.data(), count, m.n, scalars);
        PD_CUDA_CHECK_LAUNCH();
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaOptimizer::ema(CudaNetwork& net, const std::vector<std::pair<size_t, size_t>>& ranges, bool init, int action,
                        float alpha, float one_minus_alpha) {
    Impl& m = *impl_;
    m.check_network(net);
    PD_CHECK(action >= 0 && action <= 2, "EMA action ", action, " is not 0, 1 or 2");
    float* params = net.train_params();
    DeviceScope scope(m.device);
    std::vector<OptimizerSegment> list;
    for (const auto& r : ranges) list.push_back(OptimizerSegment{r.first, r.second, OptimizerSegment::PLAIN, 0.f, 0.f});
    float* values = m.buffer(EMA);
    const int count = m.upload_segments(list);
    if (count > 0 && m.n > 0 && (init || action != 0)) {
        PD_LAUNCH(grid_for(m.n, 256), 256, 0, m.stream, ema_kernel)(params, values, m.segments.data(), count, m.n, init,
                                                                    action, alpha, one_minus_alpha);
        PD_CUDA_CHECK_LAUNCH();
    }
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaOptimizer::save_params(CudaNetwork& net) {
    Impl& m = *impl_;
    m.check_network(net);
    const float* params = net.train_params();
    DeviceScope scope(m.device);
    m.snapshot.resize(m.n);
    PD_CUDA_CHECK(cudaMemcpyAsync(m.snapshot.data(), params, m.n * sizeof(float), cudaMemcpyDeviceToDevice, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaOptimizer::restore_params(CudaNetwork& net) {
    Impl& m = *impl_;
    m.check_network(net);
    PD_CHECK(m.snapshot.size() == m.n && m.snapshot.data(), "no saved parameters to restore (save_params first)");
    float* params = net.train_params();
    DeviceScope scope(m.device);
    PD_CUDA_CHECK(cudaMemcpyAsync(params, m.snapshot.data(), m.n * sizeof(float), cudaMemcpyDeviceToDevice, m.stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

}  // namespace pd
