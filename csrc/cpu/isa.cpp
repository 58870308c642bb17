// Run-time instruction-set selection (see isa.h).
#include "isa.h"

#include <atomic>

namespace pd {
namespace {

Isa detect() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Generic;
}

std::atomic<int>& cap() {
    static std::atomic<int> value((int)Isa::Avx512);
    return value;
}

}  // namespace

Isa cpu_best_isa() {
    static const Isa best = detect();
    return best;
}

bool cpu_has_avx512_bf16() {
    static const bool has = cpu_best_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
    return has;
}

Isa active_isa() {
    const int best = (int)cpu_best_isa(), capped = cap().load(std::memory_order_relaxed);
    return (Isa)(capped < best ? capped : best);
}

Isa set_isa_cap(Isa isa) {
    cap().store((int)isa);
    return active_isa();
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Avx512: return "avx512";
        case Isa::Avx2: return "avx2";
        default: return "generic";
    }
}

}  // namespace pd
