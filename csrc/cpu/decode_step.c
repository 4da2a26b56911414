/* One causal decode step with the product cache, CPU (csrc/decode_step.c registers the op;
 * docs/operator.md section 9, docs/llm.md). Product l has the level k_l = floor(l*t/r)
 * (stl_torch.init.causal_levels): it reads input rows <= k_l of its tile and writes output rows
 * >= k_l. A token at row j of its tile therefore needs
 *   - the encodings of the level-j products only (those of lower levels are final and cached as
 *     their GEMM rows Z), from the rows 0..j of its tile,
 *   - their GEMM row against their r/t blocks of Wt, written into the per-sequence Z cache in place,
 *   - output row j = sum over products of level <= j of D[j*t+b, l] * Z[l].
 * The kernel (step_isa.inc) is compiled once per ISA level (step_baseline.c, step_avx2.c,
 * step_avx512.c, step_avx512bf16.c, step_amx.c) and the level chosen at import (dispatch.c, STL_TORCH_CPU_ISA) runs. This file
 * prepares what the kernel reads: E and D restricted to their causal support in the compute type
 * (so a NaN outside it is never read), the sequences grouped by level, the scratch (a per-thread
 * buffer kept between calls: a step allocates nothing once warm). Compute type: double for
 * float64, float otherwise (16-bit formats load to float, round once on store). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../decode_step.h"
#include "convert.h"
#include "primitives.h"

int64_t stl_step_level_begin(int64_t k, int t, int64_t r) {
  /* first l with floor(l*t/r) >= k, i.e. ceil(k*r/t) */
  return (k * r + t - 1) / t;
}

typedef void (*StepFn)(const StlStepArgs *p, void *planes);

/* The kernel of the operator's ISA level (every level has one: a level without its own would
 * silently run the baseline's 16-byte vectors). */
static StepFn step_fn(int f64, const char **name) {
  const char *isa = stl_cpu_isa()->name;
  *name = isa;
#if defined(__x86_64__) || defined(_M_X64)
  if (!strcmp(isa, "amx")) return f64 ? stl_step_run_d_amx : stl_step_run_f_amx;
  if (!strcmp(isa, "avx512bf16"))
    return f64 ? stl_step_run_d_avx512bf16 : stl_step_run_f_avx512bf16;
  if (!strcmp(isa, "avx512")) return f64 ? stl_step_run_d_avx512 : stl_step_run_f_avx512;
  if (!strcmp(isa, "avx2")) return f64 ? stl_step_run_d_avx2 : stl_step_run_f_avx2;
#endif
  *name = "baseline";
  return f64 ? stl_step_run_d_baseline : stl_step_run_f_baseline;
}

const char *stl_step_isa(void) {
  const char *name;
  step_fn(0, &name);
  return name;
}

/* scratch of the calling thread, grown as needed and kept */
static __thread void *scratch;
static __thread size_t scratch_bytes;

static void *get_scratch(size_t n) {
  if (n > scratch_bytes) {
    free(scratch);
    scratch = malloc(n);
    scratch_bytes = scratch ? n : 0;
  }
  return scratch;
}

#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

