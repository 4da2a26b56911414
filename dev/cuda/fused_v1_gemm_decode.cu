/* Fused forward candidate v1 (not yet run on a GPU): the r batched GEMMs of the STL forward with the decode fused into their
 * epilogue, on tensor cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate, sm_80+):
 *
 *     y = decode(Xe @ Wt, D) + bias        (Z = Xe @ Wt never goes through global memory)
 *
 * Xe comes from the ordinary encode kernel (csrc/cuda/tile_kernels.cu). Checked only with the host
 * emulator (dev/cuda/emu) and by compiling for sm_80/sm_90a. A GPU check build puts it in the CUDA
 * backend's forward slot (forward_slot.cu, build_candidate.sh v1).
 *
 * Why only the decode is fused here (cost model, t=4, r=24, bf16; fused_v2_encode_gemm_decode.cu is the
 * alternative that encodes in the prologue on tensor cores):
 *   - Encode in the prologue would re-encode each x strip once per output-column block: encode
 *     work is r*t^2 MACs per tile of x, the GEMM does r*BJ per tile per column block of width BJ
 *     tile-columns, so the re-done encode costs t^2/BJ of the GEMM's MACs (1/2 at BJ=32) on CUDA
 *     cores, ~15x slower than tensor cores: it would dominate. The separate encode pass reads x
 *     once and writes Xe (1.5x the bytes of x); it stays.
 *   - Decode in the epilogue is done once per output, but an output tile is t^2 = 16x larger than
 *     its Z tile, and each output needs all r products: either r Z-tiles or one y-tile (t^2 x) must
 *     stay on chip. With r > t^2 the y-tile is the smaller one, so the loop is l-outer: for each l,
 *     the full K loop of Z_l = Xe_l @ Wt_l for the block's tile, then y_acc += D[:, l] (x) Z_l.
 *
 * Tiling (v1: simple and correct first):
 *   block = 8 warps (4 along I x 2 along J); warp tile = one 16x8 mma tile of Z; block tile =
 *   64 tile-rows (I) x 16 tile-columns (J) of Z = 64t x 16t outputs of y. Per thread: the 4 Z
 *   values of its mma fragment and 4*t^2 fp32 y accumulators (64 at t=4), D (r x t^2, fp32) in
 *   shared memory, read as warp-uniform broadcasts. K loop: chunks of KC=32 tile-columns, Xe_l
 *   (64 x 32) and Wt_l^T (16 x 32) staged in padded shared memory (conflict-free 32-bit fragment
 *   loads), two k16 mma steps per chunk. Partial tiles (M, N, P not multiples of the block) are
 *   zero-padded on load and masked on store; y rows >= M are never written.
 *   The fused result decodes Z in fp32 (the unfused path rounds Z to bf16 first): results agree
 *   to bf16 tolerance, not bitwise.
 *
 * Known limits of v1, in the order to attack them on the GPU (measure first: a change that is not measured is not an improvement):
 *   1. GEMM intensity is low (block Z tile 64x16: 5 KB of operands per 32K MACs, ~13 FLOP/B from
 *      L2): widen J per block (y accumulators grow with it: 64 -> 128 regs at 16x16 per warp) or
 *      keep Z_l per l-group in shared memory and decode with a second mma (Z (elements x 16 l) @
 *      D^T (16 l x t^2)), which also moves the decode's CUDA-core FMAs (t^2/Nt of the GEMM work,
 *      ~15x dearer per MAC) onto tensor cores.
 *   2. No software pipelining: cp.async double/triple buffering of the Xe/Wt chunks, ldmatrix
 *      fragment loads.
 *   3. sm_90a: wgmma with TMA-fed, mbarrier-pipelined operands (warpgroup of 4 warps per 64xN
 *      tile), a persistent grid.
 *   4. Optionally write Z (need_z) from the same epilogue (implemented: z_out) so training saves
 *      the recompute in backward. */
