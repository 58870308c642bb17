// The CUDA network: runs a host Network's layers on one GPU. Parameters stay in the host network's flat buffer
// (weights I/O and Python views are unchanged); whenever params_version changes, each layer re-derives its
// device tensors (batch-norm folded, padded and converted for its kernels). Activations live in one device
// arena planned by plan_views (plan.h). This header has no CUDA types so the bindings compile without nvcc.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "network.h"
#include "plan.h"

namespace pd {

// A failed CUDA runtime call or kernel launch (pydarknet.CudaError in Python).
struct CudaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The precision (core/common.h) is the activations' storage and tensor-core operand type; arithmetic outside the
// tensor cores is float.

// How convolutions run: AUTO picks SIMT (float FMA) for FP32 and TENSOR (tensor cores, FP32 accumulation)
// for FP16/BF16; SIMT also runs FP16/BF16 storage (float weights), TENSOR needs FP16 or BF16.
enum class ConvAlgorithm : int { AUTO = 0, SIMT = 1, TENSOR = 2 };

// A [yolo] head's training-loss options (pydarknet/train/yolo_loss.py YoloLossConfig; iou kinds are
// YoloIouKind of csrc/math/yolo_loss.h) and the network input size its anchors are measured in.
struct YoloLossSetup {
    int classes = 0, net_w = 0, net_h = 0;
    std::vector<int> mask;                 // anchor index of each of the head's anchors
    std::vector<double> anchors;           // all `num` anchors, (w, h) pairs in pixels
    std::vector<float> class_multipliers;  // counters_per_class (empty: none)
    double ignore_thresh = 0.5, truth_thresh = 1.0, iou_thresh = 1.0;
    double iou_normalizer = 0.75, obj_normalizer = 1.0, cls_normalizer = 1.0, delta_normalizer = 1.0;
    double max_delta = 0.0, label_smooth_eps = 0.0;
    bool clip_max_delta = false, focal_loss = false, new_coords = false, objectness_smooth = false;
    int iou_loss = 0, iou_thresh_kind = 1;
};

// What the device loss sums (in double, in a fixed order): the pieces YoloLossResult is assembled from.
struct YoloLossSums {
    double sum_sq = 0, box_sq = 0;  // sum of delta^2 over all values, and over the x, y, w, h entries
    double obj_sum = 0;             // objectness summed over every anchor (NaN read as 0 in images with truths)
    double tot_iou = 0, tot_iou_loss = 0, tot_giou_loss = 0, avg_cat = 0, avg_obj = 0;
    long long count = 0, recall50 = 0, recall75 = 0, total_bbox = 0, rewritten_bbox = 0;
};

class CudaNetwork {
public:
    // share_params: another CudaNetwork on the same device whose host network shares this one's parameter buffer
    // (Network::resized); both then train one device parameter buffer and one gradient buffer (multi-scale).
    CudaNetwork(const Network& host, Precision precision, int device, const CudaNetwork* share_params = nullptr);
    ~CudaNetwork();
    CudaNetwork(const CudaNetwork&) = delete;
    CudaNetwork& operator=(const CudaNetwork&) = delete;

    // Uploads `batch` images (float32, NCHW), runs every layer and waits for the GPU.
    void forward(const float* input, int batch, bool keep_all);
    bool output_available(int layer) const;
    // Layer `layer`'s output of the last forward pass as float32, batch * out.size() values.
    void copy_output(int layer, float* destination) const;
    int batch() const;
    int layer_count() const;
    Shape input_shape() const;
    Shape output_shape(int layer) const;

    // Runs the layers `iterations` times on the input of the last forward pass (after `warmup` runs) and
    // returns each run's GPU time in milliseconds, measured with CUDA events around the layers only.
    std::vector<float> time_layers(int warmup, int iterations);

    Precision precision() const;
    int device() const;
    std::string device_name() const;
    size_t arena_bytes() const;  // activation memory of the current plan, guards included
    const ViewPlan& plan() const;

