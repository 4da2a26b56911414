/* The CUDA backend (StlBackend stl_cuda_backend, stl_cuda_composed): host-side C11 composing the
 * tile primitives' extern "C" launchers (launchers.h, tile_kernels.cu) with the batched GEMM the
 * host lends (torch's cuBLAS bmm on torch's stream). No fused kernel is in the product yet: the
 * forward is encode -> GEMM -> decode, the backward the same primitives plus the reductions.
 * UNTESTED ON A GPU: the kernels pass the host emulator (dev/cuda/emu) and compile for sm_80 and
 * sm_90a, and this composition mirrors the one ops.c ran before, but none of it has run on a GPU.
 *
 * The temporaries (Xe, Z, Gz, dXe in the storage dtype, the reductions' fp64 partials) are pieces
 * of the one workspace ops.c allocates through torch's caching allocator, stream-ordered. */
#include <stdint.h>

#include "../stl.h"
#include "launchers.h"

/* Next 256-byte-aligned piece of `bytes` in a workspace of *used bytes so far; SIZE_MAX poisons
 * the total (ops.c then refuses the call: too large). */
static size_t piece(size_t *used, size_t bytes) {
  const size_t at = *used > SIZE_MAX - 255 ? SIZE_MAX : (*used + 255) & ~(size_t)255;
  if (bytes == SIZE_MAX || at == SIZE_MAX || at > SIZE_MAX - bytes) {
    *used = SIZE_MAX;
    return 0;
  }
  *used = at + bytes;
  return at;
}

/* bytes of an (r, rows, cols) tensor of dt; SIZE_MAX on overflow */
static size_t planes(StlDtype dt, int64_t r, int64_t rows, int64_t cols) {
  size_t n;
  if (__builtin_mul_overflow((size_t)r, (size_t)rows, &n) || __builtin_mul_overflow(n, (size_t)cols, &n) ||
      __builtin_mul_overflow(n, (size_t)stl_dtype_size(dt), &n))
    return SIZE_MAX;
  return n;
}

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* ---------------------------------------------------------------------------------- forward */
typedef struct {
  size_t xe, z, bytes; /* offsets of Xe and (when the caller keeps no Z) Z; total */
} FwdLayout;

static FwdLayout fwd_layout(const StlForward *f) {
  const int64_t Mt = (f->M + f->t - 1) / f->t;
  FwdLayout l = {0, 0, 0};
  l.xe = piece(&l.bytes, planes(f->dt, f->r, Mt, f->N / f->t));
  if (!f->z) l.z = piece(&l.bytes, planes(f->dt, f->r, Mt, f->P / f->t));
  return l;
}

static size_t composed_forward_ws_bytes(const StlForward *f, const StlHost *h) {
  (void)h;
  return fwd_layout(f).bytes;
}

static void composed_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *h) {
  const FwdLayout l = fwd_layout(f);
  if (l.bytes > ws_bytes) h->error(h, "stl_torch CUDA forward: workspace too small");
  const int64_t Mt = (f->M + f->t - 1) / f->t, Nt = f->N / f->t, Pt = f->P / f->t;
  char *base = (char *)ws;
  void *xe = base + l.xe, *z = f->z ? f->z : base + l.z;
  stl_cuda_encode_add(f->dt, f->x, f->M, f->N, f->t, f->r, f->enc, NULL, xe, h);
  const StlMat a = {xe, Mt * Nt, Nt, 1}, b = {f->wt, Nt * Pt, Pt, 1}, c = {z, Mt * Pt, Pt, 1};
  h->batched_gemm(h, f->dt, f->r, Mt, Pt, Nt, a, b, c, 0);
  stl_cuda_decode(f->dt, z, f->M, f->P, f->t, f->r, f->dec, f->bias, f->y, h);
}

/* --------------------------------------------------------------------------------- backward */
typedef struct {
  size_t xe, z, gz, dxe, red, red_bytes, bytes; /* red: the reductions' partials, shared in turn */
} BwdLayout;

static BwdLayout bwd_layout(const StlBackward *b) {
  const int64_t Mt = (b->M + b->t - 1) / b->t, Nt = b->N / b->t, Pt = b->P / b->t;
  BwdLayout l = {0, 0, 0, 0, 0, 0, 0};
  l.xe = piece(&l.bytes, planes(b->dt, b->r, Mt, Nt));
  if (!b->z) l.z = piece(&l.bytes, planes(b->dt, b->r, Mt, Pt));
  l.gz = piece(&l.bytes, planes(b->dt, b->r, Mt, Pt));
  l.dxe = piece(&l.bytes, planes(b->dt, b->r, Mt, Nt));
  /* one scratch serves the three reductions: they run one after another on one stream */
  l.red_bytes = max3(stl_cuda_correlate_workspace_bytes(b->dt, b->M, b->P, b->t, b->r),
                     stl_cuda_correlate_workspace_bytes(b->dt, b->M, b->N, b->t, b->r),
                     b->db ? stl_cuda_colsum_workspace_bytes(b->dt, b->M, b->P) : 0);
  l.red = piece(&l.bytes, l.red_bytes);
  return l;
}

