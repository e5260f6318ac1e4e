/* isa_neon.c: 4 floats per vector, 32 registers, fused multiply-add (every aarch64 CPU: Apple Silicon,
 * Graviton, Ampere, Raspberry Pi 4/5). NEON is part of the aarch64 baseline, so no target flag is needed. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "simd_internal.h"

#define CL_ISA neon
#define CL_ISA_NAME "neon"
#include "vocab_neon.h"

#include "flash_kernel.inc"
#endif