#include "fused_common.cuh"

#define FF_WARPS_I 4
#define FF_WARPS_J 2
#define FF_THREADS (32 * FF_WARPS_I * FF_WARPS_J)
#define FF_BI (16 * FF_WARPS_I) /* tile-rows of Z per block */
#define FF_BJ (8 * FF_WARPS_J)  /* tile-columns of Z per block */
#define FF_KC 32                /* tile-columns of Xe (K) per staged chunk */
#define FF_PAD 8                /* 16-bit elements of padding per shared row: conflict-free */

STL_DYNAMIC_SMEM(ff_smem);

/* xe (r, Mt, Nt), wt (r, Nt, Pt), dec: D[j, l] = dec.base[j*s0 + l*s1], bias (P) or NULL,
 * y (M, P), z_out (r, Mt, Pt) or NULL. D::S is unsigned short (bf16/fp16 bits). */
template <typename D, int T>
__global__ void __launch_bounds__(FF_THREADS)
fused_forward_kernel(const unsigned short *__restrict__ xe, const unsigned short *__restrict__ wt,
                     const unsigned short *__restrict__ dec, int64_t dec_s0, int64_t dec_s1,
                     const unsigned short *__restrict__ bias, unsigned short *__restrict__ y,
                     unsigned short *__restrict__ z_out, int64_t M, int64_t Nt, int64_t Pt, int r, bool vec_y) {
  const int64_t Mt = (M + T - 1) / T, P = Pt * T;
  __shared__ __align__(16) unsigned short As[FF_BI][FF_KC + FF_PAD];  /* Xe_l[I0+i][k0+k] */
  __shared__ __align__(16) unsigned short Bs[FF_BJ][FF_KC + FF_PAD];  /* Wt_l[k0+k][J0+j], transposed */
  float *Ds = (float *)ff_smem;                                        /* Ds[l*t2 + j] = D[j, l] */

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, q = lane % 4;
  const int wi = warp / FF_WARPS_J, wj = warp % FF_WARPS_J;
  const int64_t I0 = (int64_t)blockIdx.y * FF_BI, J0 = (int64_t)blockIdx.x * FF_BJ;

  fused_stage_dec<D, T, FF_THREADS>(Ds, dec, dec_s0, dec_s1, r, tid);
  float yacc[4][T * T];
  fused_yacc_zero<T>(yacc);

  for (int l = 0; l < r; l++) {
    const unsigned short *xl = xe + (int64_t)l * Mt * Nt, *wl = wt + (int64_t)l * Nt * Pt;
    float c[4] = {0, 0, 0, 0};
    for (int64_t k0 = 0; k0 < Nt; k0 += FF_KC) {
      __syncthreads(); /* previous chunk's fragments are read (and Ds is staged, first time) */
      /* Xe_l chunk: 64 x 32, 8 consecutive K per thread */
      {
        const int i = tid / 4, k = (tid % 4) * 8;
        const int64_t I = I0 + i;
#pragma unroll
        for (int e = 0; e < 8; e++) {
          const int64_t K = k0 + k + e;
          As[i][k + e] = (I < Mt && K < Nt) ? __ldg(xl + I * Nt + K) : (unsigned short)0;
        }
      }
      /* Wt_l chunk: 32 x 16, stored transposed so a B fragment is one 32-bit load */
      for (int i = tid; i < FF_KC * FF_BJ; i += FF_THREADS) {
        const int k = i / FF_BJ, j = i - k * FF_BJ;
        const int64_t K = k0 + k, J = J0 + j;
        Bs[j][k] = (K < Nt && J < Pt) ? __ldg(wl + K * Pt + J) : (unsigned short)0;
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < FF_KC; ks += 16) {
        const int ar = wi * 16 + g, bc = wj * 8 + g, kc = ks + 2 * q;
        uint32_t a[4], b[2];
        a[0] = *(const uint32_t *)&As[ar][kc];
        a[1] = *(const uint32_t *)&As[ar + 8][kc];
        a[2] = *(const uint32_t *)&As[ar][kc + 8];
        a[3] = *(const uint32_t *)&As[ar + 8][kc + 8];
        b[0] = *(const uint32_t *)&Bs[bc][kc];
        b[1] = *(const uint32_t *)&Bs[bc][kc + 8];
        mma_16816<IsBF16<D>::value>(c, a, b);
      }
    }
    /* epilogue of product l: optionally store Z_l, then y += D[:, l] (x) Z_l */
    fused_take_product<D, T>(yacc, c, Ds, l, z_out, I0 + wi * 16, J0 + wj * 8, g, q, Mt, Pt);
  }
  /* the warp's Z tile starts at tile-row I0 + wi * 16, tile-column J0 + wj * 8 */
  fused_store_y<D, T>(yacc, bias, y, I0 + wi * 16, J0 + wj * 8, g, q, M, Mt, Pt, P, vec_y);
}

