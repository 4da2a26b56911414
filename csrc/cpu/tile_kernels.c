/* CPU tile primitives of the STL operator: public entry points (stl.h) that convert the small
 * encoder/decoder matrices to the compute type once, split the tile-rows over threads and run
 * the bodies in tile_body.inc. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../stl.h"
#include "convert.h"

#define STL_KB 64 /* tiles streamed per inner block: buffers stay in L1 */

/* Vector width comes from the build's -march (setup.py: native by default, STL_TORCH_MARCH
 * to override): measured 2x faster here than target_clones of the same loops. */

typedef struct {
  StlDtype dt;
  const void *in;     /* row-major (M x N) input */
  int64_t M, N;
  int t, r;
  const void *small;  /* encoder (r x t2) or decoder (t2 x r), compute type */
  const void *extra;  /* encode: added tensor; correlate: the (r, Mt, N/t) factor */
  const void *bias;   /* decode: bias in compute type, or NULL */
  void *out;
  double *partials;   /* correlate / colsum accumulators */
  int64_t nparts;
} StlTileArgs;

#define A float
#define SUF f
#include "tile_body.inc"
#undef A
#undef SUF
#define A double
#define SUF d
#include "tile_body.inc"
#undef A
#undef SUF

/* enough tile-rows per task to amortise the hand-off (~32K elements) */
static int64_t grain_rows(int t, int64_t width) {
  int64_t g = 32768 / ((int64_t)t * (width > 0 ? width : 1));
  return g > 0 ? g : 1;
}

static void *small_copy(StlDtype dt, StlSmallMat m, int rows, int cols) {
  if (dt == STL_F64) {
    double *d = (double *)malloc(sizeof(double) * (size_t)rows * cols);
    stl_load_small_d(dt, m, rows, cols, d);
    return d;
  }
  float *f = (float *)malloc(sizeof(float) * (size_t)rows * cols);
  stl_load_small_f(dt, m, rows, cols, f);
  return f;
}

void stl_cpu_encode_add(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r,
                        StlSmallMat enc, const void *extra, void *out) {
  StlTileArgs a = {dt, in, M, N, t, r, small_copy(dt, enc, r, t * t), extra, NULL, out, NULL, 0};
  stl_parallel_for((M + t - 1) / t, grain_rows(t, N), dt == STL_F64 ? encode_range_d : encode_range_f, &a);
  free((void *)a.small);
}

void stl_cpu_decode(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r,
                    StlSmallMat dec, const void *bias, void *out) {
  void *b = NULL;
  if (bias) {
    StlSmallMat bm = {bias, 0, 1};
    b = small_copy(dt, bm, 1, (int)P);
  }
  StlTileArgs a = {dt, in, M, P, t, r, small_copy(dt, dec, t * t, r), NULL, b, out, NULL, 0};
  stl_parallel_for((M + t - 1) / t, grain_rows(t, P), dt == STL_F64 ? decode_range_d : decode_range_f, &a);
  free((void *)a.small);
  free(b);
}

void stl_cpu_correlate(StlDtype dt, const void *fa, const void *x, int64_t M, int64_t N, int t,
                       int r, void *out, int64_t out_s0, int64_t out_s1) {
  const int t2 = t * t;
  const int64_t Mt = (M + t - 1) / t;
  const int64_t nparts = Mt < 64 ? (Mt > 0 ? Mt : 1) : 64; /* fixed split: deterministic sums */
  double *partials = (double *)calloc((size_t)nparts * r * t2, sizeof(double));
  StlTileArgs a = {dt, x, M, N, t, r, NULL, fa, NULL, NULL, partials, nparts};
  stl_parallel_for(nparts, 1, dt == STL_F64 ? correlate_range_d : correlate_range_f, &a);
  for (int l = 0; l < r; l++)
    for (int j = 0; j < t2; j++) {
      double s = 0;
      for (int64_t q = 0; q < nparts; q++) s += partials[(q * r + l) * t2 + j];
      if (dt == STL_F64) {
        stl_store_d(dt, out, l * out_s0 + j * out_s1, 1, &s);
      } else {
        float f = (float)s;
        stl_store_f(dt, out, l * out_s0 + j * out_s1, 1, &f);
      }
    }
  free(partials);
}

void stl_cpu_colsum(StlDtype dt, const void *g, int64_t M, int64_t P, void *out) {
  double *acc = (double *)calloc((size_t)(P > 0 ? P : 1), sizeof(double));
  StlTileArgs a = {dt, g, M, P, 1, 0, NULL, NULL, NULL, NULL, acc, 0};
  stl_parallel_for((P + STL_KB - 1) / STL_KB, 1, dt == STL_F64 ? colsum_range_d : colsum_range_f, &a);
  for (int64_t c = 0; c < P; c++) {
    if (dt == STL_F64) {
      stl_store_d(dt, out, c, 1, &acc[c]);
    } else {
      float f = (float)acc[c];
      stl_store_f(dt, out, c, 1, &f);
    }
  }
  free(acc);
}

/* The CPU backend table (stream unused). */
static void enc_cpu(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r, StlSmallMat enc,
                    const void *extra, void *out, void *stream) {
  (void)stream;
  stl_cpu_encode_add(dt, in, M, N, t, r, enc, extra, out);
}
static void dec_cpu(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r, StlSmallMat dec,
                    const void *bias, void *out, void *stream) {
  (void)stream;
  stl_cpu_decode(dt, in, M, P, t, r, dec, bias, out);
}
/* The CPU reductions keep their partials in heap memory of their own: no caller workspace. */
static size_t cor_ws_cpu(StlDtype dt, int64_t M, int64_t N, int t, int r) {
  (void)dt, (void)M, (void)N, (void)t, (void)r;
  return 0;
}
static void cor_cpu(StlDtype dt, const void *a, const void *x, int64_t M, int64_t N, int t, int r, void *out,
                    int64_t s0, int64_t s1, void *ws, size_t ws_bytes, void *stream) {
  (void)ws, (void)ws_bytes, (void)stream;
  stl_cpu_correlate(dt, a, x, M, N, t, r, out, s0, s1);
}
static size_t colsum_ws_cpu(StlDtype dt, int64_t M, int64_t P) {
  (void)dt, (void)M, (void)P;
  return 0;
}
static void colsum_cpu(StlDtype dt, const void *g, int64_t M, int64_t P, void *out, void *ws, size_t ws_bytes,
                       void *stream) {
  (void)ws, (void)ws_bytes, (void)stream;
  stl_cpu_colsum(dt, g, M, P, out);
}
const StlKernels stl_cpu_kernels = {"cpu", enc_cpu, dec_cpu, cor_ws_cpu, cor_cpu, colsum_ws_cpu, colsum_cpu, NULL, NULL, NULL};
