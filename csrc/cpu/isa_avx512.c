/* The CPU primitives for the AVX-512 (x86-64-v4) level: primitives.inc with 64-byte vectors; setup.py compiles this file with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma. */
#if defined(__x86_64__) || defined(_M_X64)
#include <stdbool.h>
#include <string.h>

#include "convert.h"
#include "primitives.h"

#define STL_VBYTES 64
#define STL_ISA avx512
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

const StlCpuIsa stl_cpu_isa_avx512 = {"avx512", STL_VBYTES, {encode_f_avx512, encode_d_avx512},
                                      {decode_f_avx512, decode_d_avx512},
                                      {correlate_f_avx512, correlate_d_avx512},
                                      {colsum_f_avx512, colsum_d_avx512},
                                      {gemm_f_avx512, gemm_d_avx512},
                                      {pack_f_avx512, pack_d_avx512}};
#endif
