// Activation memory planning, shared by the CPU network and the CUDA network.
//
// The CPU network gives every layer its own output and reuses memory once the last reader of an output has run
// (assign_buffers over last_reads). The CUDA network plans *views* on top of that (plan_views): a layer's output
// may live inside another layer's storage, so that a concatenating [route] is written in place by the layers it
// concatenates, a sliced route or an identity layer is just a view of its input, and a [shortcut] directly after
// the convolution it adds to is folded into that convolution's epilogue. Layers whose output appears that way
// run no kernel at all. The plan is pure host logic, so it is tested without a GPU (tests/test_cuda_plan.py).
#pragma once

#include <climits>
#include <cstddef>
#include <vector>

#include "layer.h"

namespace pd {

constexpr int kForever = INT_MAX;

// One stretch of activation memory: `size` elements per image, written first at step `start`, last read at
// step `end` (kForever: must survive the forward pass).
struct Lifetime {
    size_t size = 0;
    int start = 0;
    int end = 0;
};

struct BufferAssignment {
    std::vector<int> buffer_of;    // lifetime -> buffer
    std::vector<size_t> capacity;  // buffer -> elements per image
};

// Greedy best fit in order of start (ties in index order): a buffer can take a new lifetime once its previous
// one has ended (end < start), preferring the smallest free buffer that fits, else the largest free one (which
// then grows), else a new buffer.
BufferAssignment assign_buffers(const std::vector<Lifetime>& lifetimes);

// The last step reading each layer's output when the layers run in order: every layer reads its predecessor,
// and route/shortcut/sam/scale_channels also read the layers they list. Layers in `keep` (all with keep_all)
// are read "forever".
std::vector<int> last_reads(const std::vector<const LayerSpec*>& specs, const std::vector<int>& keep, bool keep_all);

struct PlanOptions {
    bool alias = true;          // views for identity layers and routes instead of copies
    bool fuse_residual = true;  // fold a [shortcut] into the convolution before it
};

struct ViewPlan {
    // Layer i's output is image b's elements [offset[i], offset[i] + out.size) of storage storage[i], whose
    // images are storage_size[storage[i]] elements apart.
    std::vector<int> storage;
    std::vector<size_t> offset;
    // False for layers whose output exists without running them (views, routes written in place by their
    // inputs, shortcuts folded into the convolution before them).
    std::vector<char> runs;
    // For a convolution with a folded shortcut: the layer whose output the epilogue adds (then the shortcut's
    // activation is applied and the result is the shortcut's output); -1 otherwise.
    std::vector<int> residual;
    std::vector<size_t> storage_size;
    std::vector<Lifetime> storage_life;
    BufferAssignment buffers;  // storage -> buffer

    size_t stride(int layer) const { return storage_size[storage[layer]]; }
};

// Plans the views of a network's layers. With keep_all, every output survives and nothing is folded away.
ViewPlan plan_views(const std::vector<const LayerSpec*>& specs, const std::vector<int>& keep, bool keep_all,
                    const PlanOptions& options);

}  // namespace pd
