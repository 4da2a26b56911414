/* The CPU primitives for the AVX2 + FMA (x86-64-v3) level: primitives.inc with 32-byte vectors; setup.py compiles this file with -mavx2 -mfma -mf16c -mbmi2. */
#if defined(__x86_64__) || defined(_M_X64)
#include <stdbool.h>
#include <string.h>

#include "convert.h"
#include "primitives.h"

#define STL_VBYTES 32
#define STL_ISA avx2
#define A float
#define SUF f
#include "primitives.inc"
#undef A
#undef SUF
#define A double
#define SUF d
#include "primitives.inc"
#undef A
#undef SUF

const StlCpuIsa stl_cpu_isa_avx2 = {"avx2", STL_VBYTES, {encode_f_avx2, encode_d_avx2},
                                      {decode_f_avx2, decode_d_avx2},
                                      {correlate_f_avx2, correlate_d_avx2},
                                      {colsum_f_avx2, colsum_d_avx2},
                                      {gemm_f_avx2, gemm_d_avx2},
                                      {pack_f_avx2, pack_d_avx2}};
#endif
