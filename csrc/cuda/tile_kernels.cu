/* CUDA tile primitives of the STL operator (launchers.h; composed by backend.c), the semantics of
 * csrc/stl.h's primitives:
 *   encode_add : out[l,I,K]        = sum_j enc[l,j] * in[t*I+a, t*K+c] (+ extra[l,I,K])   j = a*t+c
 *   decode     : out[t*I+a, t*J+b] = sum_l dec[j,l] * in[l,I,J] (+ bias[t*J+b])          j = a*t+b
 *   correlate  : acc[l,j]          = sum_{I,K} a[l,I,K] * x[t*I+p, t*K+q]                  j = p*t+q
 *   colsum     : out[p]            = sum_m g[m,p]
 * Row-major contiguous device pointers; rows >= M of a partial last tile read as zero and are
 * never written. bf16/fp16/fp32 compute in fp32, fp64 in fp64. Everything runs on the caller's
 * stream, nothing synchronises or allocates (the reductions' scratch is the caller's), and the
 * reductions are deterministic (fixed split of the work, fixed-order sums in double, no atomics).
 *
 * Layout of the work. A tile (I,K) is t rows x t columns of the (M x N) input; the encoded
 * tensors (r, Mt, Nt) are indexed by the linear tile number `tile = I*Nt + K`, so consecutive
 * threads taking consecutive tiles read t-element segments that sit side by side in each input
 * row (coalesced, 16-byte words where aligned) and write consecutive elements of each encoded
 * plane l (coalesced). The small matrix E or D sits in shared memory in the compute type.
 *   - encode/decode, t in {2,4,8}: one thread per tile, the t*t tile values (or outputs) in
 *     registers, a loop over l with warp-uniform (broadcast) shared-memory reads of E/D.
 *   - other t (1, 3, 5..7, 9..16) or E/D too large for shared memory: a plain one-thread-per-
 *     output kernel (correct, not tuned).
 *   - correlate: a split-K GEMM (r x T) @ (T x t^2) over T tiles. Pass 1: block b owns a fixed
 *     range of tiles, stages chunks of KB tiles of `a` and `x` in shared memory, and threads
 *     accumulate 4x4 register blocks of the (r x t^2) result (fp32, flushed to fp64 per chunk);
 *     a fixed-order in-block sum writes one fp64 partial per block. Pass 2 sums the partials in
 *     block order and stores the result (strided) in the storage dtype.
 *   - colsum: the same two passes over (row chunk, 32-column strip) blocks.
 * The number of blocks of a reduction depends only on the problem size, so results are
 * bitwise reproducible run to run (and across GPUs). */
#include "common.cuh"
extern "C" {
#include "launchers.h"
}

#define THREADS 256
#define SMEM_LIMIT (48 * 1024) /* default dynamic shared memory limit: no opt-in needed */

STL_DYNAMIC_SMEM(smem_raw);

/* StlSmallMat as a kernel argument (M[i,j] = base[i*s0 + j*s1], storage dtype) */
struct Small {
  const void *base;
  int64_t s0, s1;
};

/* stage a small matrix into shared memory in the compute type:
 * dst[i * cols + j] = m[trans ? (j, i) : (i, j)] for i < rows, j < cols */
