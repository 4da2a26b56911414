/* A tiny CUDA emulator for checking csrc/cuda kernels on a machine without a GPU.
 *
 * The kernel source is compiled by g++ with -DSTL_CUDA_EMU; each CUDA thread of a block runs as
 * a ucontext coroutine on one OS thread, __syncthreads() switches to the next thread until all
 * have arrived, blocks run one after another. So index arithmetic, bounds, partial tiles,
 * barriers and the reductions' fixed order are exercised exactly as written; timing, memory
 * coalescing and real concurrency (races between blocks) are not. "Device memory" is host
 * memory. Only what csrc/cuda uses is provided. */
#ifndef STL_CUDA_EMU_H
#define STL_CUDA_EMU_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <tuple>

/* ---- qualifiers and builtin variables ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static /* blocks run one at a time: one static instance serves every block */
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};

namespace stl_emu {
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
extern unsigned char *dyn_smem;
void sync_threads();
void sync_warp();
extern double warp_slot[1024];
unsigned linear_tid();
template <typename T> T shfl_xor(T v, int m) {
  const unsigned me = linear_tid();
  warp_slot[me] = (double)v; /* float and double are exact in a double */
  sync_warp();
  const T r = (T)warp_slot[me ^ (unsigned)m];
  sync_warp();
  return r;
}
/* mma.m16n8k16 (see common.cuh for the fragment layout): a warp-collective exchange */
extern uint32_t mma_a[1024][4], mma_b[1024][2];
float half_bits_to_float(uint32_t bits16, bool bf16);
template <bool BF16> void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  const unsigned me = linear_tid(), lane = me % 32, base = me - lane;
  for (int i = 0; i < 4; i++) mma_a[me][i] = a[i];
  for (int i = 0; i < 2; i++) mma_b[me][i] = b[i];
  sync_warp();
  auto A = [&](int row, int k) {
    const unsigned src = base + (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8) + 2 * (k >= 8);
    return half_bits_to_float((mma_a[src][reg] >> (16 * (k % 2))) & 0xffffu, BF16);
  };
  auto B = [&](int k, int n) {
    const unsigned src = base + n * 4 + (k % 8) / 2, reg = (k >= 8);
    return half_bits_to_float((mma_b[src][reg] >> (16 * (k % 2))) & 0xffffu, BF16);
  };
  const int g = (int)lane / 4, q = (int)lane % 4;
  float d[4];
  for (int i = 0; i < 4; i++) {
    const int row = g + 8 * (i >= 2), col = 2 * q + (i & 1);
    float s = c[i];
    for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
    d[i] = s;
  }
  sync_warp(); /* everyone has read the fragments */
  for (int i = 0; i < 4; i++) c[i] = d[i];
}
void run(dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *ctx);
}  // namespace stl_emu

#define threadIdx (stl_emu::thread_idx)
#define blockIdx (stl_emu::block_idx)
#define blockDim (stl_emu::block_dim)
#define gridDim (stl_emu::grid_dim)
#define __syncthreads() stl_emu::sync_threads()
#define SHFL_XOR(v, m) stl_emu::shfl_xor((v), (m))
using stl_emu::mma_16816;
#define STL_DYNAMIC_SMEM(name) static unsigned char *const &name = stl_emu::dyn_smem

template <typename T> inline T __ldg(const T *p) { return *p; }

/* ---- 16-bit float conversions (round to nearest even, like the hardware's _rn) ---- */
struct emu_bf16 {
  unsigned short u;
};
struct emu_half {
  unsigned short u;
};
inline emu_bf16 __ushort_as_bfloat16(unsigned short u) { return emu_bf16{u}; }
inline unsigned short __bfloat16_as_ushort(emu_bf16 h) { return h.u; }
inline float __bfloat162float(emu_bf16 h) {
  uint32_t u = (uint32_t)h.u << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline emu_bf16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return emu_bf16{(unsigned short)((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return emu_bf16{(unsigned short)(u >> 16)};
}
inline emu_half __ushort_as_half(unsigned short u) { return emu_half{u}; }
inline unsigned short __half_as_ushort(emu_half h) { return h.u; }
inline float __half2float(emu_half h) {
  _Float16 v;
  memcpy(&v, &h.u, 2);
  return (float)v;
}
inline emu_half __float2half_rn(float f) {
  _Float16 v = (_Float16)f; /* GCC: IEEE round to nearest even */
  emu_half h;
  memcpy(&h.u, &v, 2);
  return h;
}

/* ---- runtime API subset ---- */
typedef void *cudaStream_t;
typedef enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 } cudaError_t;
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost, cudaMemoryTypeDevice, cudaMemoryTypeManaged };
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
cudaError_t cudaGetLastError();
const char *cudaGetErrorString(cudaError_t);
const char *cudaGetErrorName(cudaError_t);
cudaError_t cudaGetDeviceCount(int *);
cudaError_t cudaGetDevice(int *);
cudaError_t cudaSetDevice(int);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *, const void *);
cudaError_t cudaDeviceGetAttribute(int *, cudaDeviceAttr, int);
/* the emulator has no shared-memory limit: the launch allocates what it is asked for */
template <typename F> cudaError_t cudaFuncSetAttribute(F *, cudaFuncAttribute, int) { return cudaSuccess; }

/* ---- launches: LAUNCH(grid, block, smem, stream, kernel)(args...) ---- */
namespace stl_emu {
template <typename... P> struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A> void operator()(A... a) {
    struct Ctx {
      void (*k)(P...);
      std::tuple<P...> args;
    } ctx{kernel, std::tuple<P...>((P)a...)};
    run(grid, block, smem, [](void *c) { Ctx *x = (Ctx *)c; std::apply(x->k, x->args); }, &ctx);
  }
};
template <typename... P> Launch<P...> launch(dim3 g, dim3 b, size_t s, void (*k)(P...)) {
  return Launch<P...>{k, g, b, s};
}
}  // namespace stl_emu
#define LAUNCH(grid, block, smem, stream, ...) stl_emu::launch(dim3(grid), dim3(block), (size_t)(smem), &__VA_ARGS__)

#endif
