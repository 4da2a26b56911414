/* The CPU primitives at the AVX-512 level (x86-64-v4): 64-byte vectors; setup.py compiles this file
 * with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c. */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 64
#define STL_ISA avx512
#include "isa_level.inc"
#endif