    // Options; a change takes effect at the next forward pass.
    void set_plan_options(const PlanOptions& options);
    PlanOptions plan_options() const;
    void set_conv_algorithm(ConvAlgorithm algorithm);
    ConvAlgorithm conv_algorithm() const;
    // Split-K for convolutions too small to fill the GPU: 0 automatic (the default), 1 never, n > 1 always n.
    void set_split_k(int split_k);
    int split_k() const;
    // Guard regions around every activation buffer (checked after each forward pass; a changed byte raises
    // CudaError naming the buffer) and activations poisoned with NaN before each pass, for the tests.
    void set_guard(bool on);
    bool guard() const;
    // Number of guard regions of the current plan, and a way to change a byte of one (so the tests can check
    // that the guard check catches it).
    int guard_region_count() const;
    void damage_guard_region(int region);
    // ----- training (float32 storage; fp16/bf16 networks in mixed precision; cuda/NOTES.md lists the layers) -----
    // (layer, why) for every layer that cannot train on the device.
    std::vector<std::pair<int, std::string>> untrainable_layers() const;
    // As Network::forward_train, keeping every layer's output on the device.
    void forward_train(const float* input, int batch, unsigned long long seed, long long iteration);
    // As Network::backward: gradients of some layers' outputs in, parameter gradients added to the device
    // gradient buffer; the input gradient is added to input_grad when it is not null.
    void backward(const std::vector<std::pair<int, const float*>>& output_grads, float* input_grad);
    int train_batch() const;
    void copy_train_output(int layer, float* destination) const;
    size_t param_count() const;
    // The device parameters (param_count() values): after forward_train they hold batch-norm's moved rolling
    // statistics, which the caller copies into the host buffer.
    void copy_params(float* destination) const;
    void copy_grads(float* destination) const;  // param_count() values
    void zero_grads();
    // Index of the first NaN or infinity in the device gradient buffer, or -1.
    long long first_nonfinite_grad() const;
    // For summing gradients across processes (pydarknet/train/distributed.py): the device gradient buffer
    // (param_count() floats), the stream the training passes run on (a collective enqueued there follows the
    // backward pass), whether that stream has finished its work (never blocks: a peer that died must not hang the
    // caller), and an upload of gradients summed on the host.
    float* grads_device_pointer();
    void* stream_handle() const;
    bool stream_idle() const;
    void set_grads(const float* values);
    // The [yolo] loss of head `layer` of the last forward_train, computed on the device: its gradient stays in
    // the layer's device gradient buffer, which the next backward uses (a gradient given to backward for the
    // same layer replaces it). truths: counts[b] rows of (x, y, w, h) and class ids per image, max_truths slots.
    YoloLossSums yolo_loss(int layer, const YoloLossSetup& setup, const double* truths, const int* classes,
                           const int* counts, int max_truths);
    // Device-resident training state (pydarknet/core/network.py states which copy of the parameters is current):
    // forward_train uploads the host parameters only when the host's params_version differs from the one last
    // uploaded. CudaOptimizer (core/cuda_optimizer.h) updates the device copy in place.
    float* train_params();       // the device parameters (uploaded first if the host changed)
    float* train_grads();        // the device gradient buffer (zeroed at first use)
    void sync_params();          // upload the host parameters if they changed since the last upload
    void mark_params_current();  // the host buffer now equals the device copy: no upload needed

    // Mixed precision (fp16/bf16 networks, cuda/NOTES.md): backward multiplies the gradients it starts from by
    // loss_scale; scale_grads multiplies the device gradient buffer (to unscale before the update).
    float loss_scale = 1.f;
    void scale_grads(float factor);

    // Capture the layers once per plan in a CUDA graph and replay it (cuts launch overhead at small batch).
    bool use_graph = false;
    // Record each layer's GPU time (CUDA events; graphs are not used while profiling).
    bool profile = false;
    std::vector<double> layer_seconds;

    // ----- training input staging (pinned host memory, a copy stream, two slots) -----
    // stage_input copies `batch` images (float32, NCHW) into a page-locked host buffer of a free slot, enqueues
    // their upload on the network's copy stream (recording an event) and returns without waiting for it.
    // forward_train_staged runs the oldest staged batch: the compute stream waits for that upload's event instead
    // of uploading, so the upload overlaps whatever the compute stream runs meanwhile (the loss and backward of
    // the previous pass). Slot rule: a slot is busy from stage_input until the training pass that reads it is
    // replaced by the next forward_train (backward reads the network's input too, so "its forward pass was
    // enqueued" is not enough); stage_input while both slots are busy is refused. With two slots, staging pass
    // s+1 right after forward_train(s) is always allowed. Buffers grow only when a larger batch arrives.
    void stage_input(const float* input, int batch);
    void forward_train_staged(unsigned long long seed, long long iteration);
    int staged_count() const;  // batches staged and not yet run
    void clear_staged();       // drops the staged batches that have not run (after waiting for their uploads)

    // ----- page-locked input batches and shared training state (appended; cuda/NOTES.md, "Training on the GPU") --
    // stage_input uploads a batch that lies inside one live PinnedHostBuffer straight from there (no copy into the
    // slot's own pinned buffer); the caller must leave that memory unchanged until the batch has run
    // (forward_train_staged) or clear_staged has returned. The counts say which path each stage_input took.
    long long staged_direct() const;         // uploads read straight from the caller's page-locked memory
    long long staged_copied() const;         // batches copied into a slot's pinned buffer first
    const void* last_upload_source() const;  // host memory the last stage_input's upload read from
    // Whether this network and `other` train one device parameter and gradient buffer (share_params).
    bool shares_params_with(const CudaNetwork& other) const;
    long long param_uploads() const;    // host-to-device uploads of the parameters, over all sharing networks
    long long param_downloads() const;  // copy_params calls, over all sharing networks
    // Device allocations the [yolo] loss's scratch made (it is kept between calls and grown when needed).
    long long loss_scratch_allocations() const;

private:
    void run_forward_train(const float* input, int slot, int batch, unsigned long long seed, long long iteration);
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Page-locked host memory (cudaMallocHost) for training batches (Network.staging_buffer): while it lives, its
// range is recorded so that stage_input can recognise a batch inside it and upload from it in place.
class PinnedHostBuffer {
public:
    PinnedHostBuffer(size_t bytes, int device);
    ~PinnedHostBuffer();
    PinnedHostBuffer(const PinnedHostBuffer&) = delete;
    PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
    void* data() const { return data_; }
    size_t bytes() const { return bytes_; }

private:
    void* data_ = nullptr;
    size_t bytes_ = 0;
};
// Whether [pointer, pointer + bytes) lies inside one live PinnedHostBuffer.
bool in_pinned_host_buffer(const void* pointer, size_t bytes);

int cuda_device_count();
// Makes `device` the calling thread's current GPU (for libraries that create their state on it: NCCL).
void cuda_set_device(int device);

}  // namespace pd
