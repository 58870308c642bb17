// The scratch of the fixed-order sums (cuda/reduce.cuh) and the per-channel sum of a tensor, which the layers'
// bias gradients use: accumulate[c] += the sum over the batch and the positions of channel c.
#include <vector>

#include "reduce.cuh"

namespace pd {
namespace {

struct ChannelValue {
    const float* x;
    size_t channels, spatial;
    __device__ void operator()(size_t c, size_t j, double* v) const {
        v[0] += x[channel_value_index(c, j, channels, spatial)];
    }
};

struct AddToChannel {
    float* accumulate;
    __device__ void operator()(size_t c, const double* v) const { accumulate[c] += (float)v[0]; }
};

}  // namespace

double* reduce_scratch(int slot, size_t count, cudaStream_t stream) {
    static thread_local std::map<cudaStream_t, DeviceArray<double>> scratch[2];
    DeviceArray<double>& buffer = scratch[slot][stream];
    if (buffer.size() < count || !buffer.data()) {
        PD_CUDA_CHECK(cudaStreamSynchronize(stream));
        buffer.resize(count);
    }
    return buffer.data();
}

void launch_channel_sums(const float* x, int batch, int channels, size_t spatial, float* accumulate,
                         cudaStream_t stream) {
    launch_segment_sums<1>((size_t)channels, (size_t)batch * spatial, ChannelValue{x, (size_t)channels, spatial},
                           AddToChannel{accumulate}, stream);
}

// Host round trip for the tests: x holds batch x channels x spatial values; returns accumulate with the channel
// sums added.
std::vector<float> cuda_channel_sums(const std::vector<float>& x, int batch, int channels, size_t spatial,
                                     std::vector<float> accumulate) {
    PD_CHECK(batch >= 0 && channels >= 0 && x.size() == (size_t)batch * channels * spatial,
             "cuda_channel_sums: ", x.size(), " values are not ", batch, " x ", channels, " x ", spatial);
    PD_CHECK(accumulate.size() == (size_t)channels, "cuda_channel_sums: ", accumulate.size(), " accumulators for ",
             channels, " channels");
    if (x.empty() || accumulate.empty()) return accumulate;
    DeviceArray<float> d_x, d_sums;
    d_x.upload(x.data(), x.size(), nullptr);
    d_sums.upload(accumulate.data(), accumulate.size(), nullptr);
    launch_channel_sums(d_x.data(), batch, channels, spatial, d_sums.data(), nullptr);
    PD_CUDA_CHECK(
        cudaMemcpy(accumulate.data(), d_sums.data(), accumulate.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return accumulate;
}

}  // namespace pd
