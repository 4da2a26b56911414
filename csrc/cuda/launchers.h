/* The extern "C" launchers of the CUDA tile primitives (tile_kernels.cu), plain C so that the
 * CUDA backend's host side (backend.c, C11) composes them. Semantics in tile_kernels.cu and
 * stl.h; every launch is asynchronous on host->stream and raises errors through host->error.
 * The reductions need scratch of *_workspace_bytes bytes (8-byte aligned, on the device). */
#ifndef STL_CUDA_LAUNCHERS_H
#define STL_CUDA_LAUNCHERS_H

#include "../stl.h"

void stl_cuda_encode_add(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r, StlSmallMat enc,
                         const void *extra, void *out, const StlHost *host);
void stl_cuda_decode(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r, StlSmallMat dec,
                     const void *bias, void *out, const StlHost *host);
size_t stl_cuda_correlate_workspace_bytes(StlDtype dt, int64_t M, int64_t N, int t, int r);
void stl_cuda_correlate_ws(StlDtype dt, const void *a, const void *x, int64_t M, int64_t N, int t, int r, void *out,
                           int64_t s0, int64_t s1, void *ws, size_t ws_bytes, const StlHost *host);
size_t stl_cuda_colsum_workspace_bytes(StlDtype dt, int64_t M, int64_t P);
void stl_cuda_colsum_ws(StlDtype dt, const void *g, int64_t M, int64_t P, void *out, void *ws, size_t ws_bytes,
                        const StlHost *host);

#ifdef STL_CUDA_FORWARD_SLOT
/* A GPU check build's fused forward candidate (dev/cuda/forward_slot.cu, linked in by
 * dev/cuda/build_candidate.sh): used for the calls it supports, the composition for the rest. */
int stl_cuda_slot_forward_supported(const StlForward *f);
size_t stl_cuda_slot_forward_ws_bytes(const StlForward *f);
void stl_cuda_slot_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host);
#endif

#endif
