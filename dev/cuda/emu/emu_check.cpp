/* Checks the CUDA tile primitives (csrc/cuda/tile_kernels.cu, compiled for the emulator in emu.h)
 * against a float64 reference computed from the same stored inputs, for every storage dtype and
 * shapes that reach every kernel variant (fast t = 2/4/8 paths, runtime-t and generic fallbacks,
 * partial last tiles, grid-stride loops, several reduction blocks, misaligned bases).
 * Also the two fused forward candidates (dev/cuda/fused_v1_gemm_decode.cu, fused_v2_encode_gemm_decode.cu)
 * on partial tiles, odd M,
 * several blocks and product groups, with and without bias and Z.
 * Outputs are poisoned before each call and fenced by canaries, so an unwritten element or an
 * out-of-bounds write fails; reductions run twice and must agree bitwise.
 *
 *   dev/cuda/emu/run.sh        (builds and runs this; exit status 0 = all passed) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <random>
#include <vector>

#include "common.cuh"
extern "C" {
#include "launchers.h"
}
extern "C" int stl_cuda_fused_forward_supported(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r);
extern "C" void stl_cuda_fused_forward(StlDtype dt, const void *xe, const void *wt, StlSmallMat dec, const void *bias,
                                       void *y, void *z_out, int64_t M, int64_t N, int64_t P, int t, int r,
                                       void *stream);
extern "C" int stl_cuda_fused_encode_forward_supported(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r);
extern "C" void stl_cuda_fused_encode_forward(StlDtype dt, const void *x, StlSmallMat enc, const void *wt,
                                              StlSmallMat dec, const void *bias, void *y, void *z_out, int64_t M,
                                              int64_t N, int64_t P, int t, int r, void *stream);

static int failures = 0, checks = 0;

/* ---- host storage conversions ---- */
static double to_d(StlDtype dt, const void *p, int64_t i) {
  switch (dt) {
    case STL_F32: return ((const float *)p)[i];
    case STL_F64: return ((const double *)p)[i];
    case STL_BF16: return __bfloat162float(__ushort_as_bfloat16(((const unsigned short *)p)[i]));
    default: return __half2float(__ushort_as_half(((const unsigned short *)p)[i]));
  }
}
static void from_d(StlDtype dt, void *p, int64_t i, double v) {
  switch (dt) {
    case STL_F32: ((float *)p)[i] = (float)v; break;
    case STL_F64: ((double *)p)[i] = v; break;
    case STL_BF16: ((unsigned short *)p)[i] = __bfloat16_as_ushort(__float2bfloat16_rn((float)v)); break;
    default: ((unsigned short *)p)[i] = __half_as_ushort(__float2half_rn((float)v)); break;
  }
}
static int esize(StlDtype dt) { return dt == STL_F64 ? 8 : dt == STL_F32 ? 4 : 2; }
static const char *dname(StlDtype dt) {
  return dt == STL_F32 ? "f32" : dt == STL_F64 ? "f64" : dt == STL_BF16 ? "bf16" : "f16";
}

/* A device-like buffer of n elements at element offset `skew` from a 64-byte aligned base.
 * Normal build: canary bytes on both sides catch out-of-bounds writes. AddressSanitizer build
 * (run.sh --asan): an allocation of exactly the buffer's size, so out-of-bounds reads fail too. */
#if defined(__SANITIZE_ADDRESS__)
#define EXACT_ALLOC 1
#else
#define EXACT_ALLOC 0
#endif
struct Buf {
  StlDtype dt;
  int64_t n;
  int skew;
  unsigned char *mem;
  size_t bytes;
  static const int GUARD = 256;
  Buf(StlDtype d, int64_t count, int sk = 0) : dt(d), n(count), skew(sk) {
    const size_t data = (size_t)(n + sk) * esize(d);
    bytes = EXACT_ALLOC ? data : data + 2 * GUARD;
    void *m = NULL;
    if (posix_memalign(&m, 64, bytes ? bytes : 1)) abort();
    mem = (unsigned char *)m;
    memset(mem, 0xA5, bytes);
  }
  ~Buf() { free(mem); }
  Buf(const Buf &) = delete;
  Buf &operator=(const Buf &) = delete;
  unsigned char *base() { return mem + (EXACT_ALLOC ? 0 : GUARD); }
  void *p() { return base() + (size_t)skew * esize(dt); }
  double get(int64_t i) { return to_d(dt, p(), i); }
  void set(int64_t i, double v) { from_d(dt, p(), i, v); }
  void poison() { memset(p(), 0xff, (size_t)n * esize(dt)); } /* NaN in every float format */
  bool canaries_ok() {
    unsigned char *lo = (unsigned char *)p(), *hi = lo + (size_t)n * esize(dt);
    for (unsigned char *c = mem; c < lo; c++)
      if (*c != 0xA5) return false;
    for (unsigned char *c = hi; c < mem + bytes; c++)
      if (*c != 0xA5) return false;
    return true;
  }
};

