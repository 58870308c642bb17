// Darknet's weight update with its state resident on the GPU (pydarknet/train/optim.py is the reference): the
// SGD velocity, Adam moments, the gradients Adam layers accumulate while skipped, and the EMA averages live in
// device buffers of the flat parameter layout, and one update is one kernel over the network's device parameters
// and gradients (plus one for the EMA). The state belongs to the optimizer, not to a CudaNetwork, so the resized
// networks of multi-scale training all update through it. No CUDA types here, so the bindings compile without
// nvcc.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "cuda_network.h"

namespace pd {

// A range of the flat buffers and what one update does to it. SGD (Darknet's update_*_gpu, pydarknet/train/optim.py):
// PLAIN (biases, scales) U -= g; DECAY (weights) also U += decay_coef * W; SHORTCUT ([shortcut] weights) U -= g
// clamped to [-1, 1]; then W += step * U, U *= momentum (step = learning rate * layer learning_rate / update batch); ADAM (step = learning rate * layer learning_rate) reads d = -g, or
// ADAM_PENDING d = pending - g (then pending = 0); ACCUMULATE (a layer skipped by dont_update/burnin_update):
// U -= g, ACCUMULATE_ADAM: pending -= g. clip > 0 clamps the weights to [-clip, clip] after the update.
struct OptimizerSegment {
    enum Rule : int {
        PLAIN = 0,
        DECAY = 1,
        SHORTCUT = 2,
        ADAM = 3,
        ADAM_PENDING = 4,
        ACCUMULATE = 5,
        ACCUMULATE_ADAM = 6
    };
    size_t start = 0, stop = 0;
    int rule = PLAIN;
    float step = 0.f;
    float clip = 0.f;
};

// Scalars of one update, each already rounded to float32 as the host optimizer rounds them.
struct OptimizerScalars {
    float decay_coef = 0.f;  // -decay * update batch
    float momentum = 0.f;
    float b1 = 0.f, b2 = 0.f, eps = 0.f;
    float one_minus_b1 = 0.f, one_minus_b2 = 0.f;
    float correction1 = 1.f, correction2 = 1.f;  // 1 - B1**t, 1 - B2**t
};

class CudaOptimizer {
public:
    // Buffers (param_count values each, zero at the start): the SGD velocity, Adam's m, v and pending, the EMA.
    enum Buffer : int { VELOCITY = 0, ADAM_M = 1, ADAM_V = 2, ADAM_PENDING = 3, EMA = 4, BUFFERS = 5 };

    CudaOptimizer(int device, size_t param_count);
    ~CudaOptimizer();
    CudaOptimizer(const CudaOptimizer&) = delete;
    CudaOptimizer& operator=(const CudaOptimizer&) = delete;

    size_t param_count() const;
    int device() const;
    void download(int buffer, float* destination) const;
    void upload(int buffer, const float* values);

    // The first index of the network's device gradient holding NaN or infinity (-1 if none) and the sum of the
    // squared gradient values in double (fixed order: per chunk, then the chunks in order on the host).
    std::pair<long long, double> check_grads(CudaNetwork& net);
    // One update of the network's device parameters from its device gradients (segments sorted or not, disjoint).
    void step(CudaNetwork& net, const std::vector<OptimizerSegment>& segments, const OptimizerScalars& scalars);
    // The EMA over `ranges` of the parameters: with `init` first ema = 0*ema + 1*w; then action 1 (update)
    // ema = alpha*ema + (1-alpha)*w, or action 2 (apply) w = ema.
    void ema(CudaNetwork& net, const std::vector<std::pair<size_t, size_t>>& ranges, bool init, int action, float alpha,
             float one_minus_alpha);
    // A device copy of the network's parameters (taken before a training forward pass moves the batch-norm
    // rolling statistics), and putting it back (an iteration whose update is skipped).
    void save_params(CudaNetwork& net);
    void restore_params(CudaNetwork& net);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pd
