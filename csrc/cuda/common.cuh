/* Shared pieces of the CUDA kernels: storage-dtype traits, segment loads/stores, tensor-core
 * fragments, error checks, the device guard and launch sizing. CUDA C: templates only where a
 * kernel must be generic over the storage dtype; no ATen/c10, no torch headers. */
#ifndef STL_CUDA_COMMON_CUH
#define STL_CUDA_COMMON_CUH

#include <stdint.h>
#include <stdio.h>

#ifdef STL_CUDA_EMU
/* dev/cuda/emu: the same source compiled by a host C++ compiler, each CUDA thread a coroutine,
 * to check the kernels' index arithmetic on a machine without a GPU (not a build mode) */
#include "emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
/* kernel launch: LAUNCH(grid, block, smem, stream, kernel)(args...) */
#define LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
/* the dynamic shared memory of a kernel */
#define STL_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
/* butterfly exchange within a full warp */
#define SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#endif

extern "C" {
#include "../stl.h"
}

/* Raises msg through the host of the launch in flight on this thread (StlHost.error: ops.c frees
 * the op's tensors and throws a Python RuntimeError); with none (the emulator's direct calls) it
 * prints msg and aborts. runtime.cu. */
[[noreturn]] void stl_cuda_error(const char *msg);

/* ------------------------------------------------------------------------------------------ */
/* Storage dtype traits: S is what lives in memory, A is the compute (accumulation) type. */

struct DF32 {
  typedef float S;
  typedef float A;
  __device__ static __forceinline__ A load(S v) { return v; }
  __device__ static __forceinline__ S store(A a) { return a; }
};
struct DF64 {
  typedef double S;
  typedef double A;
  __device__ static __forceinline__ A load(S v) { return v; }
  __device__ static __forceinline__ S store(A a) { return a; }
};
/* 16-bit dtypes are stored as raw unsigned short (trivial type: unions and vector words stay
 * simple) and converted with round-to-nearest-even, like the CPU's stl_f32_to_bf16. */