static std::mt19937_64 rng(1234);
static void fill(Buf &b, double scale = 1) {
  std::normal_distribution<double> nd(0, scale);
  for (int64_t i = 0; i < b.n; i++) b.set(i, nd(rng));
}

static double tol(StlDtype dt) { return dt == STL_F64 ? 1e-12 : dt == STL_F32 ? 1e-5 : dt == STL_F16 ? 3e-3 : 2e-2; }

/* compare out (n elements, element i at index idx(i)) with ref; NaN (unwritten) fails */
static void expect(const char *what, Buf &out, const std::vector<double> &ref, const char *ctx,
                   const std::vector<int64_t> *idx = NULL) {
  checks++;
  double num = 0, den = 0;
  int64_t nan_at = -1;
  for (size_t i = 0; i < ref.size(); i++) {
    const double v = out.get(idx ? (*idx)[i] : (int64_t)i);
    if (v != v && nan_at < 0) nan_at = (int64_t)i;
    num += (v - ref[i]) * (v - ref[i]);
    den += ref[i] * ref[i];
  }
  const double err = sqrt(num) / (den > 0 ? sqrt(den) : 1);
  const bool ok = nan_at < 0 && err < tol(out.dt) && out.canaries_ok();
  if (!ok) {
    failures++;
    printf("FAIL %-22s %s: rel err %.3g (tol %.1g)%s%s\n", what, ctx, err, tol(out.dt),
           nan_at >= 0 ? ", unwritten/NaN element" : "", out.canaries_ok() ? "" : ", CANARY OVERWRITTEN");
    if (nan_at >= 0) printf("     first NaN at %lld\n", (long long)nan_at);
  }
}

