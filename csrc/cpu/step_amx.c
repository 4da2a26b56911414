/* The decode-step kernel at the amx level: the avx512bf16 kernel (step_isa.inc, its bfloat16
 * gemv on vdpbf16ps) with the amx level's flags, so that every operator level has its own step
 * kernel (a step GEMV row is too short for tiles). */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 64
#define STL_ISA amx
#include "step_level.inc"
#endif
