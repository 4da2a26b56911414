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

/* One device's implementation of the primitives. ops.c is device-generic: it allocates through
 * torch, runs the batched GEMM through torch (its cuBLAS on CUDA), and calls these. `stream` is
 * torch's current CUDA stream (NULL on the CPU); pointers (including StlSmallMat.base) live on
 * the device. The reductions (correlate, colsum) may need scratch memory: *_ws_bytes says how
 * much (0 on the CPU, which ignores ws), and the caller passes that many bytes (8-byte aligned,
 * on the same device) as ws, ws_bytes, allocated through torch so that it comes from torch's
 * caching allocator and is stream-ordered like every other tensor of the op.
 *
 * forward (optional, NULL = none): the whole forward in one fused kernel, used for every call
 * forward_supported accepts; the others run the composition encode -> batched GEMM -> decode.
 * backward (optional): the same for the backward. Both take scratch of *_ws_bytes bytes. A kernel
 * takes these slots only once it has been verified on its device (dev/ holds the candidates). */
typedef struct {
  const char *name;
  void (*encode_add)(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r, StlSmallMat enc,
                     const void *extra, void *out, void *stream);
  void (*decode)(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r, StlSmallMat dec,
                 const void *bias, void *out, void *stream);
  size_t (*correlate_ws_bytes)(StlDtype dt, int64_t M, int64_t N, int t, int r);
  void (*correlate)(StlDtype dt, const void *a, const void *x, int64_t M, int64_t N, int t, int r,
                    void *out, int64_t out_s0, int64_t out_s1, void *ws, size_t ws_bytes, void *stream);
  size_t (*colsum_ws_bytes)(StlDtype dt, int64_t M, int64_t P);
  void (*colsum)(StlDtype dt, const void *g, int64_t M, int64_t P, void *out, void *ws, size_t ws_bytes,
                 void *stream);
  int (*forward_supported)(const StlForward *f);
  size_t (*forward_ws_bytes)(const StlForward *f);
  void (*forward)(const StlForward *f, void *ws, size_t ws_bytes, void *stream);
  size_t (*backward_ws_bytes)(const StlBackward *b);
  void (*backward)(const StlBackward *b, void *ws, size_t ws_bytes, void *stream);
} StlKernels;

extern const StlKernels stl_cpu_kernels;
#ifdef STL_WITH_CUDA
/* csrc/cuda: the same primitives on the GPU (extern "C" launchers). */
extern const StlKernels stl_cuda_kernels;
#endif

/* Raised by a backend during a call (a failed launch, an impossible size): frees the call's tensor
 * handles and workspace, then raises a Python RuntimeError (ops.c). Never call it from a worker
 * thread of stl_parallel_for. */
#ifdef __cplusplus
[[noreturn]] void stl_kernel_error(const char *msg);
#else
void stl_kernel_error(const char *msg) __attribute__((noreturn));
#endif

/* The CPU backend's cached scratch memory (csrc/cpu/workspace.c). */
void *stl_cpu_workspace_acquire(size_t bytes, int *token);
void stl_cpu_workspace_release(void *p, int token);
size_t stl_cpu_workspace_empty(void);
size_t stl_cpu_workspace_cached(void);

/* Parallel loop on torch's intra-op pool when this torch exports it, else pthreads. */
typedef void (*StlRangeFn)(int64_t begin, int64_t end, void *ctx);
void stl_parallel_for(int64_t n, int64_t grain, StlRangeFn fn, void *ctx);

#endif