static void check_shape(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r, int skew) {
  char ctx[160];
  snprintf(ctx, sizeof ctx, "[%s M=%lld N=%lld P=%lld t=%d r=%d skew=%d]", dname(dt), (long long)M, (long long)N,
           (long long)P, t, r, skew);
  const int t2 = t * t;
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, Pt = P / t;
  Buf x(dt, M * N, skew), E(dt, (int64_t)r * t2, skew), D(dt, (int64_t)t2 * r, skew), g(dt, M * P, skew);
  Buf extra(dt, r * Mt * Pt, skew), z(dt, r * Mt * Pt, skew), dxe(dt, r * Mt * Nt, skew), bias(dt, P, skew);
  fill(x), fill(E, 1.0 / t), fill(D, 1.0 / sqrt((double)r)), fill(g), fill(extra), fill(z), fill(dxe), fill(bias);
  auto X = [&](Buf &b, int64_t W, int64_t row, int64_t col) { return row < M ? b.get(row * W + col) : 0.0; };

  /* encode x with E -> (r, Mt, Nt) */
  {
    Buf out(dt, r * Mt * Nt);
    out.poison();
    StlSmallMat enc = {E.p(), t2, 1};
    stl_cuda_encode_add(dt, x.p(), M, N, t, r, enc, NULL, out.p(), NULL);
    std::vector<double> ref(out.n);
    for (int l = 0; l < r; l++)
      for (int64_t I = 0; I < Mt; I++)
        for (int64_t K = 0; K < Nt; K++) {
          double s = 0;
          for (int a = 0; a < t; a++)
            for (int c = 0; c < t; c++) s += E.get(l * t2 + a * t + c) * X(x, N, t * I + a, t * K + c);
          ref[(l * Mt + I) * Nt + K] = s;
        }
    expect("encode(x, E)", out, ref, ctx);
  }
  /* encode g with D^T (+ extra) -> (r, Mt, Pt): the backward's Gz */
  {
    Buf out(dt, r * Mt * Pt);
    out.poison();
    StlSmallMat dT = {D.p(), 1, r};
    stl_cuda_encode_add(dt, g.p(), M, P, t, r, dT, extra.p(), out.p(), NULL);
    std::vector<double> ref(out.n);
    for (int l = 0; l < r; l++)
      for (int64_t I = 0; I < Mt; I++)
        for (int64_t J = 0; J < Pt; J++) {
          double s = extra.get((l * Mt + I) * Pt + J);
          for (int a = 0; a < t; a++)
            for (int b = 0; b < t; b++) s += D.get((a * t + b) * r + l) * X(g, P, t * I + a, t * J + b);
          ref[(l * Mt + I) * Pt + J] = s;
        }
    expect("encode_add(g, D^T, gz)", out, ref, ctx);
  }
  /* decode z with D + bias -> (M, P) */
  {
    Buf out(dt, M * P);
    out.poison();
    StlSmallMat dec = {D.p(), r, 1};
    stl_cuda_decode(dt, z.p(), M, P, t, r, dec, bias.p(), out.p(), NULL);
    std::vector<double> ref(out.n);
    for (int64_t row = 0; row < M; row++)
      for (int64_t col = 0; col < P; col++) {
        const int64_t I = row / t, J = col / t;
        const int j = (int)(row % t) * t + (int)(col % t);
        double s = bias.get(col);
        for (int l = 0; l < r; l++) s += D.get(j * r + l) * z.get((l * Mt + I) * Pt + J);
        ref[row * P + col] = s;
      }
    expect("decode(z, D, bias)", out, ref, ctx);
  }
  /* decode dxe with E^T, no bias -> (M, N): the backward's dX */
  {
    Buf out(dt, M * N);
    out.poison();
    StlSmallMat eT = {E.p(), 1, t2};
    stl_cuda_decode(dt, dxe.p(), M, N, t, r, eT, NULL, out.p(), NULL);
    std::vector<double> ref(out.n);
    for (int64_t row = 0; row < M; row++)
      for (int64_t col = 0; col < N; col++) {
        const int64_t I = row / t, K = col / t;
        const int j = (int)(row % t) * t + (int)(col % t);
        double s = 0;
        for (int l = 0; l < r; l++) s += E.get(l * t2 + j) * dxe.get((l * Mt + I) * Nt + K);
        ref[row * N + col] = s;
      }
    expect("decode(dxe, E^T)", out, ref, ctx);
  }
  /* correlate: dD[j,l] (strides 1, r) from (z, g) and dE[l,j] (strides t2, 1) from (dxe, x) */
  for (int which = 0; which < 2; which++) {
    Buf &a = which ? dxe : z, &xx = which ? x : g;
    const int64_t W = which ? N : P, Wt = W / t;
    const int64_t s0 = which ? t2 : 1, s1 = which ? 1 : r;
    Buf out(dt, (int64_t)r * t2), again(dt, (int64_t)r * t2);
    out.poison();
    again.poison();
    { /* through the table, as ops.c calls it: a workspace of exactly the advertised size, poisoned
         (every partial must be written before it is read), fenced by canaries */
      const size_t wsb = stl_cuda_correlate_workspace_bytes(dt, M, W, t, r);
      Buf ws(STL_F64, (int64_t)(wsb / 8));
      ws.poison();
      stl_cuda_correlate_ws(dt, a.p(), xx.p(), M, W, t, r, out.p(), s0, s1, ws.p(), wsb, NULL);
      if (!ws.canaries_ok()) failures++, printf("FAIL correlate workspace overrun %s\n", ctx);
      /* the second run through the extern "C" entry point, on the workspace the first one left */
      stl_cuda_correlate_ws(dt, a.p(), xx.p(), M, W, t, r, again.p(), s0, s1, ws.p(), wsb, NULL);
    }
    std::vector<double> ref((size_t)r * t2);
    std::vector<int64_t> idx((size_t)r * t2);
    for (int l = 0; l < r; l++)
      for (int j = 0; j < t2; j++) {
        double s = 0;
        for (int64_t I = 0; I < Mt; I++)
          for (int64_t K = 0; K < Wt; K++) s += a.get((l * Mt + I) * Wt + K) * X(xx, W, t * I + j / t, t * K + j % t);
        ref[l * t2 + j] = s;
        idx[l * t2 + j] = l * s0 + j * s1;
      }
    expect(which ? "correlate -> dE" : "correlate -> dD", out, ref, ctx, &idx);
    checks++;
    if (memcmp(out.p(), again.p(), (size_t)out.n * esize(dt))) {
      failures++;
      printf("FAIL correlate not bitwise reproducible %s\n", ctx);
    }
  }
  /* colsum g -> (P,) */
  {
    Buf out(dt, P);
    out.poison();
    const size_t wsb = stl_cuda_colsum_workspace_bytes(dt, M, P);
    Buf ws(STL_F64, (int64_t)(wsb / 8));
    ws.poison();
    stl_cuda_colsum_ws(dt, g.p(), M, P, out.p(), ws.p(), wsb, NULL);
    std::vector<double> ref(P, 0.0);
    for (int64_t row = 0; row < M; row++)
      for (int64_t c = 0; c < P; c++) ref[c] += g.get(row * P + c);
    expect("colsum", out, ref, ctx);
    if (!ws.canaries_ok()) failures++, printf("FAIL colsum workspace overrun %s\n", ctx);
  }
}

