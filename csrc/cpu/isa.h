// Which vector instruction set the CPU kernels use. The engine is built for baseline x86-64; the kernels for
// AVX2+FMA and AVX-512 are compiled alongside and chosen here at run time from the CPU's flags, so one build runs
// on any x86-64 machine and uses the widest registers the machine has. Tests can cap the choice to exercise the
// narrower kernels on a wide machine.
#pragma once

namespace pd {

enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };

// The widest instruction set this CPU supports (AVX-512 means F, BW, DQ and VL together).
Isa cpu_best_isa();
// Whether the CPU has the AVX512_BF16 dot-product instructions.
bool cpu_has_avx512_bf16();
// The instruction set the kernels use now: the best one, or lower when capped.
Isa active_isa();
// Caps the instruction set (never above what the CPU has); returns the one now active.
Isa set_isa_cap(Isa cap);
const char* isa_name(Isa isa);

}  // namespace pd
