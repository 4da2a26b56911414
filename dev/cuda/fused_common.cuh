/* The decode side shared by the two fused forward kernels (fused_v1_gemm_decode.cu: decode in the GEMM's
 * epilogue; fused_v2_encode_gemm_decode.cu: encode in the prologue as well). Both give each thread, per
 * product l, one m16n8 fragment of Z_l (c[4], common.cuh's layout: e = 0,1 -> tile-row Ib + g,
 * tile-columns Jb + 2q, +1; e = 2,3 -> tile-row Ib + g + 8), and both decode it into the same
 * 4 x t^2 fp32 y accumulators, so the staging of D, the per-product decode and the store of y live
 * here once. Ib, Jb: the first tile-row / tile-column of the warp's Z tile, written out at each
 * call (hoisted into kernel-wide variables they changed ptxas's register allocation). Everything
 * is force-inlined with compile-time T, so yacc stays in registers exactly as if written in place:
 * with nvcc 13.0, the same register counts and no spills; fused_forward's SASS byte-identical. */
#ifndef STL_CUDA_FUSED_COMMON_CUH
#define STL_CUDA_FUSED_COMMON_CUH

#include "common.cuh"

/* D[j, l] = dec[j*s0 + l*s1] (t^2 x r, storage dtype) -> Ds[l*t2 + j] in fp32 shared memory:
 * product l's column is contiguous, read as warp-uniform broadcasts. The caller's next
 * __syncthreads publishes it (both kernels have one before any use). */
template <typename D, int T, int NTHREADS>
__device__ __forceinline__ void fused_stage_dec(float *Ds, const unsigned short *__restrict__ dec, int64_t dec_s0,
                                                int64_t dec_s1, int r, int tid) {
  const int t2 = T * T;
  for (int i = tid; i < r * t2; i += NTHREADS) {
    const int l = i / t2, j = i - l * t2;
    Ds[i] = D::load(dec[j * dec_s0 + l * dec_s1]);
  }
}

template <int T> __device__ __forceinline__ void fused_yacc_zero(float (&yacc)[4][T * T]) {
#pragma unroll
  for (int e = 0; e < 4; e++)
#pragma unroll
    for (int j = 0; j < T * T; j++) yacc[e][j] = 0;
}

/* product l's epilogue: store Z_l to z_out (r, Mt, Pt) when asked, then y += D[:, l] (x) Z_l */
template <typename D, int T>
__device__ __forceinline__ void fused_take_product(float (&yacc)[4][T * T], const float c[4], const float *Ds, int l,
                                                   unsigned short *__restrict__ z_out, int64_t Ib, int64_t Jb, int g,
                                                   int q, int64_t Mt, int64_t Pt) {
  if (z_out) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int64_t I = Ib + g + 8 * (e / 2), J = Jb + 2 * q + (e % 2);
      if (I < Mt && J < Pt) z_out[((int64_t)l * Mt + I) * Pt + J] = D::store(c[e]);
    }
  }
  const float *dl = Ds + l * (T * T);
#pragma unroll
  for (int e = 0; e < 4; e++)
#pragma unroll
    for (int j = 0; j < T * T; j++) yacc[e][j] += dl[j] * c[e];
}

/* bias, then each Z element's t x t block of y (M, P = Pt*T): row segments of t contiguous
 * outputs; fragments outside Mt x Pt and y rows >= M are not written. P comes from the caller's
 * prologue: ptxas allocated more registers (58 -> 72 at sm_90a, t=2) when it was recomputed here. */
template <typename D, int T>
__device__ __forceinline__ void fused_store_y(float (&yacc)[4][T * T], const unsigned short *__restrict__ bias,
                                              unsigned short *__restrict__ y, int64_t Ib, int64_t Jb, int g, int q,
                                              int64_t M, int64_t Mt, int64_t Pt, int64_t P, bool vec_y) {
#pragma unroll
  for (int e = 0; e < 4; e++) {
    const int64_t I = Ib + g + 8 * (e / 2), J = Jb + 2 * q + (e % 2);
    if (I >= Mt || J >= Pt) continue;
    if (bias) {
      float bv[T];
      load_seg<D, T>(bias + T * J, bv, vec_y);
#pragma unroll
      for (int a = 0; a < T; a++)
#pragma unroll
        for (int b = 0; b < T; b++) yacc[e][a * T + b] += bv[b];
    }
#pragma unroll
    for (int a = 0; a < T; a++) {
      const int64_t row = T * I + a;
      if (row < M) store_seg<D, T>(y + row * P + T * J, &yacc[e][a * T], vec_y);
    }
  }
}

/* Host side: the (storage dtype, tile) instances both fused kernels are built for, bf16/fp16 x
 * t = 2/4 (their *_supported() predicates admit nothing else). CALL(DT, T) launches one. */
#define STL_FUSED_DISPATCH(dt, t, CALL) \
  do {                                  \
    if ((dt) == STL_BF16) {             \
      if ((t) == 2) CALL(DBF16, 2);     \
      else CALL(DBF16, 4);              \
    } else {                            \
      if ((t) == 2) CALL(DF16, 2);      \
      else CALL(DF16, 4);               \
    }                                   \
  } while (0)

#endif
