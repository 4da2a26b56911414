/* The CPU tile primitives, one implementation per instruction-set level (primitives.inc compiled
 * by isa_baseline.c, isa_avx2.c, isa_avx512.c with different vector widths and target flags), and
 * the choice among them (dispatch.c). Every primitive works on a range of tile-rows (or parts) and
 * takes its scratch memory from the caller: nothing allocates, nothing can fail, so they run
 * safely on torch's worker threads.
 *
 * Compute type A: double for float64 storage, float otherwise. "Planes" are tensors laid out
 * (r, rows, cols) with rows of `cols` contiguous elements; `ps` is the distance between planes. */
#ifndef STL_CPU_PRIMITIVES_H
#define STL_CPU_PRIMITIVES_H

#include <stddef.h>
#include <stdint.h>

#include "../stl.h"

#define STL_KB 64 /* tiles per chunk: every buffer of a chunk stays in L1 */

/* encode: out[l, I, K] (+)= sum_j coef[l*t2 + j] * in[t*I+a, t*K+c]    (j = a*t + c)
 *   in: rows of a (M x N) matrix in storage dtype dt; rows >= M read as zero.
 *   coef: r x t2 in compute type (E, or D^T for encoding a gradient).
 *   extra (optional): storage-dtype planes (plane stride extra_ps, row length N/t) added to the result.
 *   out: compute-type planes, plane stride out_ps, row length N/t. */
typedef struct {
  StlDtype dt;
  const void *in;
  int64_t M, N;
  int t, r;
  const void *coef;
  const void *extra;
  int64_t extra_ps;
  void *out;
  int64_t out_ps;
} StlEncodeArgs;

/* decode: out[t*I+a, t*J+b] = sum_l coef[j*r + l] * in[l, I, J] (+ bias[t*J+b])     (j = a*t + b)
 *   in: compute-type planes (plane stride in_ps, row length P/t); coef: t2 x r compute type;
 *   bias: P values in compute type or NULL; out: rows of an (M x P) matrix in storage dtype dt,
 *   rows >= M never written. */
typedef struct {
  StlDtype dt;
  const void *in;
  int64_t in_ps;
  int64_t M, P;
  int t, r;
  const void *coef;
  const void *bias;
  void *out;
} StlDecodeArgs;

/* correlate: part q of nparts sums, over its tile-rows I (a fixed split of ceil(M/t)) and all K,
 *   partials[q, l, j] = sum_{I,K} a[l, I, K] * x[t*I+p, t*K+c]          (j = p*t + c)
 * in double; a: compute-type planes (plane stride a_ps, row length N/t); x: storage dtype. */
typedef struct {
  StlDtype dt;
  const void *a;
  int64_t a_ps;
  const void *x;
  int64_t M, N;
  int t, r;
  int64_t nparts;
  double *partials;
} StlCorrelateArgs;

/* colsum: acc[c] += sum_m g[m, c] for the columns of chunks [c0, c1) of STL_KB columns (double). */
typedef struct {
  StlDtype dt;
  const void *g;
  int64_t M, P;
  double *acc;
} StlColsumArgs;

typedef void (*StlEncodeFn)(const StlEncodeArgs *p, int64_t i0, int64_t i1, void *scratch);
typedef void (*StlDecodeFn)(const StlDecodeArgs *p, int64_t i0, int64_t i1, void *scratch);
typedef void (*StlCorrelateFn)(const StlCorrelateArgs *p, int64_t q0, int64_t q1, void *scratch);
typedef void (*StlColsumFn)(const StlColsumArgs *p, int64_t c0, int64_t c1, void *scratch);

/* One ISA level: the four primitives for each compute type ([0] float, [1] double). */
typedef struct {
  const char *name;
  int vector_bytes;
  StlEncodeFn encode[2];
  StlDecodeFn decode[2];
  StlCorrelateFn correlate[2];
  StlColsumFn colsum[2];
} StlCpuIsa;

/* Scratch bytes one worker needs for each primitive (same for every level: sized for the widest). */
size_t stl_cpu_encode_scratch(int t, int r, int64_t elem);
size_t stl_cpu_decode_scratch(int t, int r, int64_t elem);
size_t stl_cpu_correlate_scratch(int t, int r, int64_t elem);
size_t stl_cpu_colsum_scratch(int64_t elem);

extern const StlCpuIsa stl_cpu_isa_baseline;
#if defined(__x86_64__) || defined(_M_X64)
extern const StlCpuIsa stl_cpu_isa_avx2;
extern const StlCpuIsa stl_cpu_isa_avx512;
#endif

/* The level in use (chosen once at import: the best the CPU supports, or STL_TORCH_CPU_ISA if it
 * names a supported lower one) and the best the CPU supports. */
const StlCpuIsa *stl_cpu_isa(void);
const char *stl_cpu_isa_best(void);
/* Bytes of temporaries one block of the forward/backward may hold (backend.c). */
size_t stl_cpu_block_bytes(void);
/* Chooses the level and the block size; returns NULL or an error message (bad environment). */
const char *stl_cpu_isa_init(void);

#endif