const char *stl_step(StlDtype dt, const void *x, const void *rows, void *rows_out, const void *E, const void *Wt,
                     const void *D, const void *bias, void *zcache, const int64_t *pos, int64_t B, int64_t N,
                     int64_t P, int t, int64_t r, void *y) {
  if (B <= 0) return NULL;
  const int f64 = dt == STL_F64;
  const size_t es = f64 ? 8 : 4;
  const int64_t t2 = (int64_t)t * t, Nt = N / t;
  int64_t lb[17], cnt[16] = {0}, rkmax = 0;
  for (int k = 0; k <= t; k++) lb[k] = stl_step_level_begin(k, t, r);
  for (int k = 0; k < t; k++)
    if (lb[k + 1] - lb[k] > rkmax) rkmax = lb[k + 1] - lb[k];
  for (int64_t b = 0; b < B; b++) cnt[pos[b]]++;
  const size_t n_e = ALIGN64(es * (size_t)(r * t2)), n_b = ALIGN64(es * (size_t)P),
               n_seq = ALIGN64(sizeof(int64_t) * (size_t)B), n_xe = ALIGN64(es * (size_t)(rkmax * B * Nt)),
               n_pl = ALIGN64(es * (size_t)(2 * N)), n_xp = ALIGN64(4 * (size_t)(rkmax * B * ((Nt + 1) / 2)));
  char *ws = get_scratch(2 * n_e + n_b + n_seq + n_xe + n_pl + n_xp);
  if (!ws) return "out of memory";
  void *e = ws, *d = ws + n_e, *bc = ws + 2 * n_e, *xe = ws + 2 * n_e + n_b + n_seq, *planes = (char *)xe + n_xe;
  uint32_t *xp = (uint32_t *)((char *)planes + n_pl);
  int64_t *seq = (int64_t *)(ws + 2 * n_e + n_b);
  /* E, D in the compute type, zero outside the causal support (a <= k_l for E, a >= k_l for D) */
  for (int64_t l = 0; l < r; l++) {
    const int64_t kl = l * t / r, ne = (kl + 1) * t;
    if (f64) {
      double *el = (double *)e + l * t2;
      stl_load_d(dt, E, l * t2, ne, el);
      memset(el + ne, 0, sizeof(double) * (size_t)(t2 - ne));
      for (int64_t j = 0; j < t2; j++) {
        double v = 0;
        if (j / t >= kl) stl_load_d(dt, D, j * r + l, 1, &v);
        ((double *)d)[j * r + l] = v;
      }
    } else {
      float *el = (float *)e + l * t2;
      stl_load_f(dt, E, l * t2, ne, el);
      memset(el + ne, 0, sizeof(float) * (size_t)(t2 - ne));
      for (int64_t j = 0; j < t2; j++) {
        float v = 0;
        if (j / t >= kl) stl_load_f(dt, D, j * r + l, 1, &v);
        ((float *)d)[j * r + l] = v;
      }
    }
  }
  if (bias) {
    if (f64)
      stl_load_d(dt, bias, 0, P, (double *)bc);
    else
      stl_load_f(dt, bias, 0, P, (float *)bc);
  }
  StlStepGroup groups[16];
  int64_t ng = 0, off = 0, xoff = 0;
  for (int k = 0; k < t; k++) {
    if (!cnt[k] || lb[k + 1] == lb[k]) continue;
    StlStepGroup *g = &groups[ng++];
    g->k = k, g->l0 = lb[k], g->rk = lb[k + 1] - lb[k], g->ns = 0, g->xe_off = xoff, g->seq = seq + off;
    for (int64_t b = 0; b < B; b++)
      if (pos[b] == k) seq[off + g->ns++] = b;
    off += g->ns;
    xoff += g->rk * g->ns * Nt;
  }
  const StlStepArgs a = {dt, x, rows, Wt, zcache, y, e, d, bias ? bc : NULL, B, N, P, r, t, pos, lb, groups, ng, xe,
                         dt == STL_BF16 && stl_cpu_bf16_gemm(), 1, xp};
  const char *name;
  step_fn(f64, &name)(&a, planes);
  if (rows_out && t > 1) { /* the last t-1 inputs after this token: shift by one, append x */
    const size_t row = (size_t)stl_dtype_size(dt) * (size_t)N;
    for (int64_t b = 0; b < B; b++) {
      char *dst = (char *)rows_out + (size_t)b * (size_t)(t - 1) * row;
      const char *src = (const char *)rows + (size_t)b * (size_t)(t - 1) * row;
      memmove(dst, src + row, (size_t)(t - 2) * row);
      memcpy(dst + (size_t)(t - 2) * row, (const char *)x + (size_t)b * row, row);
    }
  }
  return NULL;
}
