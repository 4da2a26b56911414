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
 *   out: compute-type planes, plane stride out_ps, row length N/t; bfloat16 planes when out_bf16
 *   (float compute only: the operand of a bfloat16 GEMM, rounded to nearest even). */
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
  int out_bf16;
  int stream; /* out is bigger than the caches: write it with non-temporal stores where aligned */
} StlEncodeArgs;

/* decode: out[t*I+a, t*J+b] = sum_l coef[j*r + l] * in[l, I, J] (+ bias[t*J+b])     (j = a*t + b)
 *   for J < P/t. in: compute-type planes (plane stride in_ps, rows of in_ld >= P/t elements),
 *   bfloat16 planes when in_bf16 (float compute only: a bfloat16 GEMM's result); coef:
 *   t2 x r compute type; bias: P values in compute type or NULL; out: rows of P elements, out_ld
 *   apart, storage dtype dt, rows >= M never written. */
typedef struct {
  StlDtype dt;
  const void *in;
  int64_t in_ps, in_ld;
  int64_t M, P;
  int t, r;
  const void *coef;
  const void *bias;
  void *out;
  int64_t out_ld;
  int in_bf16;
} StlDecodeArgs;

/* correlate: part q of nparts sums, over its tile-rows I (a fixed split of ceil(M/t)) and all K,
 *   partials[q, l, j] = sum_{I,K} a[l, I, K] * x[t*I+p, t*K+c]          (j = p*t + c)
 * in double; a: compute-type planes (plane stride a_ps, row length N/t), bfloat16 planes when
 * a_bf16 (float compute only); x: storage dtype. */
typedef struct {
  StlDtype dt;
  const void *a;
  int64_t a_ps;
  const void *x;
  int64_t M, N;
  int t, r;
  int64_t nparts;
  double *partials;
  int a_bf16;
} StlCorrelateArgs;

/* colsum: acc[c] += sum_m g[m, c] for the columns of chunks [c0, c1) of STL_KB columns (double). */
typedef struct {
  StlDtype dt;
  const void *g;
  int64_t M, P;
  double *acc;
} StlColsumArgs;

/* pack: Wt (r, K, P/t) in storage dtype dt -> packed panels in the compute type, item q = l*panels + p:
 *   out[q*K*KB + m*K*NR + k*NR + c] = Wt[l, k, p*KB + m*NR + c]   (zero past P/t)
 * with NR = 2 vectors of the level (the micro-kernel's width). Items [q0, q1). */
typedef struct {
  StlDtype dt;
  const void *wt;
  int64_t K, Pt, panels;
  void *out;
} StlPackArgs;

/* gemm: one panel of the r products, Z_l = Xe_l @ Wt_l restricted to STL_KB columns:
 *   z[(l*mp + i)*KB + c] = sum_{k < K} a[l*a_ps + i*K + k] * Wt[l, k, panel column c]
 * for l < r, c < nc rounded up to a vector or to the micro-kernel's width (later columns of z
 * are not written), i < mp (a multiple of STL_MR: rows past the real ones must be zero in a), from the
 * panel packed by pack (b: the panel's packed data for l = 0, b_ps between products). */
#define STL_MR 6
typedef struct {
  const void *a;
  int64_t a_ps, mp, K;
  const void *b;
  int64_t b_ps;
  int r;
  void *z;
  int64_t nc; /* the panel's real columns, 1..KB */
} StlGemmArgs;

typedef void (*StlEncodeFn)(const StlEncodeArgs *p, int64_t i0, int64_t i1, void *scratch);
typedef void (*StlDecodeFn)(const StlDecodeArgs *p, int64_t i0, int64_t i1, void *scratch);
typedef void (*StlCorrelateFn)(const StlCorrelateArgs *p, int64_t q0, int64_t q1, void *scratch);
typedef void (*StlColsumFn)(const StlColsumArgs *p, int64_t c0, int64_t c1, void *scratch);
typedef void (*StlGemmFn)(const StlGemmArgs *p);
typedef void (*StlPackFn)(const StlPackArgs *p, int64_t q0, int64_t q1);

/* One ISA level: its primitives for each compute type ([0] float, [1] double). */
typedef struct {
  const char *name;
  int vector_bytes;
  StlEncodeFn encode[2];
  StlDecodeFn decode[2];
  StlCorrelateFn correlate[2];
  StlColsumFn colsum[2];
  StlGemmFn gemm[2];
  StlPackFn pack[2];
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
extern const StlCpuIsa stl_cpu_isa_avx512bf16; /* avx512 + the bfloat16 encode/decode (isa_avx512bf16.c) */
extern const StlCpuIsa stl_cpu_isa_amx;        /* avx512bf16 + AMX tiles for the bfloat16 encode/decode (isa_amx.c) */
#endif

/* The level in use (chosen once at import: the best the CPU supports, or STL_TORCH_CPU_ISA if it
 * names a supported lower one) and the best the CPU supports. */
const StlCpuIsa *stl_cpu_isa(void);
const char *stl_cpu_isa_best(void);
/* Whether a bfloat16 call runs its GEMMs in bfloat16 through torch (oneDNN), with Xe and Z
 * rounded to bfloat16 as the GEMMs' operands and results, instead of in float32: chosen at import,
 * on by default where the CPU has AVX512-BF16, STL_TORCH_CPU_BF16_GEMM=0|1 forces it. */
int stl_cpu_bf16_gemm(void);
/* Bytes of temporaries one block of the forward/backward may hold (backend.c). */
size_t stl_cpu_block_bytes(void);
/* Chooses the level and the block size; returns NULL or an error message (bad environment). */
const char *stl_cpu_isa_init(void);

#endif
