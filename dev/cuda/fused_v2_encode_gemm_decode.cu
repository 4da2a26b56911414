/* Fused forward candidate v2 (not yet run on a GPU): the whole STL forward in one kernel, encode in the GEMM's prologue and
 * decode in its epilogue, all on tensor cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate,
 * sm_80+):
 *
 *     y = decode(encode(x, E) @ Wt, D) + bias      (neither Xe nor Z goes through global memory)
 *
 * Checked only under the host emulator (dev/cuda/emu) against float64, and compiled for sm_80 /
 * sm_90a. A GPU check build puts it in the CUDA backend's forward slot (forward_slot.cu,
 * build_candidate.sh v2).
 *
 * The prologue encode is itself a small GEMM. For a staged chunk of x covering BI x KC tiles,
 *     Xe[l, n] = sum_j E[l, j] * X[j, n]     (n = tile of the chunk, j = a*t + c inside it)
 * is E (r x t^2) @ X (t^2 x BI*KC): at t=4 the inner dimension t^2 = 16 is exactly one k16 step
 * (t=2: 4, zero-padded to 16). fused_v1_gemm_decode.cu rejects prologue encoding because on CUDA cores
 * re-encoding each x chunk for every output-column block costs t^2/BJ of the GEMM's MACs at ~15x
 * the price per MAC; on tensor cores the same t^2/BJ costs the GEMM's own price: 1/4 extra
 * tensor-core work here (BJ = 64 tile-columns), 1/3 at r=24 (E's rows padded 24 -> 32).
 *
 * Loop order. Every output needs all r products of its tile, and the encode produces all l of a
 * chunk at once, so the K loop is outer and the products inner: each warp keeps the Z fragment
 * of every l of the current group in registers (16 products x 4 fp32), and after the group's K
 * loop decodes them into 4*t^2 fp32 y accumulators (D in shared memory, CUDA-core FMAs: t^2/Nt
 * of the GEMM's MACs). r > 16 runs in groups of 16, each re-staging and re-encoding x for its
 * rows of E (x is read ceil(r/16) times per block, from L2).
 *
 * Tiling (v1: simple and correct first): block = 8 warps; Z block tile = BI=16 tile-rows (one
 * m16 tile) x BJ=64 tile-columns (one n8 tile per warp) = 64 x 256 outputs at t=4. Per K chunk
 * (KC=16 tile-columns, one k16 step): stage x (t*BI x t*KC, 16-byte loads where aligned) and
 * the group's Wt chunks (16 x KC x BJ, transposed so a B fragment is one 32-bit load); sync;
 * each warp encodes 4 of the chunk's 32 groups of 8 tiles (E's A fragment lives in registers for
 * the group), rounds Xe to the storage dtype (as the unfused path does) into shared memory;
 * sync; each warp runs one mma per product. Shared memory: 72 KB + r*t^2*4 (opt-in above 48 KB).
 * Rows >= M, tile-columns >= N/t and >= P/t read as zero; y rows >= M are never written.
 *
 * What should bound it (expectations, nothing measured):
 *   1. Operand traffic from L2: each staged Wt element feeds only BI=16 MACs (an encoded x
 *      element BJ=64), and the y accumulators plus 16 live Z fragments (184 registers at t=4
 *      per ptxas, no spills) leave room for one 8-warp block per SM: little hides the loads.
 *   2. No pipelining: no cp.async double buffering, no ldmatrix, scalar scatter of Wt into its
 *      transposed layout (bank conflicts), two barriers per k16 step.
 *   3. The decode FMAs on CUDA cores (t^2/Nt of the GEMM's MACs, ~15x dearer each): noticeable at
 *      small N (ViT shapes), negligible at N >= 2048.
 * Next steps if it is worth it: two m16 tiles per warp with l-groups of 8, cp.async pipelining
 * of x/Wt, wgmma on sm_90a. */
#include "fused_common.cuh"

#define FE_WARPS 8
#define FE_THREADS (32 * FE_WARPS)
#define FE_BI 16                  /* tile-rows of Z per block: one m16 tile */
#define FE_BJ (8 * FE_WARPS)      /* tile-columns of Z per block: one n8 tile per warp */
#define FE_KC 16                  /* tile-columns of x per staged chunk: one k16 step */
#define FE_LG 16                  /* products per group: one m16 tile of E's rows */
#define FE_AS (FE_KC + 8)         /* padded row of an Xe_l chunk (16-bit elements) */
#define FE_AP (FE_BI * FE_AS + 8) /* padded plane of one product: the encode's stores spread over banks */
#define FE_BS (FE_KC + 8)         /* padded row of a transposed Wt_l chunk */

