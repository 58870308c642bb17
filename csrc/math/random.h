// Counter-based random numbers for training: a value is a pure function of (seed, iteration, layer, element), so
// a training run is reproducible without saving generator state, the backward pass recomputes the forward's
// dropout mask instead of storing it, and CPU and GPU draw the same numbers. The mixer is SplitMix64's
// finaliser, applied once per key part.
#pragma once

#include <stdint.h>

#include "../core/common.h"

namespace pd {

PD_HD uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits (every value exactly representable as a float).
PD_HD float counter_uniform(uint64_t seed, uint64_t iteration, uint64_t layer, uint64_t element) {
    uint64_t h = mix64(seed);
    h = mix64(h ^ iteration);
    h = mix64(h ^ layer);
    h = mix64(h ^ element);
    return (float)(h >> 40) * (1.f / 16777216.f);
}

}  // namespace pd
