/* The CPU primitives at the AVX2 + FMA level (x86-64-v3): 32-byte vectors; setup.py compiles this
 * file with -mavx2 -mfma -mf16c -mbmi2. */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 32
#define STL_ISA avx2
#include "isa_level.inc"
#endif