static size_t composed_backward_ws_bytes(const StlBackward *b, const StlHost *h) {
  (void)h;
  return bwd_layout(b).bytes;
}

static void composed_backward(const StlBackward *b, void *ws, size_t ws_bytes, const StlHost *h) {
  const BwdLayout l = bwd_layout(b);
  if (l.bytes > ws_bytes) h->error(h, "stl_torch CUDA backward: workspace too small");
  const int t = b->t, r = b->r, t2 = t * t;
  const int64_t Mt = (b->M + t - 1) / t, Nt = b->N / t, Pt = b->P / t;
  char *base = (char *)ws;
  void *xe = base + l.xe, *gz = base + l.gz, *dxe = base + l.dxe, *red = base + l.red;
  const void *z = b->z ? b->z : base + l.z;
  /* Xe = encode(x, E) is recomputed: it is memory-bound and cheaper than keeping it; Z too when
   * autograd did not keep it */
  stl_cuda_encode_add(b->dt, b->x, b->M, b->N, t, r, b->enc, NULL, xe, h);
  if (!b->z) {
    const StlMat a = {xe, Mt * Nt, Nt, 1}, w = {b->wt, Nt * Pt, Pt, 1}, c = {base + l.z, Mt * Pt, Pt, 1};
    h->batched_gemm(h, b->dt, r, Mt, Pt, Nt, a, w, c, 0);
  }
  /* Gz = encode(G, D^T) (+ grad_z);  dD[j,l] = sum_{I,J} Z[l,I,J] G[tile j] */
  const StlSmallMat dT = {b->dec.base, b->dec.s1, b->dec.s0}, eT = {b->enc.base, b->enc.s1, b->enc.s0};
  stl_cuda_encode_add(b->dt, b->g, b->M, b->P, t, r, dT, b->gz, gz, h);
  stl_cuda_correlate_ws(b->dt, z, b->g, b->M, b->P, t, r, b->dD, 1, r, red, l.red_bytes, h);
  /* dXe = Gz @ Wt^T ; dWt = Xe^T @ Gz (transposed operands as strides) */
  const StlMat gzm = {gz, Mt * Pt, Pt, 1}, wtT = {b->wt, Nt * Pt, 1, Pt}, dxem = {dxe, Mt * Nt, Nt, 1};
  const StlMat xeT = {xe, Mt * Nt, 1, Nt}, dwt = {b->dWt, Nt * Pt, Pt, 1};
  h->batched_gemm(h, b->dt, r, Mt, Nt, Pt, gzm, wtT, dxem, 0);
  h->batched_gemm(h, b->dt, r, Nt, Pt, Mt, xeT, gzm, dwt, 0);
  /* dX = decode(dXe, E^T) ; dE[l,j] = sum_{I,K} dXe[l,I,K] X[tile j] ; db = column sums of G */
  stl_cuda_decode(b->dt, dxe, b->M, b->N, t, r, eT, NULL, b->dx, h);
  stl_cuda_correlate_ws(b->dt, dxe, b->x, b->M, b->N, t, r, b->dE, t2, 1, red, l.red_bytes, h);
  if (b->db) stl_cuda_colsum_ws(b->dt, b->g, b->M, b->P, b->db, red, l.red_bytes, h);
}

/* ---------------------------------------------------------------------------------- tables */
const StlBackend stl_cuda_composed = {"cuda (composition)", composed_forward_ws_bytes, composed_forward,
                                      composed_backward_ws_bytes, composed_backward, 0};

#ifdef STL_CUDA_FORWARD_SLOT
/* A GPU check build: the candidate for the calls it supports (its scratch after the composition's
 * so that either fits), the composition for the rest. */
static size_t slot_forward_ws_bytes(const StlForward *f, const StlHost *h) {
  const size_t a = composed_forward_ws_bytes(f, h), b = stl_cuda_slot_forward_ws_bytes(f);
  return a > b ? a : b;
}
static void slot_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *h) {
  if (stl_cuda_slot_forward_supported(f)) stl_cuda_slot_forward(f, ws, ws_bytes, h);
  else composed_forward(f, ws, ws_bytes, h);
}
const StlBackend stl_cuda_backend = {"cuda (candidate in the forward slot)", slot_forward_ws_bytes, slot_forward,
                                     composed_backward_ws_bytes, composed_backward, 1};
#else
const StlBackend stl_cuda_backend = {"cuda", composed_forward_ws_bytes, composed_forward, composed_backward_ws_bytes,
                                     composed_backward, 0};
#endif
