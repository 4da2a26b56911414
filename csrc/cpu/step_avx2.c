/* The decode-step kernel at the AVX2 + FMA level: 32-byte vectors (setup.py: the flags of isa_avx2.c). */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 32
#define STL_ISA avx2
#include "step_level.inc"
#endif
