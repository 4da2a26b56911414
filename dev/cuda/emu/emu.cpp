/* The emulator's scheduler and runtime stubs (see emu.h). */
#include "emu.h"

#include <stdio.h>

#include <vector>

namespace stl_emu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;
unsigned char *dyn_smem;

enum { RUNNABLE, WAITING, WAITING_WARP, DONE };
double warp_slot[1024];
uint32_t mma_a[1024][4], mma_b[1024][2];
float half_bits_to_float(uint32_t bits, bool bf16) {
  return bf16 ? __bfloat162float(__ushort_as_bfloat16((unsigned short)bits))
              : __half2float(__ushort_as_half((unsigned short)bits));
}
static ucontext_t sched_ctx;
static std::vector<ucontext_t> ctxs;
static std::vector<int> state;
static std::vector<char> stacks;
static int cur;
unsigned linear_tid() { return (unsigned)cur; }
static void (*cur_body)(void *);
static void *cur_arg;
static const size_t STACK = 64 * 1024;

static void entry() {
  cur_body(cur_arg);
  state[cur] = DONE;
  /* returning resumes uc_link = the scheduler */
}

void sync_warp() {
  state[cur] = WAITING_WARP;
  swapcontext(&ctxs[cur], &sched_ctx);
}

void sync_threads() {
  state[cur] = WAITING;
  swapcontext(&ctxs[cur], &sched_ctx);
}

void run(dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *arg) {
  const int n = (int)(block.x * block.y * block.z);
  grid_dim = grid;
  block_dim = block;
  std::vector<unsigned char> smem_buf(smem + 16);
  /* poison dynamic shared memory: a kernel must not read what it did not write */
  dyn_smem = smem_buf.data() + ((16 - ((uintptr_t)smem_buf.data() & 15)) & 15);
  ctxs.resize(n);
  state.resize(n);
  stacks.resize((size_t)n * STACK);
  cur_body = body;
  cur_arg = arg;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        block_idx = uint3{bx, by, bz};
        memset(dyn_smem, 0xff, smem); /* NaN pattern for floats and doubles */
        for (int i = 0; i < n; i++) {
          getcontext(&ctxs[i]);
          ctxs[i].uc_stack.ss_sp = stacks.data() + (size_t)i * STACK;
          ctxs[i].uc_stack.ss_size = STACK;
          ctxs[i].uc_link = &sched_ctx;
          makecontext(&ctxs[i], entry, 0);
          state[i] = RUNNABLE;
        }
        for (;;) {
          for (int i = 0; i < n; i++) {
            if (state[i] != RUNNABLE) continue;
            cur = i;
            thread_idx = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y),
                               (unsigned)(i / (block.x * block.y))};
            swapcontext(&sched_ctx, &ctxs[i]);
          }
          /* release every warp whose live lanes all wait at a warp-level exchange */
          bool released = false;
          for (int w = 0; w < n; w += 32) {
            int live = 0, at_warp = 0;
            for (int i = w; i < w + 32 && i < n; i++) live += state[i] != DONE, at_warp += state[i] == WAITING_WARP;
            if (at_warp && at_warp == live && live < (n - w < 32 ? n - w : 32)) {
              fprintf(stderr, "emu: full-warp exchange while %d lanes of warp %d have exited\n", 32 - live, w / 32);
              abort();
            }
            if (at_warp && at_warp == live) {
              for (int i = w; i < w + 32 && i < n; i++)
                if (state[i] == WAITING_WARP) state[i] = RUNNABLE;
              released = true;
            }
          }
          if (released) continue;
          int waiting = 0, done = 0, warp_waiting = 0;
          for (int i = 0; i < n; i++)
            waiting += state[i] == WAITING, done += state[i] == DONE, warp_waiting += state[i] == WAITING_WARP;
          if (warp_waiting) {
            fprintf(stderr, "emu: warp exchange deadlock (%d lanes wait, their warps are elsewhere)\n", warp_waiting);
            abort();
          }
          if (!waiting) break;
          if (done) {
            fprintf(stderr, "emu: __syncthreads() reached by %d threads while %d have exited\n", waiting, done);
            abort();
          }
          for (int i = 0; i < n; i++) state[i] = RUNNABLE;
        }
      }
}
}  // namespace stl_emu

cudaError_t cudaGetLastError() { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t) { return "emulated error"; }
const char *cudaGetErrorName(cudaError_t) { return "cudaErrorEmu"; }
cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *) {
  a->type = cudaMemoryTypeDevice;
  a->device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr attr, int) {
  /* "sm_80" (163 KB of opt-in shared memory per block) with 2 SMs: small grids, grid-stride loops run */
  *v = attr == cudaDevAttrComputeCapabilityMajor ? 8 : attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 163 * 1024 : 2;
  return cudaSuccess;
}