struct DBF16 {
  typedef unsigned short S;
  typedef float A;
  __device__ static __forceinline__ A load(S v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
  __device__ static __forceinline__ S store(A a) { return __bfloat16_as_ushort(__float2bfloat16_rn(a)); }
};
struct DF16 {
  typedef unsigned short S;
  typedef float A;
  __device__ static __forceinline__ A load(S v) { return __half2float(__ushort_as_half(v)); }
  __device__ static __forceinline__ S store(A a) { return __half_as_ushort(__float2half_rn(a)); }
};

/* ------------------------------------------------------------------------------------------ */
/* Contiguous segments of L elements, moved in the widest aligned word that divides them
 * (16/8/4 bytes). `vec` says the caller checked the alignment of the base pointer; row
 * offsets are multiples of the segment size by construction (N % t == 0). */

template <int W> struct Word;
template <> struct Word<16> { typedef int4 T; };
template <> struct Word<8> { typedef uint2 T; };
template <> struct Word<4> { typedef unsigned int T; };
template <> struct Word<2> { typedef unsigned short T; };

template <typename S, int L> struct SegWord {
  static const int BYTES = L * (int)sizeof(S);
  static const int W = BYTES % 16 == 0 ? 16 : BYTES % 8 == 0 ? 8 : BYTES % 4 == 0 ? 4 : (int)sizeof(S);
  static const int PER = W / (int)sizeof(S); /* elements per word */
};

template <typename D, int L>
__device__ __forceinline__ void load_seg(const typename D::S *__restrict__ p, typename D::A *dst, bool vec) {
  typedef typename D::S S;
  typedef SegWord<S, L> SW;
  typedef typename Word<SW::W>::T WT;
  if (vec) {
#pragma unroll
    for (int i = 0; i < L / SW::PER; i++) {
      union {
        WT w;
        S e[SW::PER];
      } u;
      u.w = __ldg(reinterpret_cast<const WT *>(p) + i);
#pragma unroll
      for (int e = 0; e < SW::PER; e++) dst[i * SW::PER + e] = D::load(u.e[e]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < L; i++) dst[i] = D::load(__ldg(p + i));
  }
}

template <typename D, int L>
__device__ __forceinline__ void store_seg(typename D::S *__restrict__ p, const typename D::A *src, bool vec) {
  typedef typename D::S S;
  typedef SegWord<S, L> SW;
  typedef typename Word<SW::W>::T WT;
  if (vec) {
#pragma unroll
    for (int i = 0; i < L / SW::PER; i++) {
      union {
        WT w;
        S e[SW::PER];
      } u;
#pragma unroll
      for (int e = 0; e < SW::PER; e++) u.e[e] = D::store(src[i * SW::PER + e]);
      reinterpret_cast<WT *>(p)[i] = u.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < L; i++) p[i] = D::store(src[i]);
  }
}

/* four consecutive compute-type values from 16-byte-aligned shared memory */
__device__ __forceinline__ void lds4(const float *p, float v[4]) {
  const float4 q = *reinterpret_cast<const float4 *>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void lds4(const double *p, double v[4]) {
  const double2 a = reinterpret_cast<const double2 *>(p)[0], b = reinterpret_cast<const double2 *>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}

/* ------------------------------------------------------------------------------------------ */
/* Tensor cores: D = A(16x16, row) * B(16x8, col) + C, fp32 accumulation, 16-bit inputs given as
 * raw bits, two per 32-bit register (the lower-indexed element in the low half). Fragment layout
 * (PTX ISA, mma.m16n8k16), g = lane / 4, q = lane % 4:
 *   a[0] = A[g][2q..2q+1]   a[1] = A[g+8][2q..2q+1]   a[2] = A[g][2q+8..]   a[3] = A[g+8][2q+8..]
 *   b[0] = B[2q..2q+1][g]   b[1] = B[2q+8..2q+9][g]
 *   c[0..1] = C[g][2q..2q+1]   c[2..3] = C[g+8][2q..2q+1]
 * The emulator (emu.h) implements the same layout on the host. */
template <typename D> struct IsBF16 { /* which mma flavour a 16-bit storage dtype takes */
  static const bool value = false;
};
template <> struct IsBF16<DBF16> {
  static const bool value = true;
};

#ifndef STL_CUDA_EMU
template <bool BF16>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (BF16)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap(); /* tensor-core path needs sm_80+ (the launcher checks the device) */
#endif
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Host side: errors, device guard, sizing (scratch memory comes from the caller, see stl.h). */

/* Raise a launch/config error of `what` as a torch RuntimeError. Never returns. */
[[noreturn]] void stl_cuda_fail(const char *what, cudaError_t err);

/* After each launch: a bad configuration or a sticky error from earlier work surfaces here
 * (no synchronisation: asynchronous faults surface at torch's next synchronising call). */
static inline void stl_cuda_check(const char *what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) stl_cuda_fail(what, err);
}

/* Each extern "C" launcher's scope: errors go to `host` (see stl_cuda_error), and the device that
 * owns `ptr` is current (no-op on a one-GPU machine: the only cost there is a cached device count).
 * ops.c passes torch's stream of the tensor's device but sets no device guard itself; a kernel
 * launched on another device's stream would fail. */
struct StlDeviceGuard {
  int prev;
  const StlHost *prev_host;
  StlDeviceGuard(const StlHost *host, const void *ptr);
  ~StlDeviceGuard();
};

/* Multiprocessor count of the current device (cached per device). */
int stl_cuda_sm_count(void);

/* An attribute of the current device, 0 if it cannot be read (the caller then declines). */
int stl_cuda_device_attr(cudaDeviceAttr attr);

/* grid for a grid-stride loop over n items with `threads` per block: enough blocks to fill
 * the GPU `per_sm` times over, no more than the work needs */
static inline unsigned stl_grid(int64_t n, int threads, int per_sm) {
  int64_t want = (n + threads - 1) / threads;
  int64_t cap = (int64_t)stl_cuda_sm_count() * per_sm;
  if (want > cap) want = cap;
  return (unsigned)(want > 0 ? want : 1);
}

#endif
