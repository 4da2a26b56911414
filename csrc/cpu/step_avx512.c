/* The decode-step kernel at the AVX-512 level: 64-byte vectors (setup.py: the flags of isa_avx512.c). */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 64
#define STL_ISA avx512
#include "step_level.inc"
#endif
