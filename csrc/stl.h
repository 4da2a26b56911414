/* stl-torch kernel API in plain C. One STL layer is encode -> r batched GEMMs -> decode
 * (docs/operator.md); the backward pass reuses the same three tile primitives:
 *   encode    : out[l,I,K]   = sum_j enc[l,j] * in[t*I+a, t*K+c]            (j = a*t+c)
 *   decode    : out[t*I+a, t*J+b] = sum_l dec[j,l] * in[l,I,J] (+ bias)     (j = a*t+b)
 *   correlate : acc[l,j]     = sum_{I,K} a[l,I,K] * x[t*I+p, t*K+q]         (j = p*t+q)
 * Tensors are row-major and contiguous. Rows >= M of a partial last tile read as zero and are
 * never written. Storage dtype is given per call (STL_F32/F64/BF16/F16); compute is float64 for
 * F64 and float32 otherwise (16-bit formats accumulate in float32). Sizes are 64-bit everywhere. */
#ifndef STL_H
#define STL_H

#include <stddef.h>
#include <stdint.h>

typedef enum { STL_F32 = 0, STL_F64 = 1, STL_BF16 = 2, STL_F16 = 3 } StlDtype;

/* A small matrix M[i,j] = base[i*s0 + j*s1] in storage dtype (lets callers pass E, D or their
 * transposes without copies). */
typedef struct {
  const void *base;
  int64_t s0, s1;
} StlSmallMat;

/* One forward call's operands: device pointers, row-major and contiguous, storage dtype dt.
 *   x (M, N); enc = E (r x t*t); wt (r, N/t, P/t); dec = D (t*t x r); bias (P) or NULL;
 *   y (M, P); z (r, ceil(M/t), P/t) or NULL when the caller does not keep Z. */
typedef struct {
  StlDtype dt;
  int64_t M, N, P;
  int t, r;
  const void *x;
  StlSmallMat enc;
  const void *wt;
  StlSmallMat dec;
  const void *bias;
  void *y;
  void *z;
} StlForward;

/* One backward call's operands (same conventions): g = dL/dy (M, P); gz = dL/dz (r, ceil(M/t), P/t)
 * or NULL; z = the saved Z or NULL (recompute it); outputs dx (M, N), dE (r, t*t), dWt (r, N/t, P/t),
 * dD (t*t, r), db (P) or NULL when the layer has no bias. */
typedef struct {
  StlDtype dt;
  int64_t M, N, P;
  int t, r;
  const void *g;
  const void *gz;
  const void *x;
  StlSmallMat enc;
  const void *wt;
  StlSmallMat dec;
  const void *z;
  void *dx, *dE, *dWt, *dD, *db;
} StlBackward;

/* Limits of the operator, said once: ops.c checks them, abi_info()["limits"] exports them. */
#define STL_MAX_TILE 16    /* tile sizes 1..16 */
#define STL_MAX_RANK 65536 /* products per tile: t^3 <= 4096 is already exact at tile 16 */

/* A strided 3-D operand of the batched GEMM: element [b,i,j] at p + b*s0 + i*s1 + j*s2 (elements). */
typedef struct {
  const void *p;
  int64_t s0, s1, s2;
} StlMat;

typedef void (*StlRangeFn)(int64_t begin, int64_t end, void *ctx);

/* What ops.c lends a backend for one call; a backend reaches torch and ops.c only through it.
 *   batched_gemm : C[b] (+)= A[b] @ B[b] for b < r, A (m x k), B (k x n), C (m x n) in dtype dt on
 *                  the call's device, through torch's bmm (its BLAS / cuBLAS, on torch's stream).
 *                  accumulate needs gemm_accumulates (torch's baddbmm resolved; CPU only).
 *   parallel_for : fn over [0, n) in ranges of >= grain on torch's intra-op pool (CPU).
 *   num_threads  : the threads parallel_for may use.
 *   error        : frees the call's tensors and workspace, then raises a Python RuntimeError. Never
 *                  call it from a worker thread of parallel_for.
 *   stream       : torch's current CUDA stream of the call's device, NULL on the CPU. */
typedef struct StlHost StlHost;
struct StlHost {
  void (*batched_gemm)(const StlHost *h, StlDtype dt, int64_t r, int64_t m, int64_t n, int64_t k, StlMat a,
                       StlMat b, StlMat c, int accumulate);
  void (*parallel_for)(int64_t n, int64_t grain, StlRangeFn fn, void *ctx);
  int64_t (*num_threads)(void);
  void (*error)(const StlHost *h, const char *msg) __attribute__((noreturn));
  int gemm_accumulates;
  void *stream;
  void *call; /* ops.c's state of the call */
};

/* One device's backend: the whole forward and the whole backward of a call. ops.c checks the
 * operands, allocates the outputs and ws (*_ws_bytes bytes, 64-byte aligned, on the call's device,
 * from torch's caching allocator or the CPU's cached workspace, stream-ordered like every other
 * tensor of the op) and calls these. Pointers (StlSmallMat.base too) live on the device. */
typedef struct {
  const char *name;
  size_t (*forward_ws_bytes)(const StlForward *f, const StlHost *h);
  void (*forward)(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *h);
  size_t (*backward_ws_bytes)(const StlBackward *b, const StlHost *h);
  void (*backward)(const StlBackward *b, void *ws, size_t ws_bytes, const StlHost *h);
  int fused_forward; /* the forward is one fused pass, not encode -> batched GEMM -> decode */
} StlBackend;

/* Per device, the product backend (torch.ops.stl_torch.stl_forward / stl_backward) and the plain
 * composition of its primitives, encode -> batched GEMM -> decode (stl_forward_unfused: a
 * reference for checks and benchmarks, not a product path). */
extern const StlBackend stl_cpu_backend, stl_cpu_composed;
#ifdef STL_WITH_CUDA
/* csrc/cuda/backend.c: the composition of the CUDA primitives (untested on a GPU); a GPU check
 * build (dev/cuda/build_candidate.sh) puts a fused candidate into stl_cuda_backend's forward. */
extern const StlBackend stl_cuda_backend, stl_cuda_composed;
#endif

/* Bytes of one element of storage dtype dt. */
static inline int64_t stl_dtype_size(StlDtype dt) { return dt == STL_F64 ? 8 : dt == STL_F32 ? 4 : 2; }

/* The CPU backend's cached scratch memory (csrc/cpu/workspace.c). */
void *stl_cpu_workspace_acquire(size_t bytes, int *token);
void stl_cpu_workspace_release(void *p, int token);
size_t stl_cpu_workspace_empty(void);
size_t stl_cpu_workspace_cached(void);

/* Host services behind StlHost (csrc/parallel.c): torch's intra-op pool when this torch exports it,
 * else pthreads. */
void stl_parallel_for(int64_t n, int64_t grain, StlRangeFn fn, void *ctx);
int64_t stl_num_threads(void);

#endif
