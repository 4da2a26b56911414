/* Puts a candidate fused forward from this folder into the CUDA backend's forward slot
 * (csrc/cuda/launchers.h, STL_CUDA_FORWARD_SLOT), for a GPU check build only:
 *   dev/cuda/build_candidate.sh v1  fused_v1_gemm_decode.cu          (encode kernel, then GEMM + decode)
 *   dev/cuda/build_candidate.sh v2  fused_v2_encode_gemm_decode.cu   (encode + GEMM + decode in one kernel)
 * The script compiles this file with STL_DEV_FORWARD=1 or 2; it includes the chosen candidate. Calls
 * the candidate does not support run the mainline composition (encode -> cuBLAS bmm -> decode), and
 * torch.ops.stl_torch.stl_forward_unfused always does, so one build compares the two side by side. */
#include "common.cuh"
extern "C" {
#include "launchers.h"
}

#if STL_DEV_FORWARD == 1
#include "fused_v1_gemm_decode.cu"

extern "C" int stl_cuda_slot_forward_supported(const StlForward *f) {
  return stl_cuda_fused_forward_supported(f->dt, f->M, f->N, f->P, f->t, f->r);
}
/* v1 reads Xe from global memory: the scratch holds it (r, ceil(M/t), N/t), 256-byte aligned */
extern "C" size_t stl_cuda_slot_forward_ws_bytes(const StlForward *f) {
  const int64_t xe = (int64_t)f->r * ((f->M + f->t - 1) / f->t) * (f->N / f->t);
  return (size_t)xe * (size_t)stl_dtype_size(f->dt) + 256;
}
extern "C" void stl_cuda_slot_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  StlDeviceGuard guard(host, f->y);
  if (ws_bytes < stl_cuda_slot_forward_ws_bytes(f)) stl_cuda_error("stl_torch dev forward v1: workspace too small");
  void *xe = (void *)(((uintptr_t)ws + 255) & ~(uintptr_t)255);
  stl_cuda_encode_add(f->dt, f->x, f->M, f->N, f->t, f->r, f->enc, NULL, xe, host);
  stl_cuda_fused_forward(f->dt, xe, f->wt, f->dec, f->bias, f->y, f->z, f->M, f->N, f->P, f->t, f->r, host->stream);
}

#elif STL_DEV_FORWARD == 2
#include "fused_v2_encode_gemm_decode.cu"

extern "C" int stl_cuda_slot_forward_supported(const StlForward *f) {
  return stl_cuda_fused_encode_forward_supported(f->dt, f->M, f->N, f->P, f->t, f->r);
}
extern "C" size_t stl_cuda_slot_forward_ws_bytes(const StlForward *f) {
  (void)f;
  return 0;
}
extern "C" void stl_cuda_slot_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  StlDeviceGuard guard(host, f->y);
  (void)ws, (void)ws_bytes;
  stl_cuda_fused_encode_forward(f->dt, f->x, f->enc, f->wt, f->dec, f->bias, f->y, f->z, f->M, f->N, f->P, f->t,
                                f->r, host->stream);
}

#else
#error "compile with STL_DEV_FORWARD=1 (fused_v1_gemm_decode.cu) or 2 (fused_v2_encode_gemm_decode.cu)"
#endif