STL_DYNAMIC_SMEM(fe_smem);

/* Shared-memory layout for tile size T: x chunk, Xe chunks, Wt chunks, then D (fp32). Every
 * section starts 16-byte aligned. The x row is padded at t=4 so that a B fragment's four rows
 * (row stride = 16 banks) and eight tiles (2 banks each) hit 32 different banks. */
template <int T> struct FeShape {
  static const int XS = T * FE_KC + (T == 4 ? 32 : 0);
  static const int XROWS = T * FE_BI;
  static const int X_BYTES = XROWS * XS * 2;
  static const int A_BYTES = FE_LG * FE_AP * 2;
  static const int B_BYTES = FE_LG * FE_BJ * FE_BS * 2;
  static const int FIXED = X_BYTES + A_BYTES + B_BYTES;
};

__device__ __forceinline__ uint32_t pack2(unsigned short lo, unsigned short hi) {
  return (uint32_t)lo | ((uint32_t)hi << 16);
}

/* x (M, N), E[l, j] = enc[l*enc_s0 + j*enc_s1], wt (r, N/T, Pt), D[j, l] = dec[j*dec_s0 + l*dec_s1],
 * bias (Pt*T) or NULL, y (M, Pt*T), z_out (r, ceil(M/T), Pt) or NULL; 16-bit storage (D::S). */
