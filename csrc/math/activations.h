// Darknet's activation functions, written once for the CPU and the CUDA kernels (see activations.c and
// activations.h in Darknet for the formulas). The enum order is the activation code that the Python side
// sends (pydarknet/graph.py ACTIVATIONS); keep the two in sync.
#pragma once

#include <math.h>

#include "../core/common.h"

namespace pd {

enum Activation : int {
    LINEAR, LOGISTIC, LOGGY, RELU, ELU, SELU, GELU, RELIE, RAMP, LEAKY, TANH, PLSE, STAIR, HARDTAN, LHTAN,
    SWISH, MISH, HARD_MISH, RELU6, REVLEAKY, NORM_CHAN, NORM_CHAN_SOFTMAX, NORM_CHAN_SOFTMAX_MAXVAL,
    ACTIVATION_COUNT
};

// The three normalize_channels variants mix all channels of a pixel, so they are not element-wise.
PD_HD bool is_channel_activation(int a) { return a >= NORM_CHAN; }

PD_HD float logistic_activate(float x) { return 1.f / (1.f + expf(-x)); }
PD_HD float tanh_activate(float x) { return 2.f / (1.f + expf(-2.f * x)) - 1.f; }

// Darknet's softplus with a threshold: linear above it, exponential below its negative.
PD_HD float softplus_activate(float x, float threshold) {
    if (x > threshold) return x;
    if (x < -threshold) return expf(x);
    return logf(expf(x) + 1.f);
}

PD_HD float mish_activate(float x) { return x * tanh_activate(softplus_activate(x, 20.f)); }

PD_HD float hard_mish_activate(float x) {
    if (x > 0.f) return x;
    if (x > -2.f) return x * x / 2.f + x;
    return 0.f;
}

PD_HD float stair_activate(float x) {
    int n = (int)floorf(x);
    if (n % 2 == 0) return floorf(x / 2.f);
    return (x - n) + floorf(x / 2.f);
}

PD_HD float gelu_activate(float x) {
    return 0.5f * x * (1.f + tanhf(0.797885f * x + 0.035677f * powf(x, 3.f)));
}

PD_HD float activate(float x, int a) {
    switch (a) {
        case LINEAR: return x;
        case LOGISTIC: return logistic_activate(x);
        case LOGGY: return 2.f / (1.f + expf(-x)) - 1.f;
        case RELU: return x * (x > 0.f);
        case ELU: return (x >= 0.f) * x + (x < 0.f) * (expf(x) - 1.f);
        case SELU: return (x >= 0.f) * 1.0507f * x + (x < 0.f) * 1.0507f * 1.6732f * (expf(x) - 1.f);
        case GELU: return gelu_activate(x);
        case RELIE: return x > 0.f ? x : .01f * x;
        case RAMP: return x * (x > 0.f) + .1f * x;
        case LEAKY:
        case REVLEAKY: return x > 0.f ? x : .1f * x;
        case TANH: return tanh_activate(x);
        case PLSE:
            if (x < -4.f) return .01f * (x + 4.f);
            if (x > 4.f) return .01f * (x - 4.f) + 1.f;
            return .125f * x + .5f;
        case STAIR: return stair_activate(x);
        case HARDTAN: return x < -1.f ? -1.f : (x > 1.f ? 1.f : x);
        case LHTAN:
            if (x < 0.f) return .001f * x;
            if (x > 1.f) return .001f * (x - 1.f) + 1.f;
            return x;
        case SWISH: return x * logistic_activate(x);
        case MISH: return mish_activate(x);
        case HARD_MISH: return hard_mish_activate(x);
        case RELU6: return fminf(fmaxf(x, 0.f), 6.f);
        default: return x;
    }
}

}  // namespace pd
