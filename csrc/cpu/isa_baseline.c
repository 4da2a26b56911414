/* The CPU primitives for the portable baseline (x86-64 SSE2, aarch64 NEON) level: primitives.inc with 16-byte vectors, compiled without any -m flag. */
#include <stdbool.h>
#include <string.h>

#include "convert.h"
#include "primitives.h"

#define STL_VBYTES 16
#define STL_ISA baseline
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

const StlCpuIsa stl_cpu_isa_baseline = {"baseline", STL_VBYTES, {encode_f_baseline, encode_d_baseline},
                                      {decode_f_baseline, decode_d_baseline},
                                      {correlate_f_baseline, correlate_d_baseline},
                                      {colsum_f_baseline, colsum_d_baseline},
                                      {gemm_f_baseline, gemm_d_baseline},
                                      {pack_f_baseline, pack_d_baseline}};