template <typename D, int T>
__global__ void __launch_bounds__(FE_THREADS)
fused_encode_kernel(const unsigned short *__restrict__ x, int64_t M, int64_t N, const unsigned short *__restrict__ enc,
                    int64_t enc_s0, int64_t enc_s1, const unsigned short *__restrict__ wt,
                    const unsigned short *__restrict__ dec, int64_t dec_s0, int64_t dec_s1,
                    const unsigned short *__restrict__ bias, unsigned short *__restrict__ y,
                    unsigned short *__restrict__ z_out, int64_t Pt, int r, bool vec_x, bool vec_w, bool vec_y) {
  typedef FeShape<T> SH;
  const int t2 = T * T;
  const int64_t Nt = N / T, Mt = (M + T - 1) / T, P = Pt * T;
  unsigned short *Xs = (unsigned short *)fe_smem;                          /* Xs[rr*XS + cc] = x[T*I0 + rr, T*k0 + cc] */
  unsigned short *As = (unsigned short *)(fe_smem + SH::X_BYTES);          /* As[l*AP + i*AS + k] = Xe_l[I0+i, k0+k] */
  unsigned short *Bs = (unsigned short *)(fe_smem + SH::X_BYTES + SH::A_BYTES); /* Bs[(l*BJ + j)*BS + k] = Wt_l[k0+k, J0+j] */
  float *Ds = (float *)(fe_smem + SH::FIXED);                              /* Ds[l*t2 + j] = D[j, l] */

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, q = lane % 4;
  const int64_t I0 = (int64_t)blockIdx.y * FE_BI, J0 = (int64_t)blockIdx.x * FE_BJ;

  fused_stage_dec<D, T, FE_THREADS>(Ds, dec, dec_s0, dec_s1, r, tid);
  float yacc[4][T * T];
  fused_yacc_zero<T>(yacc);

  for (int lg0 = 0; lg0 < r; lg0 += FE_LG) {
    const int ng = r - lg0 < FE_LG ? r - lg0 : FE_LG;
    /* E's rows lg0.. as the encode's A fragment (rows >= r and columns >= t^2 are zero padding) */
    uint32_t ea[4];
#pragma unroll
    for (int h = 0; h < 4; h++) {
      const int row = g + 8 * (h & 1), k = 2 * q + 8 * (h >> 1);
      unsigned short v[2];
#pragma unroll
      for (int e = 0; e < 2; e++)
        v[e] = (lg0 + row < r && k + e < t2) ? enc[(int64_t)(lg0 + row) * enc_s0 + (int64_t)(k + e) * enc_s1]
                                             : (unsigned short)0;
      ea[h] = pack2(v[0], v[1]);
    }
    float zc[FE_LG][4];
#pragma unroll
    for (int l = 0; l < FE_LG; l++) zc[l][0] = zc[l][1] = zc[l][2] = zc[l][3] = 0;

    for (int64_t k0 = 0; k0 < Nt; k0 += FE_KC) {
      __syncthreads(); /* the previous chunk's fragments are read (and Ds is staged, the first time) */
      /* x chunk: T*BI rows of T*KC elements, 8 per step (N % 8 == 0 with vec_x: all 8 in range or none) */
      for (int i = tid; i < SH::XROWS * (T * FE_KC / 8); i += FE_THREADS) {
        const int rr = i / (T * FE_KC / 8), cc = (i - rr * (T * FE_KC / 8)) * 8;
        const int64_t row = (int64_t)T * I0 + rr, col = (int64_t)T * k0 + cc;
        unsigned short *dst = Xs + rr * SH::XS + cc;
        if (vec_x && row < M && col < N) {
          *(int4 *)dst = __ldg((const int4 *)(x + row * N + col));
        } else {
#pragma unroll
          for (int e = 0; e < 8; e++) dst[e] = (row < M && col + e < N) ? __ldg(x + row * N + col + e) : (unsigned short)0;
        }
      }
      /* the group's Wt chunks, 8 consecutive J per step (coalesced), scattered transposed */
      for (int i = tid; i < FE_LG * FE_KC * (FE_BJ / 8); i += FE_THREADS) {
        const int l = i / (FE_KC * (FE_BJ / 8)), rem = i - l * (FE_KC * (FE_BJ / 8)), k = rem / (FE_BJ / 8),
                  j = (rem - k * (FE_BJ / 8)) * 8;
        const int64_t K = k0 + k, J = J0 + j;
        const bool in = l < ng && K < Nt;
        const unsigned short *src = wt + ((int64_t)(lg0 + l) * Nt + K) * Pt + J;
        unsigned short *dst = Bs + (l * FE_BJ + j) * FE_BS + k;
        if (vec_w && in && J < Pt) { /* Pt % 8 == 0: all 8 in range */
          union {
            int4 w;
            unsigned short e[8];
          } u;
          u.w = __ldg((const int4 *)src);
#pragma unroll
          for (int e = 0; e < 8; e++) dst[e * FE_BS] = u.e[e];
        } else {
#pragma unroll
          for (int e = 0; e < 8; e++) dst[e * FE_BS] = (in && J + e < Pt) ? __ldg(src + e) : (unsigned short)0;
        }
      }
      __syncthreads();
      /* encode on tensor cores: Xe[l, n] = sum_j E[lg0+l, j] X[j, n] for the chunk's tiles n = i*KC + kk */
      for (int nt = warp; nt < FE_BI * FE_KC / 8; nt += FE_WARPS) {
        const int n = nt * 8 + g, i = n / FE_KC, kk = n - i * FE_KC;
        uint32_t b[2];
        if (T == 4) { /* rows k = j = 2q, 2q+1 -> (a, c) = (q/2, 2(q%2) + 0..1); k + 8 -> a + 2 */
          const unsigned short *p = Xs + (T * i + q / 2) * SH::XS + T * kk + 2 * (q % 2);
          b[0] = *(const uint32_t *)p;
          b[1] = *(const uint32_t *)(p + 2 * SH::XS);
        } else { /* T == 2: j = 2q, 2q+1 -> (a, c) = (q, 0..1) for q < 2; j >= 4 is padding */
          b[0] = q < 2 ? *(const uint32_t *)(Xs + (T * i + q) * SH::XS + T * kk) : 0u;
          b[1] = 0u;
        }
        float c[4] = {0, 0, 0, 0};
        mma_16816<IsBF16<D>::value>(c, ea, b);
        /* c[0..1] = Xe[l=g][tiles nt*8 + 2q, +1] (one row i of the chunk), c[2..3] = the same for l=g+8 */
        const int n2 = nt * 8 + 2 * q, i2 = n2 / FE_KC, k2 = n2 - i2 * FE_KC;
        *(uint32_t *)(As + g * FE_AP + i2 * FE_AS + k2) = pack2(D::store(c[0]), D::store(c[1]));
        *(uint32_t *)(As + (g + 8) * FE_AP + i2 * FE_AS + k2) = pack2(D::store(c[2]), D::store(c[3]));
      }
      __syncthreads();
      /* the group's products: Z_l (16 x 8 per warp) += Xe_l (16 x KC) @ Wt_l (KC x this warp's 8) */
#pragma unroll
      for (int l = 0; l < FE_LG; l++) {
        if (l < ng) {
          const unsigned short *al = As + l * FE_AP, *bl = Bs + (l * FE_BJ + warp * 8 + g) * FE_BS;
          uint32_t a[4], b[2];
          a[0] = *(const uint32_t *)(al + g * FE_AS + 2 * q);
          a[1] = *(const uint32_t *)(al + (g + 8) * FE_AS + 2 * q);
          a[2] = *(const uint32_t *)(al + g * FE_AS + 2 * q + 8);
          a[3] = *(const uint32_t *)(al + (g + 8) * FE_AS + 2 * q + 8);
          b[0] = *(const uint32_t *)(bl + 2 * q);
          b[1] = *(const uint32_t *)(bl + 2 * q + 8);
          mma_16816<IsBF16<D>::value>(zc[l], a, b);
        }
      }
    }

    /* the group's epilogue: optionally store Z, then y += D[:, l] (x) Z_l */
#pragma unroll
    for (int l = 0; l < FE_LG; l++) {
      if (l < ng) fused_take_product<D, T>(yacc, zc[l], Ds, lg0 + l, z_out, I0, J0 + warp * 8, g, q, Mt, Pt);
    }
  }
  /* the warp's Z tile (its n8 tile of the block's m16 tile) starts at tile-row I0, tile-column
   * J0 + warp * 8 */
  fused_store_y<D, T>(yacc, bias, y, I0, J0 + warp * 8, g, q, M, Mt, Pt, P, vec_y);
}

