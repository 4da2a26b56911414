/* One causal decode step with the product cache: the CPU kernels (csrc/cpu/decode_step.c) that
 * csrc/decode_step.c calls (no torch op inside). Sizes as in stl.h: x (B, N) the new token of each
 * sequence, rows (B, t-1, N) the last t-1 inputs of each sequence, E (r, t*t), D (t*t, r),
 * zcache (B, r, P/t), pos (B,) each sequence's row in its tile. */
#ifndef STL_DECODE_STEP_H
#define STL_DECODE_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "stl.h"

/* The first product of level k: ceil(k*r/t) (levels floor(l*t/r), stl_torch.init.causal_levels). */
int64_t stl_step_level_begin(int64_t k, int t, int64_t r);

/* The sequences of one call at row k of their tiles: products l0 .. l0+rk (level k), their
 * encodings at xe + xe_off, laid out (rk, ns, N/t). */
typedef struct {
  int64_t k, l0, rk, ns, xe_off;
  const int64_t *seq;
} StlStepGroup;

#define STL_STEP_DC 64 /* columns per decode chunk */

/* One step of B sequences (the per-ISA kernels, csrc/cpu/step_isa.inc). e (r, t*t), d (t*t, r) and
 * bias (P or NULL) in the compute type, E and D restricted to their causal support (zeros outside);
 * xe: the compute-type encodings the kernel writes; everything else in storage dtype dt. */
typedef struct {
  StlDtype dt;
  const void *x, *rows, *Wt;
  void *zcache, *y;
  const void *e, *d, *bias;
  int64_t B, N, P, r;
  int t;
  const int64_t *pos, *level_begin; /* level_begin[k] for k = 0..t */
  const StlStepGroup *groups;
  int64_t ngroups;
  void *xe;
  int round_xe; /* bfloat16 storage whose full forward multiplies in bfloat16: xe rounded to bfloat16 */
  int parallel;
  uint32_t *xp; /* round_xe: xe as bfloat16 pairs, word K/2 = (xe[K], xe[K+1]) (the high half 0 past Nt), (Nt+1)/2
                 * words per row: the dot-product unit's broadcast operand, packed once per step, not per column block */
} StlStepArgs;

/* planes: scratch of 2*N compute-type elements. */
void stl_step_run_f_baseline(const StlStepArgs *p, void *planes);
void stl_step_run_d_baseline(const StlStepArgs *p, void *planes);
#if defined(__x86_64__) || defined(_M_X64)
void stl_step_run_f_avx2(const StlStepArgs *p, void *planes);
void stl_step_run_d_avx2(const StlStepArgs *p, void *planes);
void stl_step_run_f_avx512(const StlStepArgs *p, void *planes);
void stl_step_run_d_avx512(const StlStepArgs *p, void *planes);
void stl_step_run_f_avx512bf16(const StlStepArgs *p, void *planes);
void stl_step_run_d_avx512bf16(const StlStepArgs *p, void *planes);
void stl_step_run_f_amx(const StlStepArgs *p, void *planes);
void stl_step_run_d_amx(const StlStepArgs *p, void *planes);
#endif

/* One decode step (csrc/cpu/decode_step.c): y (B, P) from x (B, N), rows (B, t-1, N), E, Wt, D,
 * bias (P values or NULL), the product cache zcache (B, r, P/t; the level rows written in place),
 * pos (B,). When rows_out is not NULL, rows_out (B, t-1, N) = the last t-1 inputs after the step
 * (rows shifted by one, x appended; rows_out may be rows itself). The kernel of the ISA level
 * chosen at import (STL_TORCH_CPU_ISA). NULL, or a message (out of memory). */
const char *stl_step(StlDtype dt, const void *x, const void *rows, void *rows_out, const void *E, const void *Wt,
                     const void *D, const void *bias, void *zcache, const int64_t *pos, int64_t B, int64_t N,
                     int64_t P, int t, int64_t r, void *y);
/* The ISA level the step runs at: the operator's (stl_cpu_isa), "baseline", "avx2", "avx512" or
 * "avx512bf16" or "amx". */
const char *stl_step_isa(void);

/* Registers torch.ops.stl_torch.stl_decode_step (a fragment of the stl_torch library); module.c
 * calls it after stl_register_ops. NULL on success, else a message. */
const char *stl_register_decode_step(void);

#endif
