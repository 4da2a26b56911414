/* One causal decode step with the product cache: the CPU kernels (csrc/cpu/decode_step.c) that
 * csrc/decode_step.c composes with torch's bmm. Sizes as in stl.h: x (B, N) the new token of each
 * sequence, rows (B, t-1, N) the last t-1 inputs of each sequence, E (r, t*t), D (t*t, r),
 * zcache (B, r, P/t), pos (B,) each sequence's row in its tile. */
#ifndef STL_DECODE_STEP_H
#define STL_DECODE_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "stl.h"

/* The first product of level k: ceil(k*r/t) (levels floor(l*t/r), stl_torch.init.causal_levels). */
int64_t stl_step_level_begin(int64_t k, int t, int64_t r);
/* Scratch bytes the encode and decode need (one buffer serves both). */
size_t stl_step_ws_bytes(StlDtype dt, int64_t N, int64_t P, int t, int64_t r);
/* xe (rk, ns, N/t) = the level-k products' encodings of the sequences seq[0..ns) (all at row k). */
void stl_step_encode(StlDtype dt, const void *x, const void *rows, int64_t N, int t, int64_t r, const void *E,
                     int64_t k, const int64_t *seq, int64_t ns, void *xe, void *ws);
/* zcache[seq[s], l0 + i, :] = zk[i, s, :] */
void stl_step_scatter(StlDtype dt, const void *zk, int64_t rk, int64_t l0, const int64_t *seq, int64_t ns,
                      int64_t r, int64_t Pt, void *zcache);
/* y (B, P): row pos[b] of each sequence's output tile from the cached Z of products of level <= pos[b]. */
void stl_step_decode(StlDtype dt, const void *zcache, int64_t B, int64_t P, int t, int64_t r, const void *D,
                     const void *bias, const int64_t *pos, void *y, void *ws);

/* Registers torch.ops.stl_torch.stl_decode_step (a fragment of the stl_torch library); module.c
 * calls it after stl_register_ops. NULL on success, else a message. */
const char *stl_register_decode_step(void);

#endif