static size_t fe_smem_bytes(int t, int r) {
  const size_t fixed = t == 4 ? FeShape<4>::FIXED : FeShape<2>::FIXED;
  return fixed + (size_t)r * t * t * sizeof(float);
}

/* 1 if stl_cuda_fused_encode_forward handles this configuration on the current device, else 0. */
extern "C" int stl_cuda_fused_encode_forward_supported(StlDtype dt, int64_t M, int64_t N, int64_t P, int t, int r) {
  if (dt != STL_BF16 && dt != STL_F16) return 0;
  if (t != 2 && t != 4) return 0;
  if (r < 1 || r > (1 << 16)) return 0;
  if (M <= 0 || N <= 0 || P <= 0 || N % t || P % t) return 0;
  if ((M + t - 1) / t > (int64_t)FE_BI * 65535) return 0; /* grid.y */
  if (stl_cuda_device_attr(cudaDevAttrComputeCapabilityMajor) < 8) return 0;
  return fe_smem_bytes(t, r) <= (size_t)stl_cuda_device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

/* y (M x P) = decode(encode(x, enc) @ wt, dec) + bias; z_out (r, ceil(M/t), P/t) receives Z when
 * not NULL. x: (M, N); enc: E (r x t*t) and dec: D (t*t x r) as StlSmallMat; wt: (r, N/t, P/t). */
extern "C" void stl_cuda_fused_encode_forward(StlDtype dt, const void *x, StlSmallMat enc, const void *wt,
                                              StlSmallMat dec, const void *bias, void *y, void *z_out, int64_t M,
                                              int64_t N, int64_t P, int t, int r, void *stream) {
  StlDeviceGuard guard(NULL, y); /* errors go to the slot's host */
  if (!stl_cuda_fused_encode_forward_supported(dt, M, N, P, t, r))
    stl_cuda_error("stl_torch CUDA fused encode forward: unsupported configuration "
                     "(call stl_cuda_fused_encode_forward_supported)");
  cudaStream_t st = (cudaStream_t)stream;
  const int64_t Mt = (M + t - 1) / t, Pt = P / t;
  const dim3 grid((unsigned)((Pt + FE_BJ - 1) / FE_BJ), (unsigned)((Mt + FE_BI - 1) / FE_BI));
  const size_t smem = fe_smem_bytes(t, r);
  const bool vec_x = (uintptr_t)x % 16 == 0 && N % 8 == 0;
  const bool vec_w = (uintptr_t)wt % 16 == 0 && Pt % 8 == 0;
  const bool vec_y = ((uintptr_t)y % (uintptr_t)(t * 2)) == 0 && ((uintptr_t)bias % (uintptr_t)(t * 2)) == 0;
  const unsigned short *x16 = (const unsigned short *)x, *e16 = (const unsigned short *)enc.base,
                       *w16 = (const unsigned short *)wt, *d16 = (const unsigned short *)dec.base,
                       *b16 = (const unsigned short *)bias;
  unsigned short *y16 = (unsigned short *)y, *z16 = (unsigned short *)z_out;
#define FE_LAUNCH(DT, T)                                                                                         \
  do {                                                                                                           \
    cudaError_t err = cudaFuncSetAttribute(fused_encode_kernel<DT, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                           (int)smem);                                                           \
    if (err != cudaSuccess) stl_cuda_fail("fused encode forward (shared memory opt-in)", err);                  \
    LAUNCH(grid, FE_THREADS, smem, st, fused_encode_kernel<DT, T>)(x16, M, N, e16, enc.s0, enc.s1, w16, d16,      \
                                                                   dec.s0, dec.s1, b16, y16, z16, Pt, r, vec_x,  \
                                                                   vec_w, vec_y);                                \
  } while (0)
  STL_FUSED_DISPATCH(dt, t, FE_LAUNCH);
#undef FE_LAUNCH
  stl_cuda_check("fused encode forward");
}