/* Both fused forwards from Xe onward, against float64: Z_l = Xe_l @ Wt_l, y = decode(Z, D) + bias
 * (bias NULL: none), y and (z not NULL) Z compared as "<what> y" / "<what> z". xe (r, Mt, Nt) in
 * float64: the stored Xe for fused_forward, encoded in float64 for fused_encode_forward. */
static void expect_fused(const char *what, const std::vector<double> &xe, Buf &wt, Buf &D, Buf *bias, Buf &y, Buf *z,
                         int64_t M, int64_t N, int64_t P, int t, int r, const char *ctx) {
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, Pt = P / t;
  std::vector<double> zr((size_t)(r * Mt * Pt)), yr((size_t)(M * P));
  for (int l = 0; l < r; l++)
    for (int64_t I = 0; I < Mt; I++)
      for (int64_t J = 0; J < Pt; J++) {
        double s = 0;
        for (int64_t K = 0; K < Nt; K++) s += xe[(l * Mt + I) * Nt + K] * wt.get((l * Nt + K) * Pt + J);
        zr[(l * Mt + I) * Pt + J] = s;
      }
  for (int64_t row = 0; row < M; row++)
    for (int64_t col = 0; col < P; col++) {
      const int64_t I = row / t, J = col / t;
      const int j = (int)(row % t) * t + (int)(col % t);
      double s = bias ? bias->get(col) : 0;
      for (int l = 0; l < r; l++) s += D.get(j * r + l) * zr[(l * Mt + I) * Pt + J];
      yr[row * P + col] = s;
    }
  char label[64];
  snprintf(label, sizeof label, "%s y", what);
  expect(label, y, yr, ctx);
  if (z) {
    snprintf(label, sizeof label, "%s z", what);
    expect(label, *z, zr, ctx);
  }
}