/* 1 if stl_cuda_fused_forward handles this configuration on the current device, else 0 (use the
 * unfused encode -> bmm -> decode path). */
extern "C" int stl_cuda_fused_forward_supported(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r) {
  if (dt != STL_BF16 && dt != STL_F16) return 0;
  if (t != 2 && t != 4) return 0;
  if (r < 1 || (size_t)r * t * t * sizeof(float) > 48 * 1024) return 0;
  if (M <= 0 || N <= 0 || P <= 0 || N % t || P % t) return 0;
  if ((M + t - 1) / t > (int64_t)FF_BI * 65535) return 0; /* grid.y */
  return stl_cuda_device_attr(cudaDevAttrComputeCapabilityMajor) >= 8;
}

/* y (M x P) = decode(xe @ wt, dec) + bias; z_out (r, Mt, Pt) receives Z when not NULL.
 * xe: (r, ceil(M/t), N/t) from encode_add; wt: (r, N/t, P/t); dec: D (t*t x r) as StlSmallMat. */
extern "C" void stl_cuda_fused_forward(StlDtype dt, const void *xe, const void *wt, StlSmallMat dec,
                                       const void *bias, void *y, void *z_out, int64_t M, int64_t N, int64_t P,
                                       int t, int r, void *stream) {
  StlDeviceGuard guard(NULL, y); /* errors go to the slot's host */
  if (!stl_cuda_fused_forward_supported(dt, M, N, P, t, r))
    stl_cuda_error("stl_torch CUDA fused forward: unsupported configuration (call stl_cuda_fused_forward_supported)");
  cudaStream_t st = (cudaStream_t)stream;
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, Pt = P / t;
  const dim3 grid((unsigned)((Pt + FF_BJ - 1) / FF_BJ), (unsigned)((Mt + FF_BI - 1) / FF_BI));
  const size_t smem = (size_t)r * t * t * sizeof(float);
  const bool vec = ((uintptr_t)y % (uintptr_t)(t * 2)) == 0 && ((uintptr_t)bias % (uintptr_t)(t * 2)) == 0;
  const unsigned short *x16 = (const unsigned short *)xe, *w16 = (const unsigned short *)wt,
                       *d16 = (const unsigned short *)dec.base, *b16 = (const unsigned short *)bias;
  unsigned short *y16 = (unsigned short *)y, *z16 = (unsigned short *)z_out;
#define FF_LAUNCH(DT, T)                                                                                    \
  LAUNCH(grid, FF_THREADS, smem, st, fused_forward_kernel<DT, T>)(x16, w16, d16, dec.s0, dec.s1, b16, y16, \
                                                                  z16, M, Nt, Pt, r, vec)
  STL_FUSED_DISPATCH(dt, t, FF_LAUNCH);
#undef FF_LAUNCH
  stl_cuda_check("fused forward");
}