template <typename D>
__device__ __forceinline__ void stage_small(Small m, int rows, int cols, bool trans, typename D::A *dst) {
  const typename D::S *base = (const typename D::S *)m.base;
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int a = i / cols, b = i - a * cols;
    const int64_t off = trans ? b * m.s0 + a * m.s1 : a * m.s0 + b * m.s1;
    dst[i] = D::load(base[off]);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* encode                                                                                      */

template <typename D, int T>
__global__ void __launch_bounds__(THREADS)
encode_tiles(const typename D::S *__restrict__ in, int64_t M, int64_t N, int r, Small enc,
             const typename D::S *__restrict__ extra, typename D::S *__restrict__ out, bool vec) {
  typedef typename D::A A;
  const int t2 = T * T;
  A *es = (A *)smem_raw; /* es[l*t2 + j] = E[l, j] */
  stage_small<D>(enc, r, t2, false, es);
  __syncthreads();
  const int64_t Nt = N / T, ntiles = ((M + T - 1) / T) * Nt;
  for (int64_t tile = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; tile < ntiles;
       tile += (int64_t)gridDim.x * blockDim.x) {
    const int64_t I = tile / Nt, K = tile - I * Nt;
    A v[T * T]; /* v[a*T + c] = in[T*I + a, T*K + c] */
#pragma unroll
    for (int a = 0; a < T; a++) {
      const int64_t row = (int64_t)T * I + a;
      if (row < M) {
        load_seg<D, T>(in + row * N + (int64_t)T * K, v + a * T, vec);
      } else {
#pragma unroll
        for (int c = 0; c < T; c++) v[a * T + c] = 0;
      }
    }
    for (int l = 0; l < r; l++) {
      A acc = extra ? D::load(extra[l * ntiles + tile]) : (A)0;
      const A *e = es + l * t2;
#pragma unroll
      for (int j = 0; j < t2; j++) acc += e[j] * v[j];
      out[l * ntiles + tile] = D::store(acc);
    }
  }
}

/* any t: one thread per encoded element, E read through the cache */
template <typename D>
__global__ void __launch_bounds__(THREADS)
encode_generic(const typename D::S *__restrict__ in, int64_t M, int64_t N, int t, int r, Small enc,
               const typename D::S *__restrict__ extra, typename D::S *__restrict__ out) {
  typedef typename D::A A;
  const typename D::S *e = (const typename D::S *)enc.base;
  const int64_t Nt = N / t, ntiles = ((M + t - 1) / t) * Nt, n = ntiles * r;
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t l = o / ntiles, tile = o - l * ntiles, I = tile / Nt, K = tile - I * Nt;
    A acc = extra ? D::load(extra[o]) : (A)0;
    for (int a = 0; a < t; a++) {
      const int64_t row = (int64_t)t * I + a;
      if (row >= M) break;
      for (int c = 0; c < t; c++)
        acc += D::load(e[l * enc.s0 + (int64_t)(a * t + c) * enc.s1]) * D::load(in[row * N + t * K + c]);
    }
    out[o] = D::store(acc);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* decode                                                                                      */

template <typename D, int T>
__global__ void __launch_bounds__(THREADS)
decode_tiles(const typename D::S *__restrict__ in, int64_t M, int64_t P, int r, Small dec,
             const typename D::S *__restrict__ bias, typename D::S *__restrict__ out, bool vec) {
  typedef typename D::A A;
  const int t2 = T * T;
  A *ds = (A *)smem_raw; /* ds[l*t2 + j] = D[j, l] */
  stage_small<D>(dec, r, t2, true, ds);
  __syncthreads();
  const int64_t Pt = P / T, ntiles = ((M + T - 1) / T) * Pt;
  for (int64_t tile = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; tile < ntiles;
       tile += (int64_t)gridDim.x * blockDim.x) {
    const int64_t I = tile / Pt, J = tile - I * Pt;
    A acc[T * T]; /* acc[a*T + b] = Y[T*I + a, T*J + b] */
#pragma unroll
    for (int j = 0; j < t2; j++) acc[j] = 0;
#pragma unroll 4
    for (int l = 0; l < r; l++) {
      const A z = D::load(in[l * ntiles + tile]);
      const A *d = ds + l * t2;
#pragma unroll
      for (int j = 0; j < t2; j++) acc[j] += d[j] * z;
    }
    if (bias) {
      A b[T];
      load_seg<D, T>(bias + (int64_t)T * J, b, vec);
#pragma unroll
      for (int a = 0; a < T; a++)
#pragma unroll
        for (int c = 0; c < T; c++) acc[a * T + c] += b[c];
    }
#pragma unroll
    for (int a = 0; a < T; a++) {
      const int64_t row = (int64_t)T * I + a;
      if (row < M) store_seg<D, T>(out + row * P + (int64_t)T * J, acc + a * T, vec);
    }
  }
}

/* any t: one thread per output element (coalesced writes), D read through the cache */
template <typename D>
__global__ void __launch_bounds__(THREADS)
decode_generic(const typename D::S *__restrict__ in, int64_t M, int64_t P, int t, int r, Small dec,
               const typename D::S *__restrict__ bias, typename D::S *__restrict__ out) {
  typedef typename D::A A;
  const typename D::S *d = (const typename D::S *)dec.base;
  const int64_t Pt = P / t, ntiles = ((M + t - 1) / t) * Pt, n = M * P;
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = o / P, col = o - row * P, I = row / t, J = col / t;
    const int j = (int)(row - I * t) * t + (int)(col - J * t);
    const typename D::S *z = in + I * Pt + J;
    A acc = 0;
    for (int l = 0; l < r; l++) acc += D::load(d[j * dec.s0 + l * dec.s1]) * D::load(z[l * ntiles]);
    if (bias) acc += D::load(bias[col]);
    out[o] = D::store(acc);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* correlate: pass 1 (per-block fp64 partials)                                                 */

/* Shape of the staged kernel: r and t^2 padded to multiples of 4, 4x4 register micro-tiles of
 * the (r x t^2) result, and the k-split (how many threads share one micro-tile). */
struct CorShape {
  int R4, J4, nmt, ksplit;
};
static CorShape cor_shape(int t, int r) {
  CorShape s;
  s.R4 = (r + 3) & ~3;
  s.J4 = (t * t + 3) & ~3;
  s.nmt = (s.R4 / 4) * (s.J4 / 4);
  s.ksplit = s.nmt <= THREADS ? THREADS / s.nmt : 0;
  return s;
}
/* bytes of shared memory: the per-thread fp64 accumulators, then one staged chunk of KB tiles */
#define COR_RED_BYTES (16 * THREADS * sizeof(double))
static size_t cor_smem(CorShape s, int KB, size_t asz) {
  return COR_RED_BYTES + (size_t)KB * (s.R4 + s.J4) * asz + (size_t)KB * 2 * sizeof(int64_t);
}

/* T > 0: tile size known at compile time (cheap index arithmetic); T == 0: runtime t.
 * KB = 1 << kb_shift tiles per staged chunk. */
template <typename D, int T>
__global__ void __launch_bounds__(THREADS)
correlate_staged(const typename D::S *__restrict__ fa, const typename D::S *__restrict__ x, int64_t M,
                 int64_t N, int t_rt, int r, int kb_shift, int G, double *__restrict__ part) {
  typedef typename D::A A;
  const int t = T > 0 ? T : t_rt, t2 = t * t, KB = 1 << kb_shift;
  const int R4 = (r + 3) & ~3, J4 = (t2 + 3) & ~3, nj = J4 / 4, nmt = (R4 / 4) * nj;
  const int ksplit = THREADS / nmt;
  const int64_t Nt = N / t, ntiles = ((M + t - 1) / t) * Nt;
  double *red = (double *)smem_raw;          /* red[e*THREADS + tid]: thread tid's fp64 sums */
  A *As = (A *)(smem_raw + COR_RED_BYTES);   /* As[k*R4 + l] = a[l, tile k0+k] */
  A *Xs = As + KB * R4;                      /* Xs[k*J4 + j] = x[tile k0+k][j] */
  int64_t *xoff = (int64_t *)(Xs + KB * J4); /* element offset of the tile's top-left corner */
  int64_t *xrow = xoff + KB;                 /* its first row t*I (rows >= M read as zero) */
  const int tid = threadIdx.x, mt = tid % nmt, ks = tid / nmt;
  const bool active = ks < ksplit;
  const int l0 = (mt / nj) * 4, j0 = (mt % nj) * 4;

  for (int e = 0; e < 16; e++) red[e * THREADS + tid] = 0;
  /* padding columns j in [t2, J4) of Xs are never loaded: zero them once */
  for (int k = tid; k < KB; k += THREADS)
    for (int j = t2; j < J4; j++) Xs[k * J4 + j] = 0;

  const int64_t k_begin = (int64_t)blockIdx.x * ntiles / G, k_end = ((int64_t)blockIdx.x + 1) * ntiles / G;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += KB) {
    const int kb = (int)(k_end - k0 < KB ? k_end - k0 : KB);
    __syncthreads(); /* the previous chunk's compute is done with As/Xs/xoff */
    if (tid < KB) {
      const int64_t tile = k0 + tid, I = tile / Nt, K = tile - I * Nt;
      xrow[tid] = tid < kb ? (int64_t)t * I : M; /* k >= kb: a row that reads as zero */
      xoff[tid] = (int64_t)t * I * N + (int64_t)t * K;
    }
    for (int i = tid; i < R4 << kb_shift; i += THREADS) { /* k fastest: coalesced along tiles */
      const int l = i >> kb_shift, k = i & (KB - 1);
      As[k * R4 + l] = (l < r && k < kb) ? D::load(fa[l * ntiles + k0 + k]) : (A)0;
    }
    __syncthreads();
    /* (p, k, q) with q fastest: consecutive threads read side-by-side segments of one row */
    for (int i = tid; i < t2 << kb_shift; i += THREADS) {
      const int p = i / (KB * t), rem = i - p * (KB * t), k = rem / t, q = rem - k * t;
      const int64_t row = xrow[k] + p;
      Xs[k * J4 + p * t + q] = row < M ? D::load(x[xoff[k] + (int64_t)p * N + q]) : (A)0;
    }
    __syncthreads();
    if (active) {
      A acc[16];
#pragma unroll
      for (int e = 0; e < 16; e++) acc[e] = 0;
      for (int k = ks; k < kb; k += ksplit) {
        A av[4], xv[4];
        lds4(As + k * R4 + l0, av);
        lds4(Xs + k * J4 + j0, xv);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) acc[i * 4 + j] += av[i] * xv[j];
      }
      /* compute-type sums over at most KB tiles, then into fp64 (like the CPU's blocks of 64) */
#pragma unroll
      for (int e = 0; e < 16; e++) red[e * THREADS + tid] += (double)acc[e];
    }
  }

  /* fixed-order in-block sum over the k-split */
  __syncthreads();
  for (int o = tid; o < nmt * 16; o += THREADS) {
    const int m = o / 16, e = o % 16;
    const int l = (m / nj) * 4 + e / 4, j = (m % nj) * 4 + e % 4;
    if (l >= r || j >= t2) continue;
    double s = 0;
    for (int q = 0; q < ksplit; q++) s += red[e * THREADS + q * nmt + m];
    part[(int64_t)blockIdx.x * r * t2 + l * t2 + j] = s;
  }
}

/* any (t, r): block (b, y) sums outputs y*THREADS + tid over block b's tile range */
template <typename D>
__global__ void __launch_bounds__(THREADS)
correlate_generic(const typename D::S *__restrict__ fa, const typename D::S *__restrict__ x, int64_t M,
                  int64_t N, int t, int r, int G, double *__restrict__ part) {
  typedef typename D::A A;
  const int t2 = t * t, o = blockIdx.y * THREADS + threadIdx.x;
  if (o >= r * t2) return;
  const int l = o / t2, j = o - l * t2, p = j / t, q = j - p * t;
  const int64_t Nt = N / t, ntiles = ((M + t - 1) / t) * Nt;
  const int64_t k_begin = (int64_t)blockIdx.x * ntiles / G, k_end = ((int64_t)blockIdx.x + 1) * ntiles / G;
  double s = 0;
  A acc = 0;
  int64_t I = k_begin / Nt, K = k_begin - I * Nt;
  for (int64_t k = k_begin; k < k_end; k++) {
    const int64_t row = (int64_t)t * I + p;
    if (row < M) acc += D::load(fa[l * ntiles + k]) * D::load(x[row * N + t * K + q]);
    if (++K == Nt) K = 0, I++;
    if (((k - k_begin) & 63) == 63) s += (double)acc, acc = 0; /* fp32 runs of 64 terms, then fp64 */
  }
  part[(int64_t)blockIdx.x * r * t2 + o] = s + (double)acc;
}

/* ------------------------------------------------------------------------------------------ */
/* colsum: pass 1                                                                              */

/* block (32 columns x 8 row lanes) of strip blockIdx.x, rows of chunk blockIdx.y of G */
template <typename D>
__global__ void __launch_bounds__(THREADS)
colsum_partial(const typename D::S *__restrict__ g, int64_t M, int64_t P, int G, double *__restrict__ part) {
  __shared__ double red[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = (int64_t)blockIdx.x * 32 + tx;
  const int64_t m0 = (int64_t)blockIdx.y * M / G, m1 = ((int64_t)blockIdx.y + 1) * M / G;
  double s = 0;
  if (c < P)
    for (int64_t m = m0 + ty; m < m1; m += 8) s += (double)D::load(g[m * P + c]);
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < P) {
    double v = 0;
    for (int i = 0; i < 8; i++) v += red[i][tx];
    part[(int64_t)blockIdx.y * P + c] = v;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* pass 2 of both reductions: out[(o / cols) * s0 + (o % cols) * s1] = sum_b part[b*n + o].
 * One warp per output: lane i sums blocks i, i+32, ... in order, then a fixed butterfly, so the
 * order of the additions never changes (deterministic) while 32 loads are in flight. */
template <typename D>
__global__ void __launch_bounds__(THREADS)
reduce_partials(const double *__restrict__ part, int G, int64_t n, int64_t cols, typename D::S *__restrict__ out,
                int64_t s0, int64_t s1) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t o = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; o < n; o += warps) {
    double s = 0;
    for (int b = lane; b < G; b += 32) s += part[(int64_t)b * n + o];
#pragma unroll
    for (int m = 16; m > 0; m /= 2) s += SHFL_XOR(s, m);
    if (lane == 0) {
      const int64_t i = o / cols, j = o - i * cols;
      out[i * s0 + j * s1] = D::store((typename D::A)s);
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Host launchers                                                                              */

static bool aligned(const void *p, int bytes) { return p == NULL || ((uintptr_t)p % (uintptr_t)bytes) == 0; }

template <typename D>
static void launch_encode(const void *in, int64_t M, int64_t N, int t, int r, Small enc, const void *extra,
                          void *out, cudaStream_t st) {
  typedef typename D::S S;
  const int64_t ntiles = ((M + t - 1) / t) * (N / t);
  if (ntiles == 0) return;
  const size_t smem = (size_t)r * t * t * sizeof(typename D::A);
  const bool fast = (t == 2 || t == 4 || t == 8) && smem <= SMEM_LIMIT;
  if (fast) {
    const bool vec = aligned(in, t * (int)sizeof(S));
    const unsigned grid = stl_grid(ntiles, THREADS, 8);
    const S *x = (const S *)in, *ex = (const S *)extra;
    S *o = (S *)out;
    if (t == 2) LAUNCH(grid, THREADS, smem, st, encode_tiles<D, 2>)(x, M, N, r, enc, ex, o, vec);
    if (t == 4) LAUNCH(grid, THREADS, smem, st, encode_tiles<D, 4>)(x, M, N, r, enc, ex, o, vec);
    if (t == 8) LAUNCH(grid, THREADS, smem, st, encode_tiles<D, 8>)(x, M, N, r, enc, ex, o, vec);
  } else {
    LAUNCH(stl_grid(ntiles * r, THREADS, 8), THREADS, 0, st, encode_generic<D>)((const S *)in, M, N, t, r, enc,
                                                                          (const S *)extra, (S *)out);
  }
  stl_cuda_check("encode");
}

template <typename D>
static void launch_decode(const void *in, int64_t M, int64_t P, int t, int r, Small dec, const void *bias,
                          void *out, cudaStream_t st) {
  typedef typename D::S S;
  const int64_t ntiles = ((M + t - 1) / t) * (P / t);
  if (ntiles == 0) return;
  const size_t smem = (size_t)r * t * t * sizeof(typename D::A);
  const bool fast = (t == 2 || t == 4 || t == 8) && smem <= SMEM_LIMIT;
  if (fast) {
    const bool vec = aligned(out, t * (int)sizeof(S)) && aligned(bias, t * (int)sizeof(S));
    const unsigned grid = stl_grid(ntiles, THREADS, 8);
    const S *z = (const S *)in, *b = (const S *)bias;
    S *o = (S *)out;
    if (t == 2) LAUNCH(grid, THREADS, smem, st, decode_tiles<D, 2>)(z, M, P, r, dec, b, o, vec);
    if (t == 4) LAUNCH(grid, THREADS, smem, st, decode_tiles<D, 4>)(z, M, P, r, dec, b, o, vec);
    if (t == 8) LAUNCH(grid, THREADS, smem, st, decode_tiles<D, 8>)(z, M, P, r, dec, b, o, vec);
  } else {
    LAUNCH(stl_grid(M * P, THREADS, 8), THREADS, 0, st, decode_generic<D>)((const S *)in, M, P, t, r, dec,
                                                                     (const S *)bias, (S *)out);
  }
  stl_cuda_check("decode");
}

/* The split of a reduction depends only on the problem size (reproducible across GPUs). */
#define WS_MAX_DOUBLES (1 << 20) /* partials: at most 8 MiB */

typedef struct {
  int staged, kb_shift, G;
  size_t smem, ws_bytes;
} CorPlan;

static CorPlan correlate_plan(StlDtype dt, int64_t M, int64_t N, int t, int r) {
  CorPlan p = {0, 0, 1, 0, 0};
  const int64_t ntiles = ((M + t - 1) / t) * (N / t), outs = (int64_t)r * t * t;
  const CorShape s = cor_shape(t, r);
  const size_t asz = dt == STL_F64 ? sizeof(double) : sizeof(float);
  if (s.ksplit > 0) /* the largest chunk (64..8 tiles) that fits the default shared memory */
    for (int sh = 6; sh >= 3 && !p.staged; sh--)
      if (cor_smem(s, 1 << sh, asz) <= SMEM_LIMIT) p.staged = 1, p.kb_shift = sh, p.smem = cor_smem(s, 1 << sh, asz);
  const int64_t per_block = p.staged ? 4 << p.kb_shift : 256; /* at least this many tiles per block */
  int64_t G = (ntiles + per_block - 1) / per_block;
  if (G > 1024) G = 1024;
  if (G > WS_MAX_DOUBLES / outs) G = WS_MAX_DOUBLES / outs;
  if (G < 1) G = 1;
  p.G = (int)G;
  p.ws_bytes = (size_t)G * outs * sizeof(double);
  return p;
}

template <typename D>
static void launch_correlate(const void *a, const void *x, int64_t M, int64_t N, int t, int r, void *out,
                             int64_t s0, int64_t s1, double *ws, CorPlan p, cudaStream_t st) {
  typedef typename D::S S;
  const S *fa = (const S *)a, *xx = (const S *)x;
  if (p.staged) {
    if (t == 2) LAUNCH(p.G, THREADS, p.smem, st, correlate_staged<D, 2>)(fa, xx, M, N, t, r, p.kb_shift, p.G, ws);
    else if (t == 4) LAUNCH(p.G, THREADS, p.smem, st, correlate_staged<D, 4>)(fa, xx, M, N, t, r, p.kb_shift, p.G, ws);
    else LAUNCH(p.G, THREADS, p.smem, st, correlate_staged<D, 0>)(fa, xx, M, N, t, r, p.kb_shift, p.G, ws);
  } else {
    const dim3 grid(p.G, (unsigned)(((int64_t)r * t * t + THREADS - 1) / THREADS));
    LAUNCH(grid, THREADS, 0, st, correlate_generic<D>)(fa, xx, M, N, t, r, p.G, ws);
  }
  stl_cuda_check("correlate (pass 1)");
  const int64_t n = (int64_t)r * t * t;
  LAUNCH(stl_grid(n * 32, THREADS, 8), THREADS, 0, st, reduce_partials<D>)(ws, p.G, n, (int64_t)t * t, (S *)out, s0, s1);
  stl_cuda_check("correlate (pass 2)");
}

static int colsum_chunks(int64_t M) {
  int64_t G = (M + 127) / 128; /* >= 128 rows (16 per row lane) per block */
  if (G > 64) G = 64;
  return (int)(G > 0 ? G : 1);
}

template <typename D>
static void launch_colsum(const void *g, int64_t M, int64_t P, void *out, double *ws, int G, cudaStream_t st) {
  typedef typename D::S S;
  const dim3 grid((unsigned)((P + 31) / 32), (unsigned)G);
  LAUNCH(grid, THREADS, 0, st, colsum_partial<D>)((const S *)g, M, P, G, ws);
  stl_cuda_check("colsum (pass 1)");
  LAUNCH(stl_grid(P * 32, THREADS, 8), THREADS, 0, st, reduce_partials<D>)(ws, G, P, P, (S *)out, 0, 1);
  stl_cuda_check("colsum (pass 2)");
}

/* dtype switch: `CALL(D)` for the storage dtype dt */
#define DISPATCH(dt, CALL)                                                          \
  switch (dt) {                                                                     \
    case STL_F32: CALL(DF32); break;                                                \
    case STL_F64: CALL(DF64); break;                                                \
    case STL_BF16: CALL(DBF16); break;                                              \
    case STL_F16: CALL(DF16); break;                                                \
    default: stl_cuda_error("stl_torch CUDA: unsupported storage dtype");                 \
  }

static Small small_of(StlSmallMat m) {
  Small s = {m.base, m.s0, m.s1};
  return s;
}

/* ------------------------------------------------------------------------------------------ */
/* The extern "C" launchers (csrc/cuda/launchers.h), composed by csrc/cuda/backend.c. Errors go
 * to host->error; host->stream is torch's stream; a NULL host (the emulator) means the default
 * stream, and errors print and abort. */

extern "C" void stl_cuda_encode_add(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r, StlSmallMat enc,
                                    const void *extra, void *out, const StlHost *host) {
  StlDeviceGuard guard(host, out);
  cudaStream_t st = (cudaStream_t)(host ? host->stream : NULL);
#define CALL(D) launch_encode<D>(in, M, N, t, r, small_of(enc), extra, out, st)
  DISPATCH(dt, CALL)
#undef CALL
}

extern "C" void stl_cuda_decode(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r, StlSmallMat dec,
                                const void *bias, void *out, const StlHost *host) {
  StlDeviceGuard guard(host, out);
  cudaStream_t st = (cudaStream_t)(host ? host->stream : NULL);
#define CALL(D) launch_decode<D>(in, M, P, t, r, small_of(dec), bias, out, st)
  DISPATCH(dt, CALL)
#undef CALL
}

/* Scratch of the two-pass reductions: G fp64 partials per output. It is part of the backend's
 * workspace, which ops.c allocates as a torch tensor on the output's device: it comes from torch's
 * caching allocator, ordered on torch's stream like every other temporary of the op (and
 * capturable in CUDA graphs). */
extern "C" size_t stl_cuda_correlate_workspace_bytes(StlDtype dt, int64_t M, int64_t N, int t, int r) {
  if (M <= 0 || N <= 0 || (int64_t)r * t * t <= 0) return 0; /* no tiles: no partials */
  return correlate_plan(dt, M, N, t, r).ws_bytes;
}

extern "C" size_t stl_cuda_colsum_workspace_bytes(StlDtype dt, int64_t M, int64_t P) {
  (void)dt;
  if (M <= 0 || P <= 0) return 0;
  return (size_t)colsum_chunks(M) * (size_t)P * sizeof(double);
}

/* ws: at least the *_workspace_bytes above, 8-byte aligned, on the stream's device and not used
 * by anything else until the stream reaches this call's end. */
static void check_ws(const char *what, const void *ws, size_t ws_bytes, size_t need) {
  if (need == 0) return;
  if (!ws || ws_bytes < need || !aligned(ws, 8)) {
    char msg[200];
    snprintf(msg, sizeof msg, "stl_torch CUDA %s: workspace of %zu bytes at %p, need %zu bytes 8-byte aligned",
             what, ws_bytes, ws, need);
    stl_cuda_error(msg);
  }
}

extern "C" void stl_cuda_correlate_ws(StlDtype dt, const void *a, const void *x, int64_t M, int64_t N, int t,
                                      int r, void *out, int64_t s0, int64_t s1, void *ws, size_t ws_bytes,
                                      const StlHost *host) {
  StlDeviceGuard guard(host, out);
  cudaStream_t st = (cudaStream_t)(host ? host->stream : NULL);
  const int64_t n = (int64_t)r * t * t;
  if (n <= 0) return;
  if (M <= 0 || N <= 0) { /* no tiles: an empty sum (pass 2 over zero partials writes zeros) */
#define CALL(D) LAUNCH(stl_grid(n * 32, THREADS, 8), THREADS, 0, st, reduce_partials<D>)(NULL, 0, n, (int64_t)t * t, \
                                                                              (D::S *)out, s0, s1)
    DISPATCH(dt, CALL)
#undef CALL
    stl_cuda_check("correlate (zero)");
    return;
  }
  const CorPlan p = correlate_plan(dt, M, N, t, r);
  check_ws("correlate", ws, ws_bytes, p.ws_bytes);
#define CALL(D) launch_correlate<D>(a, x, M, N, t, r, out, s0, s1, (double *)ws, p, st)
  DISPATCH(dt, CALL)
#undef CALL
}

extern "C" void stl_cuda_colsum_ws(StlDtype dt, const void *g, int64_t M, int64_t P, void *out, void *ws,
                                   size_t ws_bytes, const StlHost *host) {
  StlDeviceGuard guard(host, out);
  cudaStream_t st = (cudaStream_t)(host ? host->stream : NULL);
  if (P <= 0) return;
  if (M <= 0) {
#define CALL(D) LAUNCH(stl_grid(P * 32, THREADS, 8), THREADS, 0, st, reduce_partials<D>)(NULL, 0, P, P, (D::S *)out, 0, 1)
    DISPATCH(dt, CALL)
#undef CALL
    stl_cuda_check("colsum (zero)");
    return;
  }
  const int G = colsum_chunks(M);
  check_ws("colsum", ws, ws_bytes, (size_t)G * P * sizeof(double));
#define CALL(D) launch_colsum<D>(g, M, P, out, (double *)ws, G, st)
  DISPATCH(dt, CALL)
#undef CALL
}