/* fused_v1_gemm_decode.cu: y = decode(xe @ wt, D) + bias, and Z, against float64 from the stored inputs */
static void check_fused(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r, bool with_bias, bool want_z) {
  char ctx[160];
  snprintf(ctx, sizeof ctx, "[%s M=%lld N=%lld P=%lld t=%d r=%d bias=%d z=%d]", dname(dt), (long long)M,
           (long long)N, (long long)P, t, r, with_bias, want_z);
  if (!stl_cuda_fused_forward_supported(dt, M, N, P, t, r)) {
    failures++;
    printf("FAIL fused forward unsupported %s\n", ctx);
    return;
  }
  const int t2 = t * t;
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, Pt = P / t;
  Buf xe(dt, r * Mt * Nt), wt(dt, r * Nt * Pt), D(dt, (int64_t)t2 * r), bias(dt, P), y(dt, M * P), z(dt, r * Mt * Pt);
  fill(xe), fill(wt, 1.0 / sqrt((double)Nt)), fill(D, 1.0 / sqrt((double)r)), fill(bias);
  y.poison(), z.poison();
  StlSmallMat dec = {D.p(), r, 1};
  stl_cuda_fused_forward(dt, xe.p(), wt.p(), dec, with_bias ? bias.p() : NULL, y.p(), want_z ? z.p() : NULL, M, N, P,
                         t, r, NULL);
  std::vector<double> xd((size_t)xe.n);
  for (int64_t i = 0; i < xe.n; i++) xd[i] = xe.get(i);
  expect_fused("fused forward", xd, wt, D, with_bias ? &bias : NULL, y, want_z ? &z : NULL, M, N, P, t, r, ctx);
}

/* fused_v2_encode_gemm_decode.cu: y = decode(encode(x, E) @ wt, D) + bias, and Z, against float64 from the
 * stored inputs (the kernel rounds Xe to the storage dtype, like the unfused path: within tol) */
static void check_fused_encode(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r, bool with_bias, bool want_z,
                               int skew) {
  char ctx[160];
  snprintf(ctx, sizeof ctx, "[%s M=%lld N=%lld P=%lld t=%d r=%d bias=%d z=%d skew=%d]", dname(dt), (long long)M,
           (long long)N, (long long)P, t, r, with_bias, want_z, skew);
  if (!stl_cuda_fused_encode_forward_supported(dt, M, N, P, t, r)) {
    failures++;
    printf("FAIL fused encode forward unsupported %s\n", ctx);
    return;
  }
  const int t2 = t * t;
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, Pt = P / t;
  Buf x(dt, M * N, skew), E(dt, (int64_t)r * t2, skew), wt(dt, r * Nt * Pt, skew), D(dt, (int64_t)t2 * r, skew),
      bias(dt, P, skew), y(dt, M * P, skew), z(dt, r * Mt * Pt, skew);
  fill(x), fill(E, 1.0 / t), fill(wt, 1.0 / sqrt((double)Nt)), fill(D, 1.0 / sqrt((double)r)), fill(bias);
  y.poison(), z.poison();
  StlSmallMat enc = {E.p(), t2, 1}, dec = {D.p(), r, 1};
  stl_cuda_fused_encode_forward(dt, x.p(), enc, wt.p(), dec, with_bias ? bias.p() : NULL, y.p(),
                                want_z ? z.p() : NULL, M, N, P, t, r, NULL);
  std::vector<double> xe((size_t)(r * Mt * Nt));
  for (int l = 0; l < r; l++)
    for (int64_t I = 0; I < Mt; I++)
      for (int64_t K = 0; K < Nt; K++) {
        double s = 0;
        for (int a = 0; a < t && t * I + a < M; a++)
          for (int c = 0; c < t; c++) s += E.get(l * t2 + a * t + c) * x.get((t * I + a) * N + t * K + c);
        xe[(l * Mt + I) * Nt + K] = s;
      }
  expect_fused("fused encode fwd", xe, wt, D, with_bias ? &bias : NULL, y, want_z ? &z : NULL, M, N, P, t, r, ctx);
  if (!want_z && (!z.canaries_ok() || z.get(0) == z.get(0)))
    failures++, printf("FAIL fused encode wrote z unasked %s\n", ctx);
}

