/* The CPU kernels of one causal decode step with the product cache (csrc/decode_step.c registers
 * the op; docs/operator.md section 9, docs/llm.md). Product l has the level k_l = floor(l*t/r)
 * (stl_torch.init.causal_levels): it reads input rows <= k_l of its tile and writes output rows
 * >= k_l. A token at row j of its tile therefore needs
 *   - the encodings of the level-j products only (those of lower levels are final and cached as
 *     their GEMM rows Z), from the rows 0..j of its tile:   stl_step_encode
 *   - their GEMM row (torch's bmm on their r/t blocks of Wt, done by the caller), written into the
 *     per-sequence Z cache:                                  stl_step_scatter
 *   - output row j = sum over products of level <= j of D[j*t+b, l] * Z[l]:  stl_step_decode
 * Only the causal support of E and D is read (E[l, a*t+c] for a <= k_l, D[a*t+b, l] for a >= k_l),
 * and zero coefficients are skipped, as the forward kernels do: a NaN or inf in a row that is not
 * (yet) part of the computation never reaches an output. Compute type: double for float64, float
 * otherwise (16-bit formats load to float, round once on store). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../decode_step.h"
#include "convert.h"

int64_t stl_step_level_begin(int64_t k, int t, int64_t r) {
  /* first l with floor(l*t/r) >= k, i.e. ceil(k*r/t) */
  return (k * r + t - 1) / t;
}

/* Row a (0..k) of sequence b's current tile when the new token sits at row k: the cached last t-1
 * inputs hold rows 0..k-1 at their end, the new token is row k. */
static inline const void *tile_row(StlDtype dt, const void *x, const void *rows, int64_t b, int64_t N, int t,
                                   int64_t k, int64_t a) {
  const int64_t es = stl_dtype_size(dt);
  if (a == k) return (const char *)x + b * N * es;
  return (const char *)rows + (b * (t - 1) + (t - 1 - k + a)) * N * es;
}

#define STL_STEP_KERNELS(A, SUF)                                                                             \
  static void step_encode_##SUF(StlDtype dt, const void *x, const void *rows, int64_t N, int t, int64_t r,   \
                                const void *E, int64_t k, const int64_t *seq, int64_t ns, void *xe, A *ws) { \
    const int64_t t2 = (int64_t)t * t, Nt = N / t, l0 = stl_step_level_begin(k, t, r),                      \
                  rk = stl_step_level_begin(k + 1, t, r) - l0;                                              \
    A *row = ws, *acc = ws + N, *e = acc + rk * Nt; /* N | rk*Nt | rk*(k+1)*t */                           \
    for (int64_t i = 0; i < rk; i++) stl_load_##SUF(dt, E, (l0 + i) * t2, (k + 1) * t, e + i * (k + 1) * t); \
    for (int64_t s = 0; s < ns; s++) {                                                                       \
      memset(acc, 0, sizeof(A) * (size_t)(rk * Nt));                                                         \
      for (int64_t a = 0; a <= k; a++) {                                                                     \
        stl_load_##SUF(dt, tile_row(dt, x, rows, seq[s], N, t, k, a), 0, N, row);                            \
        for (int64_t i = 0; i < rk; i++)                                                                     \
          for (int c = 0; c < t; c++) {                                                                      \
            const A w = e[i * (k + 1) * t + a * t + c];                                                      \
            if (w == 0) continue; /* a zero coefficient is skipped, never 0 * value */                      \
            A *out = acc + i * Nt;                                                                           \
            const A *in = row + c;                                                                           \
            for (int64_t K = 0; K < Nt; K++) out[K] += w * in[K * t];                                        \
          }                                                                                                  \
      }                                                                                                      \
      for (int64_t i = 0; i < rk; i++) stl_store_##SUF(dt, xe, (i * ns + s) * Nt, Nt, acc + i * Nt);         \
    }                                                                                                        \
  }                                                                                                          \
  static void step_decode_##SUF(StlDtype dt, const void *zc, int64_t B, int64_t P, int t, int64_t r,        \
                                const void *D, const void *bias, const int64_t *pos, void *y, A *ws) {       \
    const int64_t Pt = P / t;                                                                                \
    A *acc = ws, *zr = ws + P, *d = zr + Pt; /* P | Pt | t*r */                                             \
    for (int64_t b = 0; b < B; b++) {                                                                        \
      const int64_t j = pos[b], lend = stl_step_level_begin(j + 1, t, r);                                   \
      stl_load_##SUF(dt, D, j * t * r, (int64_t)t * r, d); /* rows j*t .. j*t+t-1 of D */                   \
      if (bias)                                                                                              \
        stl_load_##SUF(dt, bias, 0, P, acc);                                                                 \
      else                                                                                                   \
        memset(acc, 0, sizeof(A) * (size_t)P);                                                               \
      for (int64_t l = 0; l < lend; l++) { /* products of level <= j: their Z rows are final */            \
        stl_load_##SUF(dt, zc, (b * r + l) * Pt, Pt, zr);                                                    \
        for (int bb = 0; bb < t; bb++) {                                                                     \
          const A w = d[bb * r + l];                                                                         \
          if (w == 0) continue;                                                                              \
          A *out = acc + bb;                                                                                 \
          for (int64_t J = 0; J < Pt; J++) out[J * t] += w * zr[J];                                          \
        }                                                                                                    \
      }                                                                                                      \
      stl_store_##SUF(dt, y, b * P, P, acc);                                                                 \
    }                                                                                                        \
  }

STL_STEP_KERNELS(float, f)
STL_STEP_KERNELS(double, d)

size_t stl_step_ws_bytes(StlDtype dt, int64_t N, int64_t P, int t, int64_t r) {
  const size_t es = dt == STL_F64 ? 8 : 4;
  const int64_t rk = stl_step_level_begin(1, t, r) + 1; /* >= the most products of one level */
  const int64_t enc = N + rk * (N / t) + rk * (int64_t)t * t, dec = P + P / t + (int64_t)t * r;
  return es * (size_t)(enc > dec ? enc : dec);
}

void stl_step_encode(StlDtype dt, const void *x, const void *rows, int64_t N, int t, int64_t r, const void *E,
                     int64_t k, const int64_t *seq, int64_t ns, void *xe, void *ws) {
  if (dt == STL_F64)
    step_encode_d(dt, x, rows, N, t, r, E, k, seq, ns, xe, (double *)ws);
  else
    step_encode_f(dt, x, rows, N, t, r, E, k, seq, ns, xe, (float *)ws);
}

void stl_step_scatter(StlDtype dt, const void *zk, int64_t rk, int64_t l0, const int64_t *seq, int64_t ns,
                      int64_t r, int64_t Pt, void *zcache) {
  const size_t es = (size_t)stl_dtype_size(dt), n = es * (size_t)Pt;
  for (int64_t i = 0; i < rk; i++)
    for (int64_t s = 0; s < ns; s++)
      memcpy((char *)zcache + (size_t)((seq[s] * r + l0 + i) * Pt) * es, (const char *)zk + (size_t)((i * ns + s) * Pt) * es,
             n);
}

void stl_step_decode(StlDtype dt, const void *zcache, int64_t B, int64_t P, int t, int64_t r, const void *D,
                     const void *bias, const int64_t *pos, void *y, void *ws) {
  if (dt == STL_F64)
    step_decode_d(dt, zcache, B, P, t, r, D, bias, pos, y, (double *)ws);
  else
    step_decode_f(dt, zcache, B, P, t, r, D, bias, pos, y, (float *)ws);
}
