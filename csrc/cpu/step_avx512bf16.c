/* The decode-step kernel at the AVX-512 + AVX512-BF16 level (setup.py: the flags of isa_avx512bf16.c;
 * dispatch.c chooses the level only where the CPU reports avx512bf16): the AVX-512 kernel
 * (step_isa.inc) compiled again with these flags. */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 64
#define STL_ISA avx512bf16
#include "step_level.inc"
#endif