int main(int argc, char **argv) {
  const bool quick = argc > 1 && !strcmp(argv[1], "--quick");
  struct S {
    int64_t M, N, P;
    int t, r;
  } shapes[] = {
      {37, 64, 48, 4, 24},    /* t=4 fast paths, partial last tile */
      {5, 6, 10, 2, 7},       /* t=2, Strassen rank */
      {3, 8, 4, 4, 16},       /* fewer rows than a tile */
      {9, 12, 20, 2, 3},      /* r not a multiple of 4 */
      {7, 5, 3, 1, 2},        /* t=1: generic encode/decode, runtime-t correlate */
      {11, 9, 6, 3, 5},       /* t=3: generic encode/decode, runtime-t correlate, padded t^2 */
      {17, 24, 16, 8, 33},    /* t=8 fast encode/decode, runtime-t staged correlate */
      {20, 16, 16, 8, 80},    /* t=8, r=80: correlate too wide for the staged kernel (generic) */
      {10, 16, 16, 8, 200},   /* E/D beyond 48 KB of shared memory in f64: generic encode/decode */
      {33, 32, 48, 16, 4},    /* t=16 */
      {130, 96, 200, 4, 64},  /* r=64: smaller staged chunks */
      {41, 16, 12, 4, 49},    /* Strassen^2 rank */
      {2002, 64, 36, 4, 24},  /* many tiles: grid-stride loops, several reduction blocks */
  };
  const StlDtype dts[] = {STL_F32, STL_F64, STL_BF16, STL_F16};
  const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
  /* --quick (CI): every tile size the launchers dispatch: t = 4, 2, 8 fast paths, 1 and 3 generic, 16 */
  const bool in_quick[] = {1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0};
  for (int s = 0; s < nshapes; s++) {
    if (quick && !in_quick[s]) continue;
    for (int d = 0; d < 4; d++)
      for (int skew = 0; skew < 2; skew++) { /* skew 1: bases not 16-byte aligned (scalar loads) */
        if (skew && shapes[s].M > 500) continue;
        check_shape(dts[d], shapes[s].M, shapes[s].N, shapes[s].P, shapes[s].t, shapes[s].r, skew);
      }
    printf("shape %d/%d done (%d checks, %d failures)\n", s + 1, nshapes, checks, failures);
    fflush(stdout);
  }
  struct F {
    int64_t M, N, P;
    int t, r;
  } fshapes[] = {
      {37, 64, 48, 4, 24},   /* partial tiles in I, J and K (Nt=16 < KC) */
      {5, 6, 10, 2, 7},      /* t=2, tiny */
      {300, 136, 72, 4, 49}, /* several blocks in I and J, two K chunks */
      {9, 4, 4, 2, 3},
      {131, 260, 132, 4, 5}, /* Nt=65: three K chunks, the last nearly empty */
  };
  for (int s = 0; s < (int)(sizeof fshapes / sizeof fshapes[0]); s++) {
    if (quick && s >= 2) break;
    for (StlDtype dt : {STL_BF16, STL_F16})
      for (int v = 0; v < 2; v++)
        check_fused(dt, fshapes[s].M, fshapes[s].N, fshapes[s].P, fshapes[s].t, fshapes[s].r, v == 0, v == 1);
    printf("fused shape %d done (%d checks, %d failures)\n", s + 1, checks, failures);
    fflush(stdout);
  }
  struct FE {
    int64_t M, N, P;
    int t, r, skew;
  } eshapes[] = {
      {37, 64, 48, 4, 24, 0},    /* odd M, one K chunk, r = 16 + 8 (a partial group), Pt % 8 != 0 */
      {5, 6, 10, 2, 7, 0},       /* t=2, tiny, N % 8 != 0: scalar x loads */
      {67, 64, 512, 4, 24, 0},   /* two blocks in I and J, 16-byte x and Wt loads */
      {9, 16, 16, 2, 17, 1},     /* t=2, r = 16 + 1, misaligned bases */
      {300, 136, 72, 4, 49, 0},  /* r=49: four groups; three K chunks, the last partial */
      {131, 260, 1032, 4, 5, 0}, /* five column blocks, the last partial; Nt=65: a 1-tile last chunk */
      {66, 32, 264, 2, 24, 1},   /* t=2 with several blocks, misaligned */
  };
  for (int s = 0; s < (int)(sizeof eshapes / sizeof eshapes[0]); s++) {
    if (quick && s >= 3) break;
    const FE &e = eshapes[s];
    for (StlDtype dt : {STL_BF16, STL_F16})
      for (int v = 0; v < 2; v++) check_fused_encode(dt, e.M, e.N, e.P, e.t, e.r, v == 0, v == 1, e.skew);
    printf("fused encode shape %d done (%d checks, %d failures)\n", s + 1, checks, failures);
    fflush(stdout);
  }
  printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "OK", checks, failures);
  return failures ? 1 : 0;
}
