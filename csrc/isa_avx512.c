/* isa_avx512.c: 16 floats per vector, 32 registers (Intel Skylake-X and newer, AMD Zen 4 and newer).
 * Compiled with its own target attributes; only called when the CPU reports AVX-512F. */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC target("avx512f")
#endif

#include <immintrin.h>

#include "simd_internal.h"

#define CL_ISA avx512
#define CL_ISA_NAME "avx512"
#include "vocab_avx512.h"

#include "flash_kernel.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
